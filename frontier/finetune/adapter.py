"""Loading the fine-tune's base (in the run's precision, or quantized for QLoRA) and attaching the LoRA adapter."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from frontier.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from frontier.config.finetune import FinetuneConfig

log = logging.getLogger(__name__)

ALL_LINEAR = "all-linear"  # peft's: every linear layer of the blocks, the output head left out

# bitsandbytes' layers, by class name (no import of bitsandbytes where it is not installed)
_QUANTIZED_LINEAR = ("Linear4bit", "Linear8bitLt")


def load_base(
    model_dir: Path,
    quantize: str,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    zero3_config: dict[str, Any] | None = None,
) -> Any:
    """The base causal LM from a local HF directory through the one loader (frontier.model.load): in `dtype`,
    partitioned as it is built under ZeRO-3 (`zero3_config`: a full fine-tune's; an adapter's base is
    partitioned by the engine, after peft has read the whole layers it wraps); for quantize 4bit/8bit its
    linear layers are bitsandbytes' (frozen, computing in `dtype`) and the rest is prepared for k-bit training."""
    from frontier.model.load import load_causal_lm

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{model_dir}: not a Hugging Face model directory (config.json missing)")
    if quantize == "none":
        return load_causal_lm(model_dir, dtype=dtype, zero3_config=zero3_config, what="finetune --model",
                              error_cls=CheckpointError)  # fmt: skip
    from peft import prepare_model_for_kbit_training

    from frontier.finetune.quantize import bnb_config, check_runs, one_cpu_kernel

    check_runs(quantize, device, dtype)
    # quantized as it is placed: never a full-precision copy on the device
    lm = load_causal_lm(model_dir, dtype=dtype, quantization_config=bnb_config(quantize, dtype),
                        device_map={"": device}, what="finetune --model", error_cls=CheckpointError)  # fmt: skip
    one_cpu_kernel(lm)
    # the norms and embeddings to fp32 for a stable adapter gradient through the frozen base; activation
    # checkpointing is the engine's (frontier.train.wiring.prepare_model), not peft's
    return prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)


def linear_names(lm: nn.Module) -> list[str]:
    """Distinct last components of the names of linear layers (what a target_modules list may name)."""
    names = set()
    for name, module in lm.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ in (*_QUANTIZED_LINEAR, "Conv1D"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def check_targets(lm: nn.Module, cfg: FinetuneConfig, *, fused_head: bool) -> None:
    """ConfigError for a target_modules list naming no linear layer of `lm`, or the head under the fused loss."""
    if cfg.target_modules == ALL_LINEAR:
        return  # peft's rule: every block's linear layer, never the head
    available = linear_names(lm)
    unknown = [t for t in cfg.target_modules if t not in available]
    if unknown:
        raise ConfigError(f"finetune.target_modules: {unknown} match no linear layer of this model; it has {available}")
    if fused_head and "lm_head" in cfg.target_modules:
        raise ConfigError(
            "finetune.target_modules: 'lm_head' cannot take an adapter while kernels.fused_linear_cross_entropy is "
            "true (the fused loss reads the head weight directly); drop one of them"
        )


def attach_lora(lm: nn.Module, cfg: FinetuneConfig) -> Any:
    """Wrap `lm` in a peft LoRA model (only the adapter trains; check_targets first).

    peft injects the LoRA layers into `lm` itself, so `lm` keeps working as the model to train
    (through frontier.model.loss.CausalLMWithLoss) while the returned PeftModel saves the adapter.
    """
    from peft import LoraConfig, get_peft_model

    targets = cfg.target_modules if cfg.target_modules == ALL_LINEAR else list(cfg.target_modules)
    lora = LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, bias="none",
        task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(lm, lora)


def adapted_modules(lm: nn.Module) -> list[str]:
    """The distinct names (last component) of the layers that carry an adapter, sorted."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in lm.named_modules() if hasattr(m, "lora_A")})


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, shared tensors counted once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)
