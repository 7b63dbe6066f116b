"""Build the model through transformers: Llama-style or GPT-2-style from config, or a local HF directory.

Models are plain ``LlamaForCausalLM`` / ``GPT2LMHeadModel`` instances (or whatever causal LM a
local directory holds), so the weights they save load with ``transformers`` alone. Nothing is
ever downloaded: ``init_from`` must be a local directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from frontier.config.model import ModelConfig
from frontier.model.presets import resolve
from frontier.model.vocab import check_vocabulary

log = logging.getLogger("frontier.model")


# model.mlp_activation -> transformers' ACT2FN name. gelu_pytorch_tanh is GPT-2's gelu_new formula in one
# fused torch op (forward and backward); gelu is the exact erf GELU.
_GPT2_ACTIVATIONS = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}


def hf_config(cfg: ModelConfig, vocab_size: int, *, bos_id: int | None, eos_id: int | None, pad_id: int | None) -> Any:
    """The transformers config of `cfg` (preset resolved) for a `vocab_size`-token vocabulary."""
    from transformers import GPT2Config, LlamaConfig

    cfg = resolve(cfg)
    common = dict(
        vocab_size=vocab_size,
        initializer_range=cfg.init_std,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,  # for generation after export; training passes use_cache=False
    )
    if cfg.arch == "llama":
        return LlamaConfig(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads,
            max_position_embeddings=cfg.max_seq_len,
            rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
            rms_norm_eps=1e-5,
            attention_dropout=cfg.dropout,
            **common,
        )
    return GPT2Config(
        n_embd=cfg.hidden_size,
        n_layer=cfg.num_layers,
        n_head=cfg.num_heads,
        n_inner=cfg.intermediate_size,
        n_positions=cfg.max_seq_len,
        activation_function=_GPT2_ACTIVATIONS[cfg.mlp_activation or "gelu_tanh"],
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        **common,
    )


def build_model(
    cfg: ModelConfig,
    vocab_size: int,
    *,
    bos_id: int | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    dtype: torch.dtype = torch.float32,
    zero3_config: dict[str, Any] | None = None,
) -> Any:
    """A causal LM with weights in `dtype` (the run's precision): fresh from `cfg` (seed torch first for a
    reproducible init) or loaded from `cfg.init_from` (partitioned as it is built when `zero3_config`, the run's
    ZeRO-3 DeepSpeed config, is given: frontier.model.load).

    A fresh model is initialised in fp32 and then cast, whatever the precision and ZeRO stage: the same seed
    gives the same weights at every stage and rank count (DeepSpeed would cast them the same way). Constructing
    it partitioned instead would make transformers initialise it module by module on rank 0, a different
    random stream, so a ZeRO-3 run would no longer start where the same run at another stage does.
    """
    if cfg.init_from:
        return load_pretrained(Path(cfg.init_from), vocab_size, dtype=dtype, zero3_config=zero3_config)
    from transformers import AutoModelForCausalLM

    config = hf_config(cfg, vocab_size, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if dtype != torch.float32:  # the weights only, as DeepSpeed's cast at initialize (buffers such as RoPE's
        for param in model.parameters():  # inverse frequencies stay fp32); halves what the rank holds
            param.data = param.data.to(dtype)
    if model.generation_config is not None:  # generate() stops at EOS and pads with PAD after export
        model.generation_config.bos_token_id = bos_id
        model.generation_config.eos_token_id = eos_id
        model.generation_config.pad_token_id = pad_id
    return model


def load_pretrained(
    path: Path, vocab_size: int, *, dtype: torch.dtype = torch.float32, zero3_config: dict[str, Any] | None = None
) -> Any:
    """Continue from a local HF model directory; its own config decides the architecture and sizes."""
    from frontier.model.load import load_causal_lm

    model = load_causal_lm(path, dtype=dtype, zero3_config=zero3_config, what="model.init_from")
    check_vocabulary(path, model.get_input_embeddings().num_embeddings, vocab_size)
    log.info("continuing from %s (%s); model.* sizes are taken from its config", path, type(model).__name__)
    return model


_SHAPE_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "n_inner",
    "max_position_embeddings",
    "tie_word_embeddings",
)


def shape_signature(lm: Any) -> dict[str, Any]:
    """The config values that decide the weights' shapes (what a checkpoint must agree with to load)."""
    cfg = lm.config
    return {k: getattr(cfg, k) for k in _SHAPE_KEYS if getattr(cfg, k, None) is not None}
