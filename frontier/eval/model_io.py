"""Load any local Hugging Face causal-LM directory (ours or the user's) for evaluation."""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from frontier.errors import CheckpointError, FrontierError, first_line, out_of_memory


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(model_dir: Path) -> Any:
    """The tokenizer saved beside the weights (AutoTokenizer, local files only)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{model_dir}: no loadable tokenizer (expected tokenizer.json / tokenizer_config.json): {first_line(exc)}"
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
    model = from_pretrained_checked(
        AutoModelForCausalLM.from_pretrained,
        model_dir,
        f"{model_dir}: cannot load the model",
        local_files_only=True,
        dtype=dtype,
    )
    model.to(device).eval()
    return model, load_tokenizer(model_dir)


def from_pretrained_checked(
    loader: Callable[..., Any],
    path: Path,
    what: str,
    error_cls: type[FrontierError] = CheckpointError,
    /,
    **kwargs: Any,
) -> Any:
    """`loader(str(path), **kwargs)` (a ``from_pretrained``) with its failures as one-line `error_cls`
    errors: a pickled .bin in `path` refused or damaged (`pickle_error`), anything else as
    ``{what}: {first line}``. An allocation failure is re-raised as it is: it is the machine's limit,
    not a bad model, and frontier.cli says so in one line."""
    try:
        return loader(str(path), **kwargs)
    except (pickle.UnpicklingError, EOFError) as exc:  # EOFError: a .bin cut short before its first record
        raise pickle_error(Path(path), exc, error_cls) from None
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        if out_of_memory(exc):
            raise
        raise error_cls(f"{what}: {first_line(exc)}") from None


def pickle_error(
    model_dir: Path, exc: BaseException, error_cls: type[FrontierError] = CheckpointError
) -> FrontierError:
    """What torch's weights-only load of a pickled .bin in `model_dir` said, as one line: refused when
    the pickle names a global (a callable it would run), else a damaged or foreign file."""
    found = ", ".join(sorted(p.name for p in Path(model_dir).glob("*.bin"))) or "(a .bin weights file)"
    text = str(exc)
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsafe:
        return error_cls(
            f"{model_dir}: refused to load the pickle {found}: it would call {unsafe.group(1)}; "
            "use its .safetensors form (model.safetensors, adapter_model.safetensors) from a source you trust"
        )
    said = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    detail = (
        said.group(1).strip() if said else "it ends too soon" if isinstance(exc, EOFError) else first_line(exc, 160)
    )
    return error_cls(
        f"{model_dir}: cannot load {found}: corrupt or not a torch file ({detail}); "
        "download it again, or use its .safetensors form"
    )
