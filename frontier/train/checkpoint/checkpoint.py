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
    logs/                    live logs of the run (frontier.train.monitor.monitor)
    archived/<time>/         an earlier run's checkpoints and logs, moved aside by resume: none, by
                             resume: auto when all of them are another run's (params changed), or
                             another run's checkpoint at a step this run saves
    .lock                    held (flock) by the run using this directory; names its host and pid

A save writes into the temporary directory, fsyncs it, then renames it into place, so a crash
leaves either the previous checkpoints or the new complete one. Loading verifies the manifest
first and reads DeepSpeed's files weights-only (frontier.train.engine.engine). The manifest records the
checkpoint's layout (ranks, ZeRO stage, partitions, precision); another rank count loads a ZeRO-0
checkpoint as it is and a ZeRO-1/2/3 one through a universal copy (frontier.train.checkpoint.reshard).

Trust rules: a save happens only when every rank's weights and optimizer state are finite (a NaN
streak is never persisted); each manifest names the run (``run_id``) that wrote it; pruning deletes
only this run's checkpoints and only while a newer one of this run verifies; a checkpoint that
lacks its trainer state or run params (a stray or foreign directory) is never resumed, pruned or
rolled back onto.

Hostile world (frontier.train.checkpoint.guard): no write follows a link planted in the directory or
leaves it. Run identity before step: train.resume=auto picks the newest checkpoint made with this
run's params (``run_params``, recorded in every manifest); another run's checkpoint, however new, is
ignored with a warning, never resumed, never deleted (one named like a step this run saves is moved to
archived/ first) and never the cause of this run's own being archived. What a
checkpoint holds is validated before any of it reaches the live run (trainer state field by field,
RNG states, optimizer state shapes and finiteness); one that fails is skipped with a warning for the
previous verified one, and a run with checkpoints but none usable stops with one CheckpointError line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from frontier.errors import CheckpointError
from frontier.train.checkpoint import manifest, reshard
from frontier.train.checkpoint.engine_io import local_state_finite
from frontier.train.checkpoint.guard import (
    drop_planted_link,
    hold_lock,
    identity,
    loaded_state_problem,
    real_dir,
    scrub_tree,
)
from frontier.train.checkpoint.reshard import DS_DIR, DS_TAG
from frontier.train.checkpoint.state import TrainerState, read_rng, restore_rng, write_rng
from frontier.train.launch.distributed import DistInfo, all_reduce_sum, barrier, broadcast_object
from frontier.utils.atomic import atomic_file, fsync_dir, fsync_tree, remove_entry

log = logging.getLogger("frontier.train")

_STEP_DIR = re.compile(r"^step_(\d{8,})$")
STATE_FILE = "trainer_state.json"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


class UnusableCheckpoint(CheckpointError):
    """A verified checkpoint whose content does not hold up (raised alike on every rank): auto resume
    skips it for an older one."""


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
        # As JSON reads it back from a manifest (tuples are lists there), so that equal params compare equal.
        self.run_params = json.loads(json.dumps(run_params)) if run_params is not None else None
        self._trusted: set[Path] = set()  # written or verified by this process: for pruning, not for loading
        self._unusable: set[Path] = set()  # verified, but their content failed validation: never offered again
        self._foreign: set[Path] = set()  # other runs' checkpoints already reported
        self._last_problem = ""  # why the last checkpoint newest_valid skipped did not verify
        self._lock_fd: int | None = None

    def checkpoints(self) -> list[Path]:
        """Complete-looking checkpoint directories, oldest first (not yet verified)."""
        if not self.root.is_dir():
            return []
        found = [
            (int(m.group(1)), p)
            for p in self.root.iterdir()
            if (m := _STEP_DIR.match(p.name)) and p.is_dir() and not p.is_symlink()  # a link leads elsewhere
        ]
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

    def _own(self, meta: dict[str, Any]) -> bool:
        """Whether a checkpoint's manifest names this run's params (any complete one, when they are not known)."""
        return self.run_params is None or meta.get("run_params") == self.run_params

    def _scan(self) -> list[tuple[Path, dict[str, Any] | None]]:
        """Each complete-looking checkpoint with its manifest (None: not a complete Frontier checkpoint),
        newest first: one read of each manifest, for all the decisions taken on it at once."""
        return [(p, self._meta(p)) for p in reversed(self.checkpoints())]

    def _of_run(self, run_id: str) -> list[tuple[Path, dict[str, Any]]]:
        """This run's checkpoints (by the run id in their manifest) with their manifests, oldest first; not verified."""
        return [(p, m) for p, m in reversed(self._scan()) if m is not None and m.get("run_id") == run_id]

    def lock(self) -> None:
        """Hold ``root/.lock`` for this process's lifetime; another run on this directory stops with one line."""
        if self.info.is_main and self._lock_fd is None:
            self._lock_fd = hold_lock(self.root)

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
        made: tuple[int, int] | None = None
        if self.info.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            remove_entry(tmp, "a save's temporary directory")  # a planted link: else every rerun fails at this step
            tmp.mkdir()  # exclusive, never through a link: a new directory inside the root
            made = identity(tmp)
        barrier(self.info)
        engine.save_checkpoint(str(tmp / DS_DIR), tag=DS_TAG, save_latest=False)
        write_rng(tmp, self.info.rank)
        barrier(self.info)
        if self.info.is_main:
            if identity(tmp) != made:  # swapped for a link or another directory while the ranks wrote
                raise CheckpointError(f"{tmp} was replaced while the checkpoint was written into it; expected the "
                                      f"directory this run created inside {self.root}")  # fmt: skip
            with atomic_file(tmp / STATE_FILE) as f:
                f.write(state.to_json())
            meta = {"step": state.step, "val_loss": val_loss, "world_size": self.info.world_size,
                    "run_id": state.run_id, "finite": True,
                    "layout": reshard.engine_layout(engine, self.info.world_size).to_json()}  # fmt: skip
            if self.run_params is not None:
                meta["run_params"] = self.run_params
            manifest.write_manifest(tmp, meta)
            fsync_tree(tmp)
            old = self._make_way(final, state.run_id)
            tmp.rename(final)
            if old is not None:
                remove_entry(old)
            fsync_dir(self.root)
            self._trusted.add(final)
        barrier(self.info)
        return final

    def _make_way(self, final: Path, run_id: str) -> Path | None:
        """Free the name `final` for this run's save (rank 0). A planted link there is removed; another run's
        checkpoint is archived, never deleted; this run's own (the step saved again after a rollback) or one
        without a readable manifest is renamed aside and returned, to be removed once the new one is in place."""
        if final.is_symlink():  # renaming onto a link would fail
            remove_entry(final, "a checkpoint directory of this run")
        if not os.path.lexists(final):
            return None
        try:
            meta: dict[str, Any] | None = manifest.read_manifest(final)
        except ValueError:
            meta = None  # no readable manifest: an interrupted or stray directory, replaced
        if meta is not None and not (meta.get("run_id") == run_id and self._own(meta)):
            dest = self._archive([final])
            log.warning("%s is another run's checkpoint (run id %r): moved it to %s instead of replacing it with "
                        "this run's", final, meta.get("run_id"), dest)  # fmt: skip
            return None
        old = self.root / f".{final.name}.old"
        remove_entry(old)
        final.rename(old)
        return old

    def prune(self, keep_last: int, keep_best: bool, run_id: str) -> list[Path]:
        """Delete this run's checkpoints but its newest `keep_last` valid ones (and its best); rank 0 only.

        Nothing is deleted while none of this run's checkpoints verifies, and no other run's (or
        stray) directory is ever touched, whatever its step number.
        """
        if not self.info.is_main:
            return []
        for leftover in self.root.glob(".step_*.deleting"):  # from a run killed while pruning
            remove_entry(leftover)
        ours = self._of_run(run_id)
        keep: list[Path] = []
        for path, _ in reversed(ours):
            if len(keep) == keep_last:
                break
            if self._valid(path):
                keep.append(path)
        if not keep:
            return []
        if keep_best and (best := self.best(run_id, ours)) is not None:
            keep.append(best)
        removed = [p for p, _ in ours if p not in keep]
        for path in removed:  # renamed first: a crash mid-delete leaves no half checkpoint under a step name
            doomed = path.with_name(f".{path.name}.deleting")
            remove_entry(doomed)  # a planted link of that name would make the rename fail
            path.rename(doomed)
            remove_entry(doomed)
            self._trusted.discard(path)
        return removed

    def best(self, run_id: str, ours: list[tuple[Path, dict[str, Any]]] | None = None) -> Path | None:
        """This run's valid checkpoint with the lowest val loss measured at its own step (`ours`: _of_run's)."""
        scored = []
        for path, meta in self._of_run(run_id) if ours is None else ours:
            val = meta.get("val_loss")
            if isinstance(val, (int, float)) and val == val and self._valid(path):
                scored.append((val, path))
        return min(scored, key=lambda t: t[0])[1] if scored else None

    # -- finding and loading -----------------------------------------------------------------

    def newest_valid(self, run_id: str | None = None, scan: list[tuple[Path, Any]] | None = None) -> Path | None:
        """Newest complete checkpoint that verifies, of run `run_id` when given, else of this run's params
        (rank 0 checks, from `scan` when given, every rank gets the answer); each one skipped is reported
        with a warning."""
        chosen: Path | None = None
        if self.info.is_main:
            for path, meta in self._scan() if scan is None else scan:
                if path in self._unusable:  # verified, but its content failed validation on load
                    continue
                if meta is None:
                    log.warning("checkpoint %s skipped: not a complete Frontier checkpoint (no trainer state or run "
                                "params in its manifest)", path)  # fmt: skip
                    continue
                if run_id is not None and meta.get("run_id") != run_id:
                    continue
                if run_id is None and not self._own(meta):
                    self._report_foreign(path, meta)
                    continue
                problem = manifest.verify(path)  # always re-hashed here: this one is about to be loaded
                if problem is None:
                    chosen = path
                    break
                log.warning("checkpoint %s skipped: %s; trying an older one", path, problem)
                self._last_problem = f"{path.name}: {problem}"
        found = broadcast_object(str(chosen) if chosen else None, self.info)
        return Path(found) if found else None  # type: ignore[arg-type]

    def _report_foreign(self, path: Path, meta: dict[str, Any]) -> None:
        if path not in self._foreign:  # one line per checkpoint, however often the directory is searched
            self._foreign.add(path)
            log.warning("checkpoint %s ignored: made by another run (params differ: %s); it is never resumed, and "
                        "never displaces this run's own", path, self._changed(meta))  # fmt: skip

    def _changed(self, meta: dict[str, Any]) -> str:
        """The params (dotted keys, the first five) in which a complete checkpoint's run differs from this one."""
        return ", ".join(_diff_keys(meta["run_params"], self.run_params)[:5])

    def _resolve(self, resume: str) -> tuple[Path | None, list[tuple[Path, Any]]]:
        """The checkpoint to start from for train.resume = auto | none | a directory (locks the directory),
        and (rank 0, under auto) the one scan of the directory's manifests it was chosen from.

        auto: the newest verified checkpoint of this run's params; a directory whose complete checkpoints are
        all other runs' (params changed) has them archived, with one line in auto's own words (a user who never
        set resume: none, say under `dvc exp run -S optimizer.lr=...`, must not read that they did).
        """
        self.lock()
        self._guard_layout()
        if resume == "none":
            self._archive_previous_run(f"resume: none: the checkpoints and logs in {self.root} are not resumed")
            return None, []
        if resume == "auto":
            scan = self._scan() if self.info.is_main else []
            foreign = broadcast_object(self._only_foreign(scan) if self.info.is_main else None, self.info)
            if foreign:  # nothing of this run's params is here: the params changed since those were made
                newest, changed = foreign
                self._archive_previous_run(f"resume: auto: the checkpoints and logs in {self.root} belong to another "
                                           f"run (its params differ: {changed}; newest {newest})")  # fmt: skip
                return None, []
            return self.newest_valid(scan=scan), scan
        path = Path(os.path.realpath(resume))  # the user's own link to a checkpoint is theirs to follow
        problem = manifest.verify(path) if self.info.is_main else None
        problem = broadcast_object(problem, self.info)
        if problem is not None:
            raise CheckpointError(f"train.resume: {path}: {problem}")
        return path, []

    def _only_foreign(self, scan: list[tuple[Path, Any]]) -> tuple[str, str] | None:
        """(newest, its changed keys) when every complete checkpoint in `scan` is another run's; else None."""
        complete = [(p, m) for p, m in scan if m is not None]
        if not complete or any(self._own(m) for _, m in complete):
            return None  # this run's own are here, only none verifies: never archived for another run's
        return str(complete[0][0]), self._changed(complete[0][1])

    def begin(self, resume: str, engine: Any, fresh: TrainerState) -> tuple[TrainerState, Path | None]:
        """Lock the directory, resolve train.resume and load it; a run started afresh gets a new run id.

        Under auto, a checkpoint whose content fails validation is skipped for the previous verified one
        (one warning each); when this run has checkpoints but none loads, one CheckpointError.
        """
        start, scan = self._resolve(resume)
        skipped: list[str] = []
        while start is not None:
            try:
                state = self.load(engine, start)
                break
            except UnusableCheckpoint as exc:
                if resume != "auto":
                    raise
                log.warning("checkpoint %s skipped: %s; trying an older one", start, exc)
                skipped.append(str(exc))
                start = self.newest_valid(scan=scan)
        else:
            own = sum(1 for _, m in scan if m is not None and self._own(m))  # verified or not
            own = broadcast_object(own, self.info) if resume == "auto" else 0
            if skipped or own:  # damaged, all of them: a fresh start would silently throw their steps away
                last = skipped[-1] if skipped else self._last_problem
                raise CheckpointError(
                    f"{self.root}: none of this run's {max(own, len(skipped))} checkpoint(s) can be resumed (the "
                    f"last problem: {last}); set train.resume=none to start over (they are archived, not deleted)"
                )
            state = fresh
        if not state.run_id:  # a fresh run, or a checkpoint from before run ids
            state.run_id = str(broadcast_object(uuid.uuid4().hex if self.info.is_main else None, self.info))
        return state, start

    def _guard_layout(self) -> None:
        """Rank 0, with the lock held: logs/ is a real directory holding no link (frontier.train.checkpoint.guard;
        archived/ is checked where it is used)."""
        if self.info.is_main:
            drop_planted_link(self.root / "logs", f"logs/, a directory inside {self.root}")
            scrub_tree(self.root / "logs")
            for leftover in self.root.glob(".step_*.tmp"):  # from a killed save; links are never followed
                drop_planted_link(leftover, "a save's temporary directory")
        barrier(self.info)

    def _archive_previous_run(self, why: str) -> None:
        """Move an earlier run's checkpoints and logs to archived/<time>/ so that the fresh run's saves are
        never pruned in favour of (or resumed from) them; nothing is deleted. Rank 0 says `why` with where
        they went, once per run, when there was anything to move."""
        if self.info.is_main:
            old = [*self.checkpoints(), *([self.root / "logs"] if (self.root / "logs").exists() else [])]
            if old:
                log.warning("%s; archived as %s, starting fresh", why, self._archive(old))
        barrier(self.info)

    def _archive(self, paths: list[Path]) -> Path:
        """Move `paths` into a new directory archived/<time>/ (rank 0), returned; nothing is deleted."""
        base, n = real_dir(self.root / "archived", self.root, "archived/"), 1
        stamp = time.strftime("%Y%m%d-%H%M%S")
        while True:
            dest = base / (stamp if n == 1 else f"{stamp}-{n}")
            try:
                dest.mkdir()  # exclusive: a new directory inside archived/, never through a link
                break
            except FileExistsError:
                n += 1
        for path in paths:
            path.rename(dest / path.name)
        return dest

    def load(self, engine: Any, path: Path) -> TrainerState:
        """Restore model, optimizer, loss scaler (DeepSpeed), RNG and trainer state from verified `path`.

        Trainer state and RNG are validated before anything is applied; DeepSpeed's state is checked right
        after its load (shapes, finiteness), before the run takes a step. UnusableCheckpoint, on every rank,
        when any of it fails (a different model: a plain CheckpointError).
        """
        problem, state, meta = None, None, {}
        try:
            meta = manifest.read_manifest(path)
            state = TrainerState.from_json((path / STATE_FILE).read_text(encoding="utf-8"))
            problem = _against_manifest(state, path, meta)
        except (OSError, ValueError, TypeError) as exc:
            problem = f"{path / STATE_FILE}: unusable trainer state ({exc})"
        rng = None
        if problem is None:
            try:
                rng = read_rng(path, self.info.rank)
            except (OSError, ValueError) as exc:
                problem = f"{path}: unusable RNG state of rank {self.info.rank} ({exc})"
        self._agree(path, problem)
        assert state is not None
        changed = [k for k in self.model if k in state.model and state.model[k] != self.model[k]]
        if changed:
            k = changed[0]
            raise CheckpointError(
                f"{path}: written for a different model ({k}={state.model[k]!r} there, {self.model[k]!r} now); "
                f"set train.resume=none or use another checkpoints directory than {self.root}"
            )
        universal = self._plan(engine, path, meta)
        if universal:
            log.info("%s: converting its ZeRO partitions to a universal checkpoint for %d rank(s)", path,
                     self.info.world_size)  # fmt: skip
            with reshard.universal_copy(self.root, path, self.info) as ds_dir:
                problem = reshard.load_state(engine, path, ds_dir, universal=True)
        else:
            problem = reshard.load_state(engine, path, path / DS_DIR, universal=False)
        self._agree(path, problem or loaded_state_problem(engine, path))
        if rng is None:  # a rank the checkpoint's run did not have (resumed on more ranks)
            log.warning("%s: no RNG state for rank %d (written by %d rank(s)); its random streams (dropout) start "
                        "from the seed", path, self.info.rank, state.world_size)  # fmt: skip
        else:
            restore_rng(rng)  # validated above
        return state

    def _agree(self, path: Path, problem: str | None) -> None:
        """UnusableCheckpoint on every rank when any rank found a problem (every rank stops or skips, not
        only the one that saw it); the checkpoint is then never offered again by this store."""
        (failed,) = all_reduce_sum([1.0 if problem else 0.0], self.info)
        if failed:
            self._unusable.add(path)
            raise UnusableCheckpoint(problem or f"{path}: unusable on {int(failed)} other rank(s); see their logs")

    def _plan(self, engine: Any, path: Path, meta: dict[str, Any]) -> bool:
        """Whether `path` loads through a universal conversion (rank 0 decides from its manifest `meta`, every
        rank gets the answer); CheckpointError, on every rank, when its layout cannot be loaded here."""
        problem, universal = None, False
        if self.info.is_main:
            now = reshard.engine_layout(engine, self.info.world_size)
            try:
                saved = reshard.saved_layout(meta, now)
                universal = reshard.needs_universal(saved, now)
            except (CheckpointError, ValueError) as exc:
                problem = f"{path}: {exc}"
        problem, universal = broadcast_object((problem, universal), self.info)  # type: ignore[misc]
        if problem is not None:
            raise CheckpointError(problem)
        return bool(universal)


def _against_manifest(state: TrainerState, path: Path, meta: dict[str, Any]) -> str | None:
    """A trainer state that contradicts its own checkpoint's manifest or name (step, run): a problem line, else None."""
    named = int(m.group(1)) if (m := _STEP_DIR.match(path.name)) else state.step  # train.resume names any directory
    if meta.get("step") != state.step or named != state.step:
        return f"{path / STATE_FILE}: step={state.step}, but the checkpoint is of step {meta.get('step')} ({path.name})"
    if meta.get("run_id", state.run_id) != state.run_id:
        return f"{path / STATE_FILE}: run_id={state.run_id!r}, but the manifest names {meta.get('run_id')!r}"
    return None


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two nested dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if a == b else [prefix or "params"]
