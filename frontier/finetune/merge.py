"""The merge stage: the fine-tuned full model, whatever finetune.method made, as a plain Hugging Face directory.

- lora: the adapter folded into its full-precision base (peft's merge_and_unload).
- qlora: the adapter was trained on the *quantized* base, so it is folded into that base dequantized
  (W' = dequant(quant(W)) + scale * B @ A), not into the original W: that is the model whose held-out
  loss finetune measured. Folding it into W instead would add the quantization error W - dequant(quant(W))
  the adapter never saw (tests/finetune/test_qlora.py measures both).
- full: finetune exported the model itself (out_dir/model); its files are hard-linked into the output
  (copied where the filesystem cannot link). A link costs no disk for a model of many GB and is safe
  here: no writer in this project modifies a file in place (utils.atomic renames a new file over a name),
  and unlike a symlink the output stays a self-contained directory when runs/finetune is removed or
  only runs/merged is restored from a DVC remote.

The result loads with transformers alone (safetensors + config + tokenizer), no peft or frontier needed,
so evaluate_finetuned scores it as it scores any model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from frontier.errors import CheckpointError, ConfigError
from frontier.finetune.export import ADAPTER_DIR, MODEL_DIR, copy_tokenizer

log = logging.getLogger("frontier.finetune")


def merge(adapter_dir: Path, out_dir: Path) -> Path:
    """Write the fine-tuned full model to `out_dir`.

    `adapter_dir` is a finetune out_dir (holding ``adapter/`` or, for method full, ``model/``) or an
    adapter directory itself.
    """
    from frontier.provenance import write_provenance
    from frontier.utils.atomic import atomic_dir

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if (adapter_dir / ADAPTER_DIR / "adapter_config.json").is_file():
        adapter_dir = adapter_dir / ADAPTER_DIR
    elif (adapter_dir / MODEL_DIR / "config.json").is_file():
        return _share_model(adapter_dir / MODEL_DIR, out_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{adapter_dir}: no adapter_config.json (expected a finetune output with adapter/ or model/, or a LoRA "
            "adapter directory)"
        )
    base_dir = _base_dir(config_path)
    merged = _fold(adapter_dir, base_dir)
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        copy_tokenizer(adapter_dir if (adapter_dir / "tokenizer.json").is_file() else base_dir, tmp)
        write_provenance(tmp)
    log.info("merge: %s + %s -> %s", base_dir, adapter_dir, out_dir)
    return out_dir


def _base_dir(config_path: Path) -> Path:
    """The base model directory named in adapter_config.json (relative to the adapter, or absolute)."""
    try:
        base_dir = Path(json.loads(config_path.read_text(encoding="utf-8"))["base_model_name_or_path"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{config_path}: no base_model_name_or_path naming the base model directory") from None
    base_dir = base_dir if base_dir.is_absolute() else config_path.parent / base_dir
    if not (base_dir / "config.json").is_file():
        raise CheckpointError(f"{config_path}: base model {base_dir} is not a local Hugging Face model directory")
    return base_dir


def _fold(adapter_dir: Path, base_dir: Path) -> Any:
    """The base the adapter was trained on, in fp32, with the adapter merged into its weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from frontier.eval.model_io import from_pretrained_checked
    from frontier.finetune.quantize import read_quantization

    what = f"{adapter_dir}: cannot apply the adapter to {base_dir}"
    quantization = read_quantization(adapter_dir)
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": torch.float32}
    if quantization is not None:
        _need_bitsandbytes(adapter_dir)
        # quantized exactly as for training (on the CPU: bitsandbytes' quantization is device-independent)
        kwargs.update(quantization_config=quantization, device_map={"": "cpu"})
    base = from_pretrained_checked(AutoModelForCausalLM.from_pretrained, base_dir, what, **kwargs)
    if quantization is not None:
        base = base.dequantize().to(torch.float32)  # linear layers back to nn.Linear holding dequant(quant(W))
    return from_pretrained_checked(
        lambda path, **kw: PeftModel.from_pretrained(base, path, **kw).merge_and_unload(),
        adapter_dir,
        what,
        local_files_only=True,
    )


def _need_bitsandbytes(adapter_dir: Path) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{adapter_dir}: a QLoRA adapter (base_quantization.json) is merged into its base dequantized, which "
            "needs the bitsandbytes package (it is in the locks: reinstall from requirements/)"
        ) from None


def _share_model(model_dir: Path, out_dir: Path) -> Path:
    """Method full: the fine-tuned model's files into `out_dir`, hard-linked where possible (see the module doc)."""
    from frontier.provenance import write_provenance
    from frontier.utils.atomic import atomic_dir

    with atomic_dir(out_dir) as tmp:
        for path in sorted(model_dir.iterdir()):
            if not path.is_file() or path.is_symlink():
                raise CheckpointError(f"{path}: expected the plain files of a model directory (found a link or a "
                                      "folder)")  # fmt: skip
            try:
                os.link(path, tmp / path.name)
            except OSError:  # another filesystem, or one without hard links
                shutil.copy2(path, tmp / path.name)
        write_provenance(tmp)
    log.info("merge: %s is the fine-tuned model (method full) -> %s", model_dir, out_dir)
    return out_dir
