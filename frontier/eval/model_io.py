"""Load any local Hugging Face causal-LM directory (ours or the user's) for evaluation."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from frontier.errors import CheckpointError, out_of_memory


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(model_dir: Path) -> Any:
    """The tokenizer saved beside the weights (AutoTokenizer, local files only)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{model_dir}: no loadable tokenizer (expected tokenizer.json / tokenizer_config.json): {_first_line(exc)}"
        ) from None


def load_model(model_dir: Path, device: torch.device | None = None) -> tuple[Any, Any]:
    """(model in eval mode on `device`, tokenizer) from a local HF directory; CheckpointError if unusable."""
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{model_dir}: not a Hugging Face model directory (config.json missing)")
    device = device or pick_device()
    # fp32 on CPU (bf16 matmuls there are slow and lossy); the saved dtype on a GPU.
    dtype = "auto" if device.type == "cuda" else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype)
    except pickle.UnpicklingError as exc:
        raise refused_pickle(model_dir, exc) from None
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        if out_of_memory(exc):  # the machine's limit, not a bad model: frontier.cli says so in one line
            raise
        raise CheckpointError(f"{model_dir}: cannot load the model: {_first_line(exc)}") from None
    model.to(device).eval()
    return model, load_tokenizer(model_dir)


def refused_pickle(model_dir: Path, exc: BaseException) -> CheckpointError:
    """torch's weights-only load refused a pickled .bin that would run code: say which file and what to use."""
    found = sorted(p.name for p in Path(model_dir).glob("*.bin"))
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    what = f"it would call {unsafe.group(1)}" if unsafe else "it holds more than plain tensors"
    return CheckpointError(
        f"{model_dir}: refused to load the pickle {', '.join(found) or '(a .bin weights file)'}: {what}; "
        "use its .safetensors form (model.safetensors, adapter_model.safetensors) from a source you trust"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__
