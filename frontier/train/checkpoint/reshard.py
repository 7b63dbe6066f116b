"""Resuming a ZeRO checkpoint on another number of ranks, through DeepSpeed's universal checkpoint.

Why a conversion: under ZeRO-1/2 the optimizer state (fp32 master weights, exp_avg, exp_avg_sq)
and under ZeRO-3 the weights too are stored cut into one partition per data-parallel rank, and
DeepSpeed loads such files only on the same number of ranks. Its *universal* format
(``deepspeed.checkpoint.ds_to_universal``) stores each parameter's fp32 weight and Adam moments
whole, under the parameter's name; at load time every ZeRO optimizer cuts its own partition out
of them, for any rank count. Frontier's client optimizers (FusedAdamW, torch's AdamW) keep the
per-parameter state names it expects (``step``, ``exp_avg``, ``exp_avg_sq``), so DeepSpeed's own
converter and loader serve as they are (ZeRO-1, 2 and 3, fp32 and bf16). ZeRO-0 checkpoints
hold the whole state and load on any rank count without conversion.

The layout of a checkpoint (ranks, ZeRO stage, partitions, precision) is recorded in its manifest
and checked against the files the manifest lists, so a manifest that lies about it is refused
before anything is read. A layout that no conversion bridges (another ZeRO stage family or
precision) ends in one line that says how to resume it.

Trust: the caller verifies the checkpoint (frontier.train.checkpoint.manifest) before it is converted; the
converter reads it weights-only; the universal copy is written by rank 0 into
``<checkpoints>/.reshard/<step>/`` (never into the checkpoint, whose manifest would stop matching),
gets a manifest of its own, is re-hashed before any rank loads it (weights-only as well) and is
removed once loaded. A copy left behind by a killed run is deleted, never loaded.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
import re
import shutil
import types
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from deepspeed.runtime.zero.utils import ZeRORuntimeException

from frontier.errors import CheckpointError
from frontier.train.checkpoint import manifest
from frontier.train.checkpoint.engine_io import universal_loads, weights_only_loads
from frontier.train.launch.distributed import DistInfo, barrier, broadcast_object
from frontier.utils.atomic import atomic_dir

CACHE_DIR = ".reshard"  # under the checkpoints root; holds at most the conversion being loaded
DS_DIR, DS_TAG = "ds", "state"  # as frontier.train.checkpoint.checkpoint lays a checkpoint out

# DeepSpeed's file names under ds/state (deepspeed.checkpoint.constants; "mp_rank" is the tensor-parallel rank)
_OPTIM = re.compile(r"^(bf16_|fp16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
_ZERO3_MODEL = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_(\d+)_model_states\.pt$")
_MODEL = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")
_RNG = re.compile(r"^rng/rank_\d+\.json$")
# What DeepSpeed's loader and converter raise on files that do not fit (they assert, raise their own type, or
# fail to read): reported in one line, never as a traceback
DEEPSPEED_ERRORS = (AssertionError, RuntimeError, ValueError, KeyError, IndexError, TypeError, AttributeError,
                    OSError, ZeRORuntimeException)  # fmt: skip


@dataclass(frozen=True)
class Layout:
    """How a checkpoint's DeepSpeed state is cut: what decides whether another run can load it as it is."""

    world_size: int  # ranks that wrote it
    zero_stage: int
    partitions: int  # ZeRO partitions of the optimizer state (the data-parallel degree); 1 under ZeRO-0
    precision: str  # fp32 | bf16 | fp16

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return f"{self.world_size} rank(s), ZeRO-{self.zero_stage}, {self.partitions} partition(s), {self.precision}"


def engine_layout(engine: Any, world_size: int) -> Layout:
    """The layout this engine saves (and loads without conversion)."""
    stage = int(engine.zero_optimization_stage())
    precision = "bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32"
    partitions = int(getattr(engine, "dp_world_size", world_size)) if stage > 0 else 1
    return Layout(world_size=world_size, zero_stage=stage, partitions=partitions, precision=precision)


def _family(stage: int) -> str:
    # ZeRO-1 and 2 share one optimizer class and file format; ZeRO-3 partitions the weights too
    return {0: "ZeRO-0 (whole state)", 1: "ZeRO-1/2", 2: "ZeRO-1/2", 3: "ZeRO-3"}.get(stage, f"ZeRO-{stage}")


def _from_files(files: list[str]) -> tuple[int, int, set[str] | None]:
    """(stage family: 0, 2 for ZeRO-1/2, or 3; ZeRO partitions; precisions the names allow, None for any)
    as DeepSpeed's file names tell them. Its fp16 and fp32 ZeRO files share their names; bf16 ones do not."""
    names = [f.split("/", 2)[2] for f in files if f.startswith(f"{DS_DIR}/{DS_TAG}/") and f.count("/") == 2]
    optim = [m for n in names if (m := _OPTIM.match(n))]
    zero3_model = [n for n in names if _ZERO3_MODEL.match(n)]
    model = [n for n in names if _MODEL.match(n)]
    if any(m.group(3) != "00" for m in optim):
        raise CheckpointError("tensor-parallel partitions (mp_rank > 0), which Frontier never writes")
    prefixes = {m.group(1) or "" for m in optim}
    if len(prefixes) > 1:
        raise CheckpointError("ZeRO optimizer files of mixed precisions")
    ranks = sorted(int(m.group(2)) for m in optim)
    if ranks != list(range(len(ranks))):
        raise CheckpointError(f"ZeRO optimizer partitions {ranks} (expected 0..{len(ranks) - 1})")
    if zero3_model and optim:
        family = 3
    elif model and optim:
        family = 2
    elif model and not zero3_model:
        family = 0
    else:
        raise CheckpointError("no DeepSpeed model state it could be loaded from")
    allowed = {"bf16_": {"bf16"}, "fp16_": {"fp16"}, "": {"fp32", "fp16"}}[prefixes.pop()] if prefixes else None
    return family, (len(optim) if optim else 1), allowed


def saved_layout(meta: dict[str, Any], now: Layout) -> Layout:
    """The layout a checkpoint's manifest records, checked against the files it lists; CheckpointError if they
    disagree (a manifest that lies, or is damaged, is never believed). A manifest from before layouts were
    recorded gets the layout its files tell."""
    files = sorted(meta.get("files", {}))
    family, partitions, precisions = _from_files(files)
    rng_files = sum(1 for f in files if _RNG.match(f))
    recorded = meta.get("layout")
    if recorded is None:  # an older checkpoint: its files tell all but ZeRO-1 vs 2 (the same format) and fp16 vs 32
        stage = now.zero_stage if family == 2 and now.zero_stage in (1, 2) else family
        world = meta.get("world_size") if isinstance(meta.get("world_size"), int) else rng_files
        precision = now.precision if precisions is None or now.precision in precisions else min(precisions)
        return Layout(world_size=world or partitions, zero_stage=stage, partitions=partitions, precision=precision)
    try:
        layout = Layout(**recorded)
        ok = all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for v in (layout.world_size, layout.zero_stage, layout.partitions)
        ) and layout.precision in ("fp32", "bf16", "fp16")
    except TypeError:
        ok = False
    if not ok:
        raise CheckpointError(f"its manifest's layout {recorded!r} is not a layout record")
    told = {
        "ZeRO stage": (_family(layout.zero_stage), _family(family)),
        "partitions": (layout.partitions, partitions),
        "ranks": (layout.world_size, rng_files),
        "world_size": (layout.world_size, meta.get("world_size", layout.world_size)),
    }
    if precisions is not None and layout.precision not in precisions:
        told["precision"] = (layout.precision, " or ".join(sorted(precisions)))
    if layout.zero_stage > 0:
        told["ranks vs partitions"] = (layout.world_size, partitions)
    for what, (says, files_say) in told.items():
        if says != files_say:
            raise CheckpointError(
                f"its manifest's layout ({layout.describe()}) disagrees with the files it lists ({what}: "
                f"{says} recorded, {files_say} found); the checkpoint is damaged or was edited"
            )
    return layout


def needs_universal(saved: Layout, now: Layout) -> bool:
    """True when `saved` loads only after a universal conversion; CheckpointError when nothing bridges them."""
    if _family(saved.zero_stage) != _family(now.zero_stage):
        raise CheckpointError(
            f"written with ZeRO-{saved.zero_stage} ({saved.describe()}), which this run's ZeRO-{now.zero_stage} "
            f"cannot load; resume it with engine.zero_stage={saved.zero_stage} (on any number of ranks) or set "
            "train.resume=none"
        )
    if saved.zero_stage == 0:
        return False  # whole state in one file: any rank count loads it as it is
    if saved.precision != now.precision:
        raise CheckpointError(
            f"written with engine.precision={saved.precision} under ZeRO-{saved.zero_stage}; its partitioned "
            f"state does not load into {now.precision}; resume it with engine.precision={saved.precision} or set "
            "train.resume=none"
        )
    return saved.partitions != now.partitions


def to_universal(src: Path, dst: Path) -> None:
    """Convert DeepSpeed's checkpoint directory `src` (.../ds/state) into a universal one at `dst`.

    DeepSpeed's converter, run in this process (one worker: no subprocess escapes the weights-only
    loads), with its prints and progress bars kept out of the logs. CheckpointError when it fails.
    """
    from deepspeed.checkpoint import ds_to_universal

    # inject_missing_state: DeepSpeed wants the model to describe tensor/pipeline-parallel slicing (Megatron
    # does); Frontier has none, and the converter's default description (no slicing) is the right one
    args = types.SimpleNamespace(input_folder=str(src), output_folder=str(dst), num_extract_workers=1,
                                 num_merge_workers=1, keep_temp_folder=False, strict=True,
                                 inject_missing_state=True)  # fmt: skip
    chatter = io.StringIO()
    try:
        with weights_only_loads(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            ds_to_universal.main(args)
    except pickle.UnpicklingError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), "unsafe pickle")
        raise CheckpointError(f"refused to convert a file that is not plain tensors/data: {first}") from None
    except DEEPSPEED_ERRORS as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise CheckpointError(f"DeepSpeed's universal conversion failed: {first}") from None


def build(checkpoint: Path, cache: Path) -> None:
    """Write the universal copy of verified `checkpoint` into `cache` (atomically) with its own manifest."""
    with atomic_dir(cache, fsync=False) as tmp:  # a scratch copy: a crash leaves garbage the next run deletes
        to_universal(checkpoint / DS_DIR / DS_TAG, tmp / DS_DIR / DS_TAG)
        manifest.write_manifest(tmp, {"universal_of": checkpoint.name, "source_manifest": manifest.digest(checkpoint)})


@contextlib.contextmanager
def universal_copy(root: Path, checkpoint: Path, info: DistInfo) -> Iterator[Path]:
    """Collective: a verified universal copy of verified `checkpoint` for the block (its ``ds`` directory).

    Rank 0 converts (deleting whatever ``.reshard`` holds: a copy is never reused) and re-hashes the copy
    right before the ranks load it; the copy is removed when the block ends, however it ends.
    """
    cache = root / CACHE_DIR / checkpoint.name
    problem = None
    if info.is_main:
        _clear(root / CACHE_DIR)
        try:
            build(checkpoint, cache)
            changed = manifest.verify(cache)  # what the ranks are about to read is what was written
            if changed is not None:
                problem = (
                    f"its universal copy in {cache} changed before it was loaded ({changed}); rerun to convert again"
                )
        except CheckpointError as exc:
            problem = str(exc)
        except OSError as exc:  # no space, read-only directory
            problem = f"cannot write its universal copy under {root / CACHE_DIR} ({exc.strerror or exc})"
        except BaseException as exc:  # a bug or MemoryError: tell the waiting ranks before raising it here
            broadcast_object(f"rank 0 failed converting it ({exc.__class__.__name__})", info)
            raise
    problem = broadcast_object(problem, info)
    try:
        if problem is not None:
            raise CheckpointError(f"{checkpoint}: {problem}")
        yield cache / DS_DIR
    finally:
        barrier(info)  # every rank has finished reading it
        if info.is_main:
            _clear(root / CACHE_DIR)


def _clear(path: Path) -> None:
    """Remove `path`; a symlink planted there goes, not what it points to (nor is anything written through it)."""
    if path.is_symlink():
        path.unlink()
    shutil.rmtree(path, ignore_errors=True)


def load_universal(engine: Any, ds_dir: Path) -> Any:
    """engine.load_checkpoint of a universal checkpoint (optimizer state included; weights-only reads)."""
    with universal_loads(engine), weights_only_loads(), _quiet("DeepSpeed"):  # "MPU is not provided": none is
        loaded, _ = engine.load_checkpoint(str(ds_dir), tag=DS_TAG, load_optimizer_states=True,
                                           load_lr_scheduler_states=False)  # fmt: skip
        if loaded is not None and int(engine.zero_optimization_stage()) == 3:
            _restore_group_settings(engine, ds_dir / DS_TAG / "zero" / "optimizer_state.pt")
    return loaded


def load_state(engine: Any, path: Path, ds_dir: Path, *, universal: bool) -> str | None:
    """Load DeepSpeed's state of checkpoint `path` from `ds_dir` (its own, or a universal copy: `universal`) with
    weights-only reads; the problem in one line, or None."""
    try:
        if universal:
            loaded = load_universal(engine, ds_dir)
        else:
            with weights_only_loads():
                loaded, _ = engine.load_checkpoint(
                    str(ds_dir), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
                )
    except pickle.UnpicklingError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), "unsafe pickle")
        return f"{path}: refused to load a file that is not plain tensors/data: {first}"
    except DEEPSPEED_ERRORS as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        return f"{path}: DeepSpeed state does not fit this model/config: {first}"
    if loaded is None:
        return f"{path}: DeepSpeed found no model state under {DS_DIR}/{DS_TAG}"
    return None


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Only errors from logger `name` inside the block."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def _restore_group_settings(engine: Any, optimizer_state: Path) -> None:
    """Undo two shortcuts of DeepSpeed 0.19's ZeRO-3 universal loader, which assumes one param group.

    (1) It copies the *first* group's settings into every group, which here would put weight decay on
    the exempt group (norms, biases, embeddings): the converted optimizer state keeps every group's
    settings, restored here by position. (2) It hands every group the *same* ``step`` tensor, which
    AdamW increments in place, once per group and step: each group gets its own copy.
    """
    saved = torch.load(optimizer_state, map_location="cpu", weights_only=True).get("param_groups")
    base = engine.optimizer.optimizer  # the client optimizer, inside DeepSpeed's wrapper
    if not isinstance(saved, list) or len(saved) != len(base.param_groups):
        raise ValueError(
            f"{optimizer_state} holds {len(saved or [])} param groups, this optimizer {len(base.param_groups)}"
        )
    for group, settings in zip(base.param_groups, saved):
        group.update({k: v for k, v in settings.items() if k != "params"})
    for entry in base.state.values():
        if torch.is_tensor(entry.get("step")):
            entry["step"] = entry["step"].clone()
