"""The train stage's out_dir, written atomically once training ends.

model/               Hugging Face directory in the model family's own format: its config.json,
                     generation_config.json, safetensors weights (model.safetensors, or shards of at most
                     EXPORT_SHARD_SIZE with model.safetensors.index.json) and the tokenizer files (loads
                     with transformers alone, no frontier import)
metrics.json         final results (frontier.train.run.final_metrics): identical for identical inputs
speed.json           tokens/s, FLOP/s, MFU, times: measured, so they differ run to run
run.json             what describes the run: stop reason, device, precision, ZeRO stage (not numbers)
plots/train.csv      step, loss, lr, grad_norm, tokens_per_s   (dvc plots)
plots/val.csv        step, val_loss
tb/                  TensorBoard event files
alerts.jsonl         every alert fired during the run (empty file when none)
profile/             torch.profiler traces, when train.profile asked for them
params.resolved.yaml the parameters the run used
provenance.json      what ran it: commit, lock, library versions, hardware, host, command (at train start)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from frontier.config import Params
from frontier.errors import TrainingError
from frontier.model.loss import CausalLMWithLoss
from frontier.provenance import PROVENANCE_FILE, record_stage
from frontier.train.checkpoint.state import TrainerState
from frontier.train.engine.engine import zero_stage
from frontier.train.launch.distributed import DistInfo, barrier, broadcast_object
from frontier.train.monitor.monitor import TRAIN_FIELDS, VAL_FIELDS, write_csv
from frontier.utils.atomic import atomic_dir
from frontier.utils.metrics_files import write_metrics

# The Hub's shard size (transformers 4's save_pretrained default; transformers 5's is 50GB): shards that a
# download resumes and a loader maps one at a time.
EXPORT_SHARD_SIZE = "5GB"


def full_state_dict(lm: torch.nn.Module, *, partitioned: bool, is_main: bool) -> dict[str, torch.Tensor] | None:
    """`lm`'s whole weights on the CPU on the main rank (None elsewhere). Collective when `partitioned` (ZeRO-3):
    one tensor is gathered at a time and only the main rank keeps a copy, so no rank ever holds a second whole
    model. A weight tied under two names is copied under each (so the export keeps the bytes it always had: a
    shared copy would make save_pretrained drop the tied head)."""
    import deepspeed

    out: dict[str, torch.Tensor] = {}
    for name, tensor in lm.state_dict(keep_vars=True).items():  # the same order on every rank
        gather = [tensor] if partitioned and hasattr(tensor, "ds_id") else []
        with deepspeed.zero.GatheredParameters(gather, modifier_rank=None):
            if is_main:
                out[name] = tensor.detach().to("cpu", copy=True)
    return out if is_main else None


def save_model(
    lm: Any, state_dict: dict[str, torch.Tensor], model_dir: Path, *, max_shard_size: int | str = EXPORT_SHARD_SIZE
) -> None:
    """`lm`'s family format in `model_dir`: config.json, generation_config.json and safetensors (sharded with an
    index above `max_shard_size`) holding `state_dict`."""
    lm.save_pretrained(str(model_dir), state_dict=state_dict, max_shard_size=max_shard_size)


def _copy_if_exists(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
    elif src.is_file():
        shutil.copy2(src, dst)


def copy_tokenizer(tokenizer_dir: Path, model_dir: Path) -> None:
    """Every file of the tokenizer directory, so AutoTokenizer loads from the model directory."""
    for path in sorted(Path(tokenizer_dir).iterdir()):
        if path.is_file() and path.name not in (
            "params.resolved.yaml",
            PROVENANCE_FILE,
        ):  # the stage's, not the model's
            shutil.copy2(path, model_dir / path.name)


def export_run(
    *,
    out_dir: Path,
    engine: Any,
    module: CausalLMWithLoss,
    params: Params,
    tokenizer_dir: Path,
    logs_dir: Path,
    state: TrainerState,
    metrics: dict[str, Any],
    info: DistInfo,
    provenance: dict[str, Any] | None = None,
) -> None:
    """Collective (ZeRO-3 gathers the weights on every rank); rank 0 writes `out_dir`."""
    state_dict = full_state_dict(module.lm, partitioned=zero_stage(engine) == 3, is_main=info.is_main)
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())] if (
        info.is_main) else []  # fmt: skip
    bad = broadcast_object(bad, info)
    if bad:
        raise TrainingError(
            f"train: the final weights hold NaN/inf ({len(bad)} tensors, e.g. {bad[0]}); nothing exported to {out_dir}. "
            "Lower optimizer.lr or set engine.grad_clip; the last finite checkpoint is kept for inspection"
        )
    if info.is_main:
        with atomic_dir(out_dir) as tmp:
            model_dir = tmp / "model"
            save_model(module.lm, state_dict, model_dir)
            copy_tokenizer(tokenizer_dir, model_dir)
            write_metrics(tmp, metrics)
            write_csv(tmp / "plots" / "train.csv", TRAIN_FIELDS, state.train_rows)
            write_csv(tmp / "plots" / "val.csv", VAL_FIELDS, state.val_rows)
            _copy_if_exists(logs_dir / "tb", tmp / "tb")
            _copy_if_exists(logs_dir / "profile", tmp / "profile")
            alerts = logs_dir / "alerts.jsonl"
            if alerts.is_file():
                shutil.copy2(alerts, tmp / "alerts.jsonl")
            else:
                (tmp / "alerts.jsonl").touch()
            record_stage(params, tmp, "train", provenance=provenance)
    barrier(info)
