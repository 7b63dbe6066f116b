"""Checkpoints: atomic, verified, pruned; resume picks the newest one that verifies.

Layout of ``checkpoints_dir`` (shared by all ranks; on several nodes it must be a shared
filesystem, as DeepSpeed's own checkpoints assume)::

    step_00000120/
        manifest.json        sha256 + size of every file below; step, val_loss, run id, layout
        trainer_state.json   step (= data position), counters, lr scale, metric history
        rng/rank_00000.json  Python / NumPy / torch RNG of each rank
        ds/state/...         DeepSpeed's model + optimizer (+ ZeRO partition) files
    .step_00000120.tmp/      a checkpoint being written (ignored, removed by the next save)
    .reshard/step_.../       a ZeRO checkpoint converted for another rank count while it is loaded (reshard)
    .step_00000100.deleting/ a pruned checkpoint being deleted (ignored)
    logs/                    live logs of the run (frontier.train.monitor)
    archived/<time>/         an earlier run's checkpoints and logs, moved aside by train.resume=none
    .lock                    held (flock) by the run using this directory; names its host and pid

A save writes into the temporary directory, fsyncs it, then renames it into place, so a crash
leaves either the previous checkpoints or the new complete one. Loading verifies the manifest
first and reads DeepSpeed's files weights-only (frontier.train.engine). The manifest records the
checkpoint's layout (ranks, ZeRO stage, partitions, precision); another rank count loads a ZeRO-0
checkpoint as it is and a ZeRO-1/2/3 one through a universal copy (frontier.train.reshard).

Trust rules: a save happens only when every rank's weights and optimizer state are finite (a NaN
streak is never persisted); each manifest names the run (``run_id``) that wrote it; pruning deletes
only this run's checkpoints and only while a newer one of this run verifies; a checkpoint that
lacks its trainer state or run params (a stray or foreign directory) is never resumed, pruned or
rolled back onto.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pickle
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from frontier.errors import CheckpointError
from frontier.train import manifest, reshard
from frontier.train.distributed import DistInfo, all_reduce_sum, barrier, broadcast_object
from frontier.train.engine import local_state_finite, weights_only_loads
from frontier.train.reshard import DS_DIR, DS_TAG
from frontier.train.state import TrainerState, read_rng, restore_rng, write_rng
from frontier.utils.atomic import atomic_file, fsync_dir, fsync_tree

log = logging.getLogger("frontier.train")

_STEP_DIR = re.compile(r"^step_(\d{8,})$")
STATE_FILE = "trainer_state.json"
_HELD: dict[str, int] = {}  # lock file -> fd: the checkpoint directories this process holds


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
        self._trusted: set[Path] = set()  # written or verified by this process: for pruning, not for loading
        self._lock_fd: int | None = None

    def checkpoints(self) -> list[Path]:
        """Complete-looking checkpoint directories, oldest first (not yet verified)."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
        return [p for _, p in sorted(found)]

    def _meta(self, path: Path) -> dict[str, Any] | None:
        """The manifest of a checkpoint of *a run of ours* (trainer state and run params listed), else None."""
        try:
            meta = manifest.read_manifest(path)
        except ValueError:
            return None
        complete = STATE_FILE in meta["files"] and any(f.startswith(f"{DS_DIR}/") for f in meta["files"])
        return meta if complete and isinstance(meta.get("run_params"), dict) else None

    def _valid(self, path: Path) -> bool:
        if path in self._trusted:
            return True
        problem = manifest.verify(path)
        if problem is None:
            self._trusted.add(path)
        return problem is None

    def of_run(self, run_id: str) -> list[Path]:
        """This run's checkpoints (by the run id in their manifest), oldest first; not yet verified."""
        return [p for p in self.checkpoints() if (m := self._meta(p)) is not None and m.get("run_id") == run_id]

    def lock(self) -> None:
        """Hold ``root/.lock`` for this process's lifetime; another run on this directory stops with one line."""
        if not self.info.is_main or self._lock_fd is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        key = str(path.resolve())
        if key in _HELD:  # an earlier stage of this same process (stages run one after another)
            with contextlib.suppress(OSError):
                os.close(_HELD.pop(key))
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise CheckpointError(
                f"{self.root} is in use by {holder} (lock {path}); wait for that run to end or give this one "
                "another checkpoints directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0
        )
        self._lock_fd = _HELD[key] = fd  # released by the kernel when the process ends, however it ends

    # -- saving -------------------------------------------------------------------------------

    def save(self, engine: Any, state: TrainerState, *, val_loss: float | None) -> Path | None:
        """Collective: every rank calls it. `val_loss` is the val loss measured at this very step, if any.

        Returns None, writing nothing, when any rank's weights or optimizer state are not finite.
        (Not utils.atomic_dir: every rank writes into the same, predictable temporary directory.)
        """
        (bad_ranks,) = all_reduce_sum([0.0 if local_state_finite(engine) else 1.0], self.info)
        if bad_ranks:
            log.warning("step %d: weights or optimizer state are not finite on %d rank(s); checkpoint not saved",
                        state.step, int(bad_ranks))  # fmt: skip
            return None
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
            meta = {"step": state.step, "val_loss": val_loss, "world_size": self.info.world_size,
                    "run_id": state.run_id, "finite": True,
                    "layout": reshard.engine_layout(engine, self.info.world_size).to_json()}  # fmt: skip
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
            self._trusted.add(final)
        barrier(self.info)
        return final

    def prune(self, keep_last: int, keep_best: bool, run_id: str) -> list[Path]:
        """Delete this run's checkpoints but its newest `keep_last` valid ones (and its best); rank 0 only.

        Nothing is deleted while none of this run's checkpoints verifies, and no other run's (or
        stray) directory is ever touched, whatever its step number.
        """
        if not self.info.is_main:
            return []
        for leftover in self.root.glob(".step_*.deleting"):  # from a run killed while pruning
            shutil.rmtree(leftover, ignore_errors=True)
        ours = self.of_run(run_id)
        keep: list[Path] = []
        for path in reversed(ours):
            if len(keep) == keep_last:
                break
            if self._valid(path):
                keep.append(path)
        if not keep:
            return []
        if keep_best and (best := self.best(run_id)) is not None:
            keep.append(best)
        removed = [p for p in ours if p not in keep]
        for path in removed:  # renamed first: a crash mid-delete leaves no half checkpoint under a step name
            doomed = path.with_name(f".{path.name}.deleting")
            path.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            self._trusted.discard(path)
        return removed

    def best(self, run_id: str) -> Path | None:
        """This run's valid checkpoint with the lowest val loss measured at its own step."""
        scored = []
        for path in self.of_run(run_id):
            val = (self._meta(path) or {}).get("val_loss")
            if isinstance(val, (int, float)) and val == val and self._valid(path):
                scored.append((val, path))
        return min(scored, key=lambda t: t[0])[1] if scored else None

    # -- finding and loading -----------------------------------------------------------------

    def newest_valid(self, run_id: str | None = None) -> Path | None:
        """Newest complete checkpoint that verifies (of run `run_id` when given; rank 0 checks, every
        rank gets the answer); each one skipped is reported with a warning."""
        chosen: Path | None = None
        if self.info.is_main:
            for path in reversed(self.checkpoints()):
                meta = self._meta(path)
                if meta is None:
                    log.warning("checkpoint %s skipped: not a complete Frontier checkpoint (no trainer state or run "
                                "params in its manifest)", path)  # fmt: skip
                    continue
                if run_id is not None and meta.get("run_id") != run_id:
                    continue
                problem = manifest.verify(path)  # always re-hashed here: this one is about to be loaded
                if problem is None:
                    chosen = path
                    break
                log.warning("checkpoint %s skipped: %s; trying an older one", path, problem)
        found = broadcast_object(str(chosen) if chosen else None, self.info)
        return Path(found) if found else None  # type: ignore[arg-type]

    def resolve(self, resume: str) -> Path | None:
        """The checkpoint to start from for train.resume = auto | none | a directory (locks the directory)."""
        self.lock()
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

    def begin(self, resume: str, engine: Any, fresh: TrainerState) -> tuple[TrainerState, Path | None]:
        """Lock the directory, resolve train.resume and load it; a run started afresh gets a new run id."""
        start = self.resolve(resume)
        state = self.load(engine, start) if start is not None else fresh
        if not state.run_id:  # a fresh run, or a checkpoint from before run ids
            state.run_id = str(broadcast_object(uuid.uuid4().hex if self.info.is_main else None, self.info))
        return state, start

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
        universal = self._plan(engine, path)
        if universal:
            log.info("%s: converting its ZeRO partitions to a universal checkpoint for %d rank(s)", path,
                     self.info.world_size)  # fmt: skip
            with reshard.universal_copy(self.root, path, self.info) as ds_dir:
                problem = self._load_ds(engine, path, ds_dir, universal=True)
        else:
            problem = self._load_ds(engine, path, path / DS_DIR, universal=False)
        (failed,) = all_reduce_sum([1.0 if problem else 0.0], self.info)  # every rank stops, not only the failed one
        if failed:
            raise CheckpointError(problem or f"{path}: loading failed on {int(failed)} other rank(s); see their logs")
        rng = read_rng(path, self.info.rank)
        if rng is None:  # a rank the checkpoint's run did not have (resumed on more ranks), or a damaged one
            log.warning("%s: no RNG state for rank %d (written by %d rank(s)); its random streams (dropout) start "
                        "from the seed", path, self.info.rank, state.world_size)  # fmt: skip
        else:
            restore_rng(rng)
        return state

    def _plan(self, engine: Any, path: Path) -> bool:
        """Whether `path` loads through a universal conversion (rank 0 decides from the manifest, every rank
        gets the answer); CheckpointError, on every rank, when its layout cannot be loaded here."""
        problem, universal = None, False
        if self.info.is_main:
            now = reshard.engine_layout(engine, self.info.world_size)
            try:
                saved = reshard.saved_layout(manifest.read_manifest(path), now)
                universal = reshard.needs_universal(saved, now)
            except (CheckpointError, ValueError) as exc:
                problem = f"{path}: {exc}"
        problem, universal = broadcast_object((problem, universal), self.info)  # type: ignore[misc]
        if problem is not None:
            raise CheckpointError(problem)
        return bool(universal)

    def _load_ds(self, engine: Any, path: Path, ds_dir: Path, *, universal: bool) -> str | None:
        """Load DeepSpeed's state from `ds_dir` (weights-only reads); the problem in one line, or None."""
        try:
            if universal:
                loaded = reshard.load_universal(engine, ds_dir)
            else:
                with weights_only_loads():
                    loaded, _ = engine.load_checkpoint(
                        str(ds_dir), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
                    )
        except pickle.UnpicklingError as exc:
            first = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), "unsafe pickle")
            return f"{path}: refused to load a file that is not plain tensors/data: {first}"
        except reshard.DEEPSPEED_ERRORS as exc:
            first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
            return f"{path}: DeepSpeed state does not fit this model/config: {first}"
        if loaded is None:
            return f"{path}: DeepSpeed found no model state under {DS_DIR}/{DS_TAG}"
        return None


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two nested dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if a == b else [prefix or "params"]
