"""Loading the base model (full precision, or 4/8-bit for QLoRA) and attaching the LoRA adapter."""

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


def quantization_config(quantize: str, zero_stage: int) -> Any:
    """transformers' BitsAndBytesConfig for finetune.quantize, or ConfigError where it cannot run."""
    if not torch.cuda.is_available():
        raise ConfigError(
            f"finetune.quantize: {quantize!r} (QLoRA) needs a CUDA device for the bitsandbytes kernels and none "
            "is available; set finetune.quantize: none to fine-tune the full-precision base"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"finetune.quantize: {quantize!r} needs the bitsandbytes package (pip install bitsandbytes)"
        ) from None
    if zero_stage != 0:
        raise ConfigError(
            f"engine.zero_stage: {zero_stage} cannot partition a quantized base; QLoRA needs engine.zero_stage: 0"
        )
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_base(model_dir: Path, quantize: str, zero_stage: int, device: torch.device) -> Any:
    """The base causal LM from a local HF directory: fp32, or quantized (frozen) for QLoRA."""
    from transformers import AutoModelForCausalLM

    from frontier.eval.model_io import from_pretrained_checked

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{model_dir}: not a Hugging Face model directory (config.json missing)")
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": torch.float32}
    if quantize != "none":
        kwargs["quantization_config"] = quantization_config(quantize, zero_stage)
        kwargs["device_map"] = {"": device}
        kwargs.pop("dtype")
    lm = from_pretrained_checked(
        AutoModelForCausalLM.from_pretrained, model_dir, f"{model_dir}: cannot load the base model", **kwargs
    )
    if quantize != "none":
        from peft import prepare_model_for_kbit_training

        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)
    return lm


def _linear_names(lm: nn.Module) -> list[str]:
    """Distinct last components of the names of linear layers (what target_modules may list)."""
    names = set()
    for name, module in lm.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt", "Conv1D"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def attach_lora(lm: nn.Module, cfg: FinetuneConfig) -> Any:
    """Wrap `lm` in a peft LoRA model (only the adapter trains); ConfigError for unknown targets.

    peft injects the LoRA layers into `lm` itself, so `lm` keeps working as the model to train
    (through frontier.model.loss.CausalLMWithLoss) while the returned PeftModel saves the adapter.
    """
    from peft import LoraConfig, get_peft_model

    available = _linear_names(lm)
    unknown = [t for t in cfg.target_modules if t not in available]
    if unknown:
        raise ConfigError(f"finetune.target_modules: {unknown} match no linear layer of this model; it has {available}")
    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(lm, lora)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, shared tensors counted once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)
