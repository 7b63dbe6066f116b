"""Checkpoints: atomic, verified, pruned; resume picks the newest one that verifies.

Layout of ``checkpoints_dir`` (shared by all ranks; on several nodes it must be a shared
filesystem, as DeepSpeed's own checkpoints assume)::

    step_00000120/
        manifest.json        sha256 + size of every file below; step, val_loss
        trainer_state.json   step (= data position), counters, lr scale, metric history
        rng/rank_00000.json  Python / NumPy / torch RNG of each rank
        ds/state/...         DeepSpeed's model + optimizer (+ ZeRO partition) files
    .step_00000120.tmp/      a checkpoint being written (ignored, removed by the next save)
    .step_00000100.deleting/ a pruned checkpoint being deleted (ignored)
    logs/                    live logs of the run (frontier.train.monitor)
    archived/<time>/         an earlier run's checkpoints and logs, moved aside by train.resume=none

A save writes into the temporary directory, fsyncs it, then renames it into place, so a crash
leaves either the previous checkpoints or the new complete one. Loading verifies the manifest
first and reads DeepSpeed's files weights-only (frontier.train.engine).
"""

from __future__ import annotations

import logging
import pickle
import re
import shutil
import time
from pathlib import Path
from typing import Any

from frontier.errors import CheckpointError
from frontier.train import manifest
from frontier.train.distributed import DistInfo, barrier, broadcast_object
from frontier.train.engine import weights_only_loads
from frontier.train.state import TrainerState, read_rng, restore_rng, write_rng
from frontier.utils.atomic import atomic_file, fsync_dir, fsync_tree

log = logging.getLogger("frontier.train")

_STEP_DIR = re.compile(r"^step_(\d{8,})$")
DS_DIR, DS_TAG = "ds", "state"
STATE_FILE = "trainer_state.json"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


class CheckpointStore:
    def __init__(
        self,
        root: Path,
        info: DistInfo,
        model: dict[str, Any] | None = None,
        run_params: dict[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.info = info
        self.model = model or {}  # the current model's shape signature; a checkpoint must match it
        # The params that define the run's result: resume=auto continues only a checkpoint made with
        # the same ones, so a changed params.yaml retrains instead of returning the old run's model.
        self.run_params = run_params

    def checkpoints(self) -> list[Path]:
        """Complete-looking checkpoint directories, oldest first (not yet verified)."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
        return [p for _, p in sorted(found)]

    # -- saving -------------------------------------------------------------------------------

    def save(self, engine: Any, state: TrainerState, *, val_loss: float | None) -> Path:
        """Collective: every rank calls it. `val_loss` is the val loss measured at this very step, if any.

        (Not utils.atomic_dir: every rank writes into the same, predictable temporary directory.)
        """
        final = self.root / step_dir_name(state.step)
        tmp = self.root / f".{final.name}.tmp"
        if self.info.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        barrier(self.info)
        engine.save_checkpoint(str(tmp / DS_DIR), tag=DS_TAG, save_latest=False)
        write_rng(tmp, self.info.rank)
        barrier(self.info)
        if self.info.is_main:
            with atomic_file(tmp / STATE_FILE) as f:
                f.write(state.to_json())
            meta = {"step": state.step, "val_loss": val_loss, "world_size": self.info.world_size}
            if self.run_params is not None:
                meta["run_params"] = self.run_params
            manifest.write_manifest(tmp, meta)
            fsync_tree(tmp)
            if final.exists():  # the same step saved again (after a rollback): replace it
                old = self.root / f".{final.name}.old"
                shutil.rmtree(old, ignore_errors=True)
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
            fsync_dir(self.root)
        barrier(self.info)
        return final

    def prune(self, keep_last: int, keep_best: bool) -> list[Path]:
        """Delete all but the newest `keep_last` checkpoints (and the best-val one); rank 0 only."""
        if not self.info.is_main:
            return []
        for leftover in self.root.glob(".step_*.deleting"):  # from a run killed while pruning
            shutil.rmtree(leftover, ignore_errors=True)
        ckpts = self.checkpoints()
        keep = set(ckpts[-keep_last:])
        if keep_best and (best := self.best()) is not None:
            keep.add(best)
        removed = [p for p in ckpts if p not in keep]
        for path in removed:  # renamed first: a crash mid-delete leaves no half checkpoint under a step name
            doomed = path.with_name(f".{path.name}.deleting")
            path.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        return removed

    def best(self) -> Path | None:
        """The checkpoint with the lowest val loss measured at its own step."""
        scored = []
        for path in self.checkpoints():
            try:
                val = manifest.read_manifest(path).get("val_loss")
            except ValueError:
                continue
            if isinstance(val, (int, float)):
                scored.append((val, path))
        return min(scored, key=lambda t: t[0])[1] if scored else None

    # -- finding and loading -----------------------------------------------------------------

    def newest_valid(self) -> Path | None:
        """Newest checkpoint whose manifest verifies (rank 0 checks, every rank gets the answer);
        each one skipped is reported with a warning."""
        chosen: Path | None = None
        if self.info.is_main:
            for path in reversed(self.checkpoints()):
                problem = manifest.verify(path)
                if problem is None:
                    chosen = path
                    break
                log.warning("checkpoint %s skipped: %s; trying an older one", path, problem)
        found = broadcast_object(str(chosen) if chosen else None, self.info)
        return Path(found) if found else None  # type: ignore[arg-type]

    def resolve(self, resume: str) -> Path | None:
        """The checkpoint to start from for train.resume = auto | none | a directory."""
        if resume == "none":
            self._archive_previous_run()
            return None
        if resume == "auto":
            newest = self.newest_valid()
            if newest is not None and self.run_params is not None:
                changed = broadcast_object(self._changed_params(newest) if self.info.is_main else None, self.info)
                if changed:
                    log.warning(
                        "checkpoint %s was made with other params (%s): starting a fresh run",
                        newest,
                        ", ".join(changed),
                    )
                    self._archive_previous_run()
                    return None
            return newest
        path = Path(resume)
        problem = manifest.verify(path) if self.info.is_main else None
        problem = broadcast_object(problem, self.info)
        if problem is not None:
            raise CheckpointError(f"train.resume: {path}: {problem}")
        return path

    def _changed_params(self, path: Path) -> list[str]:
        """Dotted keys whose value differs between `path`'s run and this one (at most 5)."""
        then = manifest.read_manifest(path).get("run_params")
        if not isinstance(then, dict):
            return ["run params not recorded"]
        return _diff_keys(then, self.run_params or {})[:5]

    def _archive_previous_run(self) -> None:
        """Move an earlier run's checkpoints and logs to archived/<time>/ so that the fresh run's saves are
        never pruned in favour of (or resumed from) them; nothing is deleted."""
        if self.info.is_main:
            old = [*self.checkpoints(), *([self.root / "logs"] if (self.root / "logs").exists() else [])]
            if old:
                dest = self.root / "archived" / time.strftime("%Y%m%d-%H%M%S")
                dest.mkdir(parents=True, exist_ok=True)
                for path in old:
                    path.rename(dest / path.name)
                log.warning("train.resume=none: the previous run's checkpoints and logs moved to %s", dest)
        barrier(self.info)

    def load(self, engine: Any, path: Path) -> TrainerState:
        """Restore model, optimizer, loss scaler (DeepSpeed), RNG and trainer state from verified `path`."""
        try:
            state = TrainerState.from_json((path / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path / STATE_FILE}: unreadable trainer state ({exc})") from None
        changed = [k for k in self.model if k in state.model and state.model[k] != self.model[k]]
        if changed:
            k = changed[0]
            raise CheckpointError(
                f"{path}: written for a different model ({k}={state.model[k]!r} there, {self.model[k]!r} now); "
                f"set train.resume=none or use another checkpoints directory than {self.root}"
            )
        if state.world_size != self.info.world_size and engine.zero_optimization_stage() > 0:
            raise CheckpointError(
                f"{path}: written by {state.world_size} ranks with ZeRO-{engine.zero_optimization_stage()}; its "
                f"optimizer partitions need the same number of ranks (got {self.info.world_size})"
            )
        try:
            with weights_only_loads():
                loaded, _ = engine.load_checkpoint(
                    str(path / DS_DIR), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
                )
        except pickle.UnpicklingError as exc:
            first = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), "unsafe pickle")
            raise CheckpointError(f"{path}: refused to load a file that is not plain tensors/data: {first}") from None
        except (RuntimeError, KeyError, ValueError, OSError) as exc:
            first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
            raise CheckpointError(f"{path}: DeepSpeed state does not fit this model/config: {first}") from None
        if loaded is None:
            raise CheckpointError(f"{path}: DeepSpeed found no model state under {DS_DIR}/{DS_TAG}")
        rng = read_rng(path, self.info.rank)
        if rng is None:
            log.warning("%s: no RNG state for rank %d; random streams restart from the seed", path, self.info.rank)
        else:
            restore_rng(rng)
        return state


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two nested dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if a == b else [prefix or "params"]
