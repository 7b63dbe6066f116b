"""The finetune stage's out_dir, written atomically once training ends: an adapter (lora, qlora) or a model (full).

Both are gathered first (collective: ZeRO-3 holds a shard of each weight per rank); rank 0 writes.
Paths recorded in the outputs are relative, so a runs folder moved or copied as a whole still merges.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from frontier.errors import TrainingError

if TYPE_CHECKING:
    from frontier.config import Params
    from frontier.model.loss import CausalLMWithLoss
    from frontier.train.checkpoint.state import TrainerState
    from frontier.train.launch.distributed import DistInfo

ADAPTER_DIR = "adapter"  # lora, qlora
MODEL_DIR = "model"  # full
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def copy_tokenizer(src: Path, dst: Path) -> None:
    """The tokenizer files of a model directory (not its weights), so the result loads with AutoTokenizer."""
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)


def export_finetune(
    out_dir: Path,
    peft_model: Any | None,
    module: CausalLMWithLoss,
    engine: Any,
    params: Params,
    base_model_dir: Path,
    logs_dir: Path,
    state: TrainerState,
    metrics: dict[str, Any],
    info: DistInfo,
    *,
    record: Callable[[Path], None],
    plots: dict[str, tuple[Sequence[str], list[dict]]] | None = None,
) -> None:
    """Collective; rank 0 writes `out_dir`: the adapter (`peft_model` given) or the whole model, and the logs;
    `record(directory)` writes the stage's provenance there (frontier.provenance.record_stage with the stage's
    name), `plots` adds CSV files under plots/ (name -> (fields, rows))."""
    from frontier.train.engine.engine import gathered_params
    from frontier.train.launch.distributed import barrier
    from frontier.train.monitor.monitor import TRAIN_FIELDS, VAL_FIELDS, write_csv
    from frontier.utils.atomic import atomic_dir
    from frontier.utils.metrics_files import write_metrics

    # full: the whole model, gathered and checked on every rank's behalf before anything is written
    state_dict = _final_weights(module, engine, info) if peft_model is None else None
    # the adapter is saved by peft from the module itself: gathered while it writes
    with gathered_params(engine) if peft_model is not None else contextlib.nullcontext():
        if info.is_main:
            with atomic_dir(out_dir) as tmp:
                if peft_model is not None:
                    _write_adapter(tmp / ADAPTER_DIR, peft_model, base_model_dir, out_dir / ADAPTER_DIR)
                else:
                    module.lm.save_pretrained(str(tmp / MODEL_DIR), state_dict=state_dict, safe_serialization=True)
                    copy_tokenizer(base_model_dir, tmp / MODEL_DIR)
                write_metrics(tmp, metrics)
                write_csv(tmp / "plots" / "train.csv", TRAIN_FIELDS, state.train_rows)
                write_csv(tmp / "plots" / "val.csv", VAL_FIELDS, state.val_rows)
                for name, (fields, rows) in (plots or {}).items():
                    write_csv(tmp / "plots" / name, fields, rows)
                if (logs_dir / "tb").is_dir():
                    shutil.copytree(logs_dir / "tb", tmp / "tb")
                record(tmp)
    barrier(info)


def _write_adapter(adapter: Path, peft_model: Any, base_model_dir: Path, final_adapter_dir: Path) -> None:
    from frontier.finetune.quantize import write_quantization

    peft_model.save_pretrained(str(adapter), safe_serialization=True)
    _point_at_base(adapter, base_model_dir, final_adapter_dir)
    quantization = getattr(peft_model.base_model.model.config, "quantization_config", None)
    if quantization is not None:  # qlora: merge rebuilds this very base
        write_quantization(adapter, quantization)
    copy_tokenizer(base_model_dir, adapter)


def _final_weights(module: CausalLMWithLoss, engine: Any, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """Collective: the whole fine-tuned state dict on rank 0 (None elsewhere); TrainingError on every rank when a
    weight is not finite. (As frontier.train.export does for train's model; to be shared once both settle.)"""
    from frontier.train.engine.engine import gathered_params
    from frontier.train.launch.distributed import broadcast_object

    state_dict = None
    with gathered_params(engine):
        if info.is_main:
            state_dict = {k: v.detach().to("cpu", copy=True) for k, v in module.lm.state_dict().items()}
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())] if (
        state_dict is not None) else []  # fmt: skip
    bad = broadcast_object(bad, info)
    if bad:  # the loop skips non-finite steps: a model broken before the run, or by its last step
        raise TrainingError(f"finetune: the final weights hold NaN/inf ({len(bad)} tensors, e.g. {bad[0]}); nothing "
                            "exported. Lower finetune.lr or set engine.grad_clip")  # fmt: skip
    return state_dict


def _point_at_base(adapter_dir: Path, base_model_dir: Path, final_adapter_dir: Path) -> None:
    """Record the base model in adapter_config.json as a path relative to the adapter's final place
    (what `merge` loads): a runs folder moved or copied elsewhere as a whole still merges."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = os.path.relpath(Path(base_model_dir).resolve(), final_adapter_dir.resolve())
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
