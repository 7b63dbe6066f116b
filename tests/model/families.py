"""Tiny random-init checkpoints of real Hugging Face decoder families, laid out as a downloaded model is.

Each family is built from its OWN transformers config class (Llama 2/3, Mistral, Qwen2, Qwen3, Phi-3,
phi-2, Gemma 2, Gemma 3 text, GPT-2) and saved with config.json, generation_config.json, sharded
safetensors (model-0000x-of-0000y.safetensors + model.safetensors.index.json) and a fast tokenizer that
carries the family's special tokens and its real chat template. Nothing is downloaded: the tokenizer is a
small byte-level BPE trained here on a fixed slice of the running Python's standard library.

Chat templates (tests/model/chat_templates/<family>.jinja) are the Jinja texts the families ship on the
Hub (tokenizer_config.json "chat_template"), taken from public repositories that keep verbatim copies:
  llama2   meta-llama/Llama-2-7b-chat-hf       the Hub's single line as quoted in a public Python script; read
                                               side by side with chujiezheng/chat_templates
                                               chat_templates/llama-2-chat.jinja (which re-indents it)
  llama3   meta-llama/Llama-3.1-8B-Instruct    ye-NX/llama.cpp (fork) models/templates/
                                               meta-llama-Llama-3.3-70B-Instruct.jinja; read side by side with the
                                               "llama3_1" fixture of a Swift Jinja port's ChatTemplates.swift
  mistral  mistralai/Mistral-7B-Instruct-v0.3  release-day template, from that ChatTemplates.swift's "mistral7b"
  qwen2    Qwen/Qwen2.5-7B-Instruct            a verbatim tokenizer_config.json "chat_template" line quoted in a
                                               public script; read side by side with that file's "qwen2_5"
  qwen3    Qwen/Qwen3-0.6B                     ye-NX/llama.cpp models/templates/Qwen-Qwen3-0.6B.jinja
  phi3     microsoft/Phi-3.5-mini-instruct     ye-NX/llama.cpp models/templates/microsoft-Phi-3.5-mini-instruct.jinja
  gemma2   google/gemma-2-2b-it                ye-NX/llama.cpp models/templates/google-gemma-2-2b-it.jinja
  gemma3   google/gemma-3-1b-it                huggingface/transformers src/transformers/models/gemma3/
                                               convert_gemma3_weights.py _CHAT_TEMPLATE (the official
                                               conversion script's template)
phi-2 and GPT-2 ship no chat template.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GenerationConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PhiConfig,
    PreTrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN_PRETOKENIZE_REGEX

from frontier.errors import ConfigError

TEMPLATE_DIR = Path(__file__).parent / "chat_templates"

# Generic size keys -> the names most config classes use. A family overrides the names it spells
# differently (GPT-2) and maps a key to None where its config class has no such field.
GENERIC_KEYS: dict[str, str | None] = {
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
}
NO_HEAD_DIM = {**GENERIC_KEYS, "head_dim": None}  # head_dim is hidden_size // num_heads, not a config field
GPT2_KEYS: dict[str, str | None] = {
    "hidden_size": "n_embd",
    "num_layers": "n_layer",
    "num_heads": "n_head",
    "num_kv_heads": None,
    "head_dim": None,
    "intermediate_size": "n_inner",
    "max_position_embeddings": "n_positions",
}
TINY: dict[str, int] = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
}
SMALL_WINDOW = 16  # so a 32-token test sequence crosses the sliding-window boundary

# Learned BPE tokens on top of the 256 byte alphabet and the family's leading special tokens.
LEARNED_TOKENS = 400
# Fixed training text: real code and prose that every machine has, read in this order.
CORPUS_MODULES = ("textwrap", "string", "json/__init__", "json/encoder", "csv", "shlex")

Derive = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Family:
    """One table row: how to build a tiny model and tokenizer that look like the real family.

    Tokens in `first_tokens` get the lowest ids (Llama 2 <unk>=0 <s>=1 </s>=2, Gemma <pad>=0 ...);
    `last_tokens` are added after the learned vocabulary as special tokens (Llama 3, Qwen, GPT-2 put
    theirs at the end); `plain_tokens` are added as non-special tokens (Qwen3's <think>). The config
    and generation_config ids are given as token strings and resolved against the built tokenizer.
    """

    config_cls: type[PreTrainedConfig]
    causal_lm: str
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None
    add_bos: bool
    chat_template: str | None
    first_tokens: tuple[str, ...] = ()
    last_tokens: tuple[str, ...] = ()
    plain_tokens: tuple[str, ...] = ()
    # Qwen's tokenizer.json splits with its own regex after NFC; AutoTokenizer rebuilds Qwen tokenizers
    # that way whatever tokenizer.json says, so the trained one must match or ids change on reload.
    qwen_pretokenizer: bool = False
    config_bos: str | None = None  # config.json bos_token_id where it differs from the tokenizer's (Qwen)
    config_eos: tuple[str, ...] = ()  # config.json eos_token_id (one id, or a list as the family ships)
    config_pad: str | None = None  # config.json pad_token_id; None where the family's config has none
    gen_eos: tuple[str, ...] = ()  # generation_config.json eos_token_id
    gen_pad: str | None = None
    size_keys: Mapping[str, str | None] = field(default_factory=lambda: GENERIC_KEYS)
    tiny: Mapping[str, int] = field(default_factory=dict)  # overrides of TINY for this family
    config_kwargs: Mapping[str, Any] = field(default_factory=dict)  # fixed family specifics
    derive: Derive | None = None  # family specifics that depend on the size (rope, window pattern)

    @property
    def chat_tokens(self) -> tuple[str, ...]:
        """Every special token beyond bos/eos/pad/unk (role markers, turn ends)."""
        core = {self.bos, self.eos, self.pad, self.unk}
        return tuple(t for t in (*self.first_tokens, *self.last_tokens) if t not in core)


def _llama3_rope(kw: dict[str, Any]) -> dict[str, Any]:
    # Llama 3.1's rope scaling; the original context is a quarter of the tiny one so that the
    # low-frequency, high-frequency and smoothed bands all occur at head_dim 16.
    original = max(16, kw["max_position_embeddings"] // 4)
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": original}  # fmt: skip
    return {"rope_parameters": rope}


def _phi3_extras(kw: dict[str, Any]) -> dict[str, Any]:
    return {"original_max_position_embeddings": kw["max_position_embeddings"]}


def _gemma2_extras(kw: dict[str, Any]) -> dict[str, Any]:
    # Gemma 2 2B/9B scale queries by head_dim (query_pre_attn_scalar = head_dim = 256 there).
    return {"query_pre_attn_scalar": kw["head_dim"]}


def _gemma3_extras(kw: dict[str, Any]) -> dict[str, Any]:
    # Alternate sliding/full layers (real Gemma 3 uses 5:1; alternation exercises both with 4 layers),
    # and give local layers their own rope base as Gemma 3 does (10k local, 1M global).
    layers = kw["num_hidden_layers"]
    return {
        "query_pre_attn_scalar": kw["head_dim"],
        "layer_types": ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
        },
    }


LLAMA2_SPECIALS = ("<unk>", "<s>", "</s>")
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")

FAMILIES: dict[str, Family] = {
    "llama2": Family(
        LlamaConfig, "LlamaForCausalLM", bos="<s>", eos="</s>", pad=None, unk="<unk>", add_bos=True,
        chat_template="llama2.jinja", first_tokens=LLAMA2_SPECIALS, config_eos=("</s>",), gen_eos=("</s>",),
        tiny={"num_kv_heads": 4}, config_kwargs={"rms_norm_eps": 1e-5},  # Llama 2 7B/13B: plain multi-head
    ),
    "llama3": Family(
        LlamaConfig, "LlamaForCausalLM", bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, unk=None,
        add_bos=True, chat_template="llama3.jinja",
        last_tokens=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                     "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"),
        config_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        gen_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        config_kwargs={"rms_norm_eps": 1e-5}, derive=_llama3_rope,
    ),
    "mistral": Family(
        MistralConfig, "MistralForCausalLM", bos="<s>", eos="</s>", pad=None, unk="<unk>", add_bos=True,
        chat_template="mistral.jinja",
        # v0.3: [INST] and the tool markers are control tokens with ids 3.. (plain text in Llama 2)
        first_tokens=(*LLAMA2_SPECIALS, "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                      "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"),
        config_eos=("</s>",), gen_eos=("</s>",),
        config_kwargs={"sliding_window": SMALL_WINDOW, "rope_theta": 1e6, "rms_norm_eps": 1e-5},
    ),
    "qwen2": Family(
        Qwen2Config, "Qwen2ForCausalLM", bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None, add_bos=False,
        chat_template="qwen2.jinja", last_tokens=QWEN_SPECIALS, size_keys=NO_HEAD_DIM, qwen_pretokenizer=True,
        config_bos="<|endoftext|>", config_eos=("<|im_end|>",), gen_eos=("<|im_end|>", "<|endoftext|>"),
        gen_pad="<|endoftext|>",
        config_kwargs={"tie_word_embeddings": True, "rope_theta": 1e6},  # as Qwen2.5-0.5B..3B
    ),
    "qwen3": Family(
        Qwen3Config, "Qwen3ForCausalLM", bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None, add_bos=False,
        chat_template="qwen3.jinja", last_tokens=QWEN_SPECIALS, plain_tokens=("<think>", "</think>"),
        qwen_pretokenizer=True, config_bos="<|endoftext|>", config_eos=("<|im_end|>",),
        gen_eos=("<|im_end|>", "<|endoftext|>"), gen_pad="<|endoftext|>",
        config_kwargs={"tie_word_embeddings": True, "rope_theta": 1e6},  # as Qwen3-0.6B
    ),
    "phi3": Family(
        Phi3Config, "Phi3ForCausalLM", bos="<s>", eos="<|endoftext|>", pad="<|endoftext|>", unk="<unk>",
        add_bos=True, chat_template="phi3.jinja", first_tokens=LLAMA2_SPECIALS,
        last_tokens=("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"),
        size_keys=NO_HEAD_DIM, config_eos=("<|endoftext|>",), config_pad="<|endoftext|>",
        gen_eos=("<|endoftext|>", "<|assistant|>", "<|end|>"), gen_pad="<|endoftext|>",
        config_kwargs={"sliding_window": SMALL_WINDOW}, derive=_phi3_extras,
    ),
    "phi2": Family(
        PhiConfig, "PhiForCausalLM", bos="<|endoftext|>", eos="<|endoftext|>", pad=None, unk="<|endoftext|>",
        add_bos=False, chat_template=None, last_tokens=("<|endoftext|>",), size_keys=NO_HEAD_DIM,
        config_eos=("<|endoftext|>",), gen_eos=("<|endoftext|>",), tiny={"num_kv_heads": 4},
        config_kwargs={"partial_rotary_factor": 0.5, "hidden_act": "gelu_new"},
    ),
    "gemma2": Family(
        Gemma2Config, "Gemma2ForCausalLM", bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", add_bos=True,
        chat_template="gemma2.jinja", first_tokens=GEMMA_SPECIALS, config_eos=("<eos>", "<end_of_turn>"),
        config_pad="<pad>", gen_eos=("<eos>", "<end_of_turn>"), gen_pad="<pad>", tiny={"num_layers": 4},
        config_kwargs={"sliding_window": SMALL_WINDOW, "attn_logit_softcapping": 50.0,
                       "final_logit_softcapping": 30.0, "hidden_activation": "gelu_pytorch_tanh"},
        derive=_gemma2_extras,
    ),
    "gemma3": Family(
        Gemma3TextConfig, "Gemma3ForCausalLM", bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", add_bos=True,
        chat_template="gemma3.jinja", first_tokens=GEMMA_SPECIALS, config_eos=("<eos>", "<end_of_turn>"),
        config_pad="<pad>", gen_eos=("<eos>", "<end_of_turn>"), gen_pad="<pad>", tiny={"num_layers": 4},
        config_kwargs={"sliding_window": SMALL_WINDOW, "hidden_activation": "gelu_pytorch_tanh"},
        derive=_gemma3_extras,
    ),
    "gpt2": Family(
        GPT2Config, "GPT2LMHeadModel", bos="<|endoftext|>", eos="<|endoftext|>", pad=None, unk="<|endoftext|>",
        add_bos=False, chat_template=None, last_tokens=("<|endoftext|>",), size_keys=GPT2_KEYS,
        config_eos=("<|endoftext|>",), gen_eos=("<|endoftext|>",), tiny={"num_kv_heads": 4},
    ),
}  # fmt: skip


def _family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"family {name!r}: expected one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


@functools.cache
def _corpus() -> tuple[str, ...]:
    """The fixed training text: a few standard-library modules, always in the same order."""
    root = Path(sys.modules["os"].__file__).parent
    return tuple((root / f"{m}.py").read_text(encoding="utf-8") for m in CORPUS_MODULES)


@functools.cache
def _trained(name: str) -> str:
    """The family's byte-level BPE as tokenizer.json text (cached: training takes ~0.1 s)."""
    fam = _family(name)
    tok = Tokenizer(models.BPE())
    if fam.qwen_pretokenizer:
        tok.normalizer = normalizers.NFC()
        split = pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False)
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + len(fam.first_tokens) + LEARNED_TOKENS,
        special_tokens=list(fam.first_tokens),  # trainer gives these ids 0..n-1
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    tok.add_special_tokens([t for t in fam.last_tokens if t not in fam.first_tokens])
    tok.add_tokens(list(fam.plain_tokens))
    byte_level = processors.ByteLevel(trim_offsets=False)
    if fam.add_bos:
        assert fam.bos is not None
        bos = (fam.bos, tok.token_to_id(fam.bos))
        template = processors.TemplateProcessing(
            single=f"{fam.bos}:0 $A:0", pair=f"{fam.bos}:0 $A:0 {fam.bos}:1 $B:1", special_tokens=[bos]
        )
        tok.post_processor = processors.Sequence([byte_level, template])
    else:
        tok.post_processor = byte_level
    return tok.to_str()


def build_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A fast tokenizer with the family's special tokens, BOS behaviour and real chat template."""
    fam = _family(family)
    template = (TEMPLATE_DIR / fam.chat_template).read_text(encoding="utf-8") if fam.chat_template else None
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained(family)),
        bos_token=fam.bos,
        eos_token=fam.eos,
        pad_token=fam.pad,
        unk_token=fam.unk,
        chat_template=template,
        clean_up_tokenization_spaces=False,
    )


def _config_kwargs(fam: Family, name: str, size: Mapping[str, int] | None) -> dict[str, Any]:
    """The family's config kwargs for the requested generic size."""
    generic = {**TINY, **fam.tiny, **(size or {})}
    unknown = sorted(set(generic) - set(GENERIC_KEYS))
    if unknown:
        raise ConfigError(f"size for {name!r}: unknown key(s) {unknown}; expected some of {sorted(GENERIC_KEYS)}")
    if generic["num_heads"] * generic["head_dim"] != generic["hidden_size"] and fam.size_keys["head_dim"] is None:
        if size and "head_dim" in size:
            raise ConfigError(
                f"size for {name!r}: head_dim={size['head_dim']} but this family fixes head_dim to "
                f"hidden_size // num_heads = {generic['hidden_size'] // generic['num_heads']}"
            )
    if (
        fam.size_keys["num_kv_heads"] is None
        and size
        and size.get("num_kv_heads", generic["num_heads"]) != (generic["num_heads"])
    ):
        raise ConfigError(f"size for {name!r}: num_kv_heads={size['num_kv_heads']}, but this family has no GQA")
    if generic["hidden_size"] % generic["num_heads"]:
        raise ConfigError(f"size for {name!r}: hidden_size={generic['hidden_size']} is not a multiple of num_heads")
    kw = {fam.size_keys[k]: v for k, v in generic.items() if fam.size_keys[k] is not None}
    kw.update(fam.config_kwargs)
    # derive() reads the generic names (head_dim exists even where the config has no such field).
    kw.update(fam.derive({**kw, "head_dim": generic["head_dim"]}) if fam.derive else {})
    return kw


def _ids(tokenizer: PreTrainedTokenizerFast, tokens: tuple[str, ...]) -> int | list[int] | None:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    return None if not ids else ids[0] if len(ids) == 1 else ids


def _id(tokenizer: PreTrainedTokenizerFast, token: str | None) -> int | None:
    return None if token is None else tokenizer.convert_tokens_to_ids(token)


def _param_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights as saved: tied tensors count once."""
    seen = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    return sum(seen.values())


def build_checkpoint(
    family: str,
    out_dir: Path,
    *,
    seed: int = 0,
    extra_rows: int = 0,
    size: dict[str, int] | None = None,
    max_shard_size: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Save a random-init `family` model + tokenizer into `out_dir`, laid out as a Hub download.

    Embedding rows are len(tokenizer) + extra_rows (real Qwen checkpoints have padded rows). Unless
    `max_shard_size` is given, shards are a third of the weights' bytes, so every model has >= 2 shards.
    """
    fam = _family(family)
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(family)
    kw = _config_kwargs(fam, family, size)
    config = fam.config_cls(
        vocab_size=len(tokenizer) + extra_rows,
        bos_token_id=_id(tokenizer, fam.config_bos or fam.bos),
        eos_token_id=_ids(tokenizer, fam.config_eos),
        pad_token_id=_id(tokenizer, fam.config_pad),
        **kw,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if type(model).__name__ != fam.causal_lm:
        raise ConfigError(f"family {family!r}: built {type(model).__name__}, expected {fam.causal_lm}")
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=_ids(tokenizer, fam.gen_eos),
        pad_token_id=_id(tokenizer, fam.gen_pad),
    )
    shard = max_shard_size if max_shard_size is not None else max(1, _param_bytes(model) // 3)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, max_shard_size=shard)
    tokenizer.model_max_length = kw[fam.size_keys["max_position_embeddings"]]
    tokenizer.save_pretrained(out_dir)
    return out_dir
