"""The QLoRA base: bitsandbytes' 4-bit NF4 or 8-bit weights, where its kernels run, and their full-precision form.

Whether QLoRA can run is asked of bitsandbytes itself, not inferred from the device type: its CPU
backend (0.49+) runs the 4-bit and 8-bit layers on a CPU, and a backend without kernels for the
device fails the probe below with its own words. The quantization settings travel with the adapter
(``base_quantization.json``) so that `merge` can rebuild the very base the adapter was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from frontier.errors import CheckpointError, ConfigError

QUANTIZATION_FILE = "base_quantization.json"  # in the adapter directory: how its base was quantized

# Every ZeRO stage runs with a quantized base (measured on the CPU with DeepSpeed 0.19 and bitsandbytes 0.50,
# tests/finetune/test_qlora.py): ZeRO-1/2 partition only the optimizer state and gradients, the adapter's;
# ZeRO-3 also partitions the frozen packed uint8 (4-bit) and int8 weights and gathers their bytes back
# unchanged for each forward, while their scales (quant_state, SCB) stay on the same Parameter object. Two
# ranks with every parameter partitioned give one rank's per-step losses bit for bit.


def bnb_config(quantize: str, compute_dtype: torch.dtype) -> Any:
    """transformers' BitsAndBytesConfig for finetune.quantize 4bit (NF4, double-quantized scales) or 8bit."""
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)  # fmt: skip
    return BitsAndBytesConfig(load_in_8bit=True)


def check_runs(quantize: str, device: torch.device, compute_dtype: torch.dtype) -> None:
    """ConfigError unless a bitsandbytes layer of this kind runs forward and backward on `device`."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError(
            f"finetune.quantize: {quantize!r} needs the bitsandbytes package, which is not installed (it is in the "
            "locks: reinstall from requirements/, or pip install bitsandbytes)"
        ) from None
    try:
        _probe(bnb, quantize, device, compute_dtype)
    except (RuntimeError, NotImplementedError, AssertionError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"finetune.quantize: {quantize!r}: bitsandbytes {bnb.__version__} cannot run its {quantize} layers on "
            f"{device} in {compute_dtype} ({first}); use finetune.method lora (full-precision base)"
        ) from None


def _probe(bnb: Any, quantize: str, device: torch.device, dtype: torch.dtype) -> None:
    """A 64x64 layer of the kind the base will be made of, quantized onto `device`, forward and backward."""
    if quantize == "4bit":
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=dtype, quant_type="nf4")
    else:
        layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)
    layer = layer.to(dtype).to(device)  # quantizes on the move to the device
    x = torch.randn(2, 64, device=device, dtype=dtype, requires_grad=True)
    layer(x).float().sum().backward()  # the adapter's gradient flows through the frozen layer's backward


def one_cpu_kernel(model: torch.nn.Module) -> None:
    """Keep bitsandbytes' 4-bit layers on the CPU kernel that trains them, in evaluation too.

    bitsandbytes 0.50, on a CPU with AVX512-BF16, repacks a 4-bit weight in place for an inference-only kernel
    the first time the layer runs in eval mode without grad (the held-out score): a layer narrower than the
    quantization block (64 inputs) fails there, and the repacked weight is a second storage format between
    evaluation and training passes. The training kernel computes both, the same way."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def write_quantization(adapter_dir: Path, config: Any) -> None:
    """Record the base's BitsAndBytesConfig beside the adapter (what merge needs to rebuild the trained base)."""
    data = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    (Path(adapter_dir) / QUANTIZATION_FILE).write_text(text + "\n", encoding="utf-8")


def read_quantization(adapter_dir: Path) -> Any | None:
    """The BitsAndBytesConfig recorded with an adapter, or None for an adapter trained on a full-precision base."""
    from transformers import BitsAndBytesConfig

    path = Path(adapter_dir) / QUANTIZATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["bnb_4bit_compute_dtype"] = torch.float32  # dequantized below: the compute dtype plays no part
        return BitsAndBytesConfig.from_dict(data)
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not a bitsandbytes quantization config ({exc})") from None
