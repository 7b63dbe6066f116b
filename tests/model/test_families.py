"""The tiny family checkpoints reload with stock transformers exactly as a downloaded model does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from frontier.errors import ConfigError
from tests.model.families import FAMILIES, TEMPLATE_DIR, build_checkpoint, build_tokenizer

EXTRA_ROWS = 3
TEXT = "def add(a, b):\n    return a + b  # 12345 héllo, world!\n" * 3
CHAT = [
    {"role": "user", "content": "What does add do?"},
    {"role": "assistant", "content": "It returns the sum."},
    {"role": "user", "content": "And for strings?"},
]
_BUILT: dict[str, Path] = {}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """One saved checkpoint per family for the whole module (building is cheap, reloading is not free)."""

    def get(family: str) -> Path:
        if family not in _BUILT:
            _BUILT[family] = build_checkpoint(family, tmp_path_factory.mktemp(family), extra_rows=EXTRA_ROWS)
        return _BUILT[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_is_sharded_and_reloads(family: str, checkpoint) -> None:
    fam, path = FAMILIES[family], checkpoint(family)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(path.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (path / name).is_file(), name

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    assert type(config) is fam.config_cls
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    assert type(model).__name__ == fam.causal_lm
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert model.get_input_embeddings().weight.shape[0] == len(tok) + EXTRA_ROWS

    ids = tok(TEXT, return_tensors="pt").input_ids[:, :40]  # past the 16-token sliding windows
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok) + EXTRA_ROWS)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_reloads_with_same_ids_and_special_tokens(family: str, checkpoint) -> None:
    fam, path = FAMILIES[family], checkpoint(family)
    built = build_tokenizer(family)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert tok(TEXT).input_ids == built(TEXT).input_ids
    assert tok.decode(tok(TEXT, add_special_tokens=False).input_ids) == TEXT
    starts_with_bos = tok("x").input_ids[0] == tok.bos_token_id
    assert starts_with_bos == fam.add_bos
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (fam.bos, fam.eos, fam.pad, fam.unk)
    for token in fam.chat_tokens:  # every chat token is one id, never split into bytes
        assert len(tok(token, add_special_tokens=False).input_ids) == 1, token

    config = json.loads((path / "config.json").read_text())
    gen = json.loads((path / "generation_config.json").read_text())
    eos_ids = [tok.convert_tokens_to_ids(t) for t in fam.config_eos]
    assert config["eos_token_id"] == (eos_ids[0] if len(eos_ids) == 1 else eos_ids)
    assert config.get("pad_token_id") == (fam.config_pad and tok.convert_tokens_to_ids(fam.config_pad))
    gen_eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert tok.convert_tokens_to_ids(fam.eos) in gen_eos + [config["eos_token_id"]]


TEMPLATED = [f for f, fam in FAMILIES.items() if fam.chat_template]


@pytest.mark.parametrize("family", TEMPLATED)
def test_chat_template_is_the_shipped_text_and_renders(family: str, checkpoint) -> None:
    fam, path = FAMILIES[family], checkpoint(family)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert tok.chat_template == (TEMPLATE_DIR / fam.chat_template).read_text(encoding="utf-8")

    prompt = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    plain = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=False)
    for message in CHAT:
        assert message["content"] in prompt
    if "add_generation_prompt" in tok.chat_template:
        assert prompt != plain
    # The rendered special tokens come back as single ids, as in the real family.
    ids = tok(prompt, add_special_tokens=False).input_ids
    for token in {fam.bos, fam.eos, *fam.chat_tokens} - {None}:
        assert ids.count(tok.convert_tokens_to_ids(token)) == prompt.count(token), token


def _module_names(model: torch.nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_specifics_survive_the_round_trip(family: str, checkpoint) -> None:
    model = AutoModelForCausalLM.from_pretrained(checkpoint(family), local_files_only=True)
    c, names = model.config, _module_names(model)
    attn = model.get_decoder().layers[0].self_attn if family != "gpt2" else None
    checks = {
        "llama2": lambda: c.num_key_value_heads == c.num_attention_heads and "q_norm" not in names,
        "llama3": lambda: (
            c.rope_parameters["rope_type"] == "llama3"
            and {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
            <= set(c.rope_parameters)
        ),
        "mistral": lambda: c.sliding_window == 16 and c.num_key_value_heads < c.num_attention_heads,
        "qwen2": lambda: attn.q_proj.bias is not None and attn.o_proj.bias is None,
        "qwen3": lambda: {"q_norm", "k_norm"} <= names and attn.q_proj.bias is None,
        "phi3": lambda: {"qkv_proj", "gate_up_proj"} <= names and c.sliding_window == 16,
        "phi2": lambda: (
            c.rope_parameters["partial_rotary_factor"] == 0.5 and model.lm_head.bias is not None and "dense" in names
        ),
        "gemma2": lambda: (
            (c.attn_logit_softcapping, c.final_logit_softcapping, c.sliding_window) == (50.0, 30.0, 16)
            and c.query_pre_attn_scalar == c.head_dim
            and c.hidden_activation == "gelu_pytorch_tanh"
        ),
        "gemma3": lambda: (
            c.layer_types == ["sliding_attention", "full_attention"] * 2
            and c.rope_parameters["sliding_attention"]["rope_theta"]
            != c.rope_parameters["full_attention"]["rope_theta"]
            and {"q_norm", "k_norm"} <= names
        ),
        "gpt2": lambda: type(model).__name__ == "GPT2LMHeadModel" and c.n_embd == 64,
    }
    assert checks[family]()


def test_size_scales_and_sets_shards(tmp_path: Path) -> None:
    size = dict(hidden_size=128, num_layers=3, num_heads=8, num_kv_heads=2, head_dim=16, intermediate_size=256)
    path = build_checkpoint("qwen2", tmp_path / "q", size=size, max_shard_size="200KB", seed=1)
    c = AutoConfig.from_pretrained(path, local_files_only=True)
    got = (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size)
    assert got == (128, 3, 8, 2, 256)
    assert len(list(path.glob("model-*.safetensors"))) > 3

    g = AutoConfig.from_pretrained(build_checkpoint("gpt2", tmp_path / "g", size=dict(hidden_size=32, num_heads=2)))
    assert (g.n_embd, g.n_head, g.n_inner, g.n_positions) == (32, 2, 128, 256)


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a = AutoModelForCausalLM.from_pretrained(build_checkpoint("llama3", tmp_path / "a", seed=3))
    b = AutoModelForCausalLM.from_pretrained(build_checkpoint("llama3", tmp_path / "b", seed=3))
    c = AutoModelForCausalLM.from_pretrained(build_checkpoint("llama3", tmp_path / "c", seed=4))
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


@pytest.mark.parametrize(
    ("family", "size", "match"),
    [
        ("nope", None, "family 'nope'"),
        ("llama2", {"hidden": 8}, "unknown key"),
        ("qwen2", {"head_dim": 32}, "head_dim=32"),
        ("gpt2", {"num_kv_heads": 2}, "no GQA"),
        ("llama2", {"hidden_size": 66}, "not a multiple"),
    ],
)
def test_bad_requests_name_the_problem(tmp_path: Path, family: str, size: dict | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_checkpoint(family, tmp_path, size=size)
