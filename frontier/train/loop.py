"""The training loop: steps, evaluation, checkpoints, stop signals, NaN rollback, early stopping.

Everything that must agree across ranks (stop by signal, time limits, time-based checkpoints)
is decided by one small all-reduce at the top of each step, so ranks never diverge in which
collectives they run (on one rank nothing is reduced).

Host syncs. A step leaves its figures on the device (frontier.train.engine.step.StepLog); the loop
reads all of them at once at a sync point: a log step, an eval or checkpoint step, the last
step, or before a save for a signal or a time limit. There the NaN guard, the alerts, the
progress bar, the token counts and the log rows (a non-finite step's row too) go through the
steps one by one, as they would have after each step, so what is counted, alerted and written
is unchanged; it is only written later, and a NaN streak is rolled back at the next sync point
rather than at once (the skipped steps in between changed nothing; only their compute is lost).
The next step's batches are built by a background thread (frontier.train.batches.prefetch).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from frontier.config.checkpoint import CheckpointConfig
from frontier.config.engine import EarlyStoppingConfig, NanGuardConfig
from frontier.config.monitor import ProfileConfig
from frontier.errors import TrainingError
from frontier.train.batches.data import Batch, TrainBatches
from frontier.train.batches.prefetch import Prefetcher
from frontier.train.checkpoint.checkpoint import CheckpointStore
from frontier.train.checkpoint.state import TrainerState
from frontier.train.engine.engine import loss_scale
from frontier.train.engine.schedule import LRSchedule
from frontier.train.engine.stability import EarlyStopping, NanGuard, StepGate
from frontier.train.engine.step import StepLog, evaluate, run_step
from frontier.train.launch.distributed import DistInfo, peer_errors
from frontier.train.launch.signals import StopRequest, TrainingInterrupted
from frontier.train.monitor.metrics import mfu
from frontier.train.monitor.monitor import RunMonitor

log = logging.getLogger("frontier.train")


@dataclass(frozen=True)
class Budget:
    """How far a run goes and what it does on the way: its stage's own section (train: or finetune:), as the
    loop reads it. Each stage makes its one (frontier.train.run, frontier.finetune.run); the engine's
    settings are the shared engine: section."""

    stage: str  # "train" | "finetune": names the run in its messages
    max_steps: int
    log_every: int
    eval_every: int  # 0: no evaluation
    checkpoint: CheckpointConfig
    resume: str  # auto | none | a checkpoint directory
    max_minutes: float = 0.0  # 0: no wall-clock limit
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)  # patience 0: off
    profile: ProfileConfig = field(default_factory=ProfileConfig)  # num_steps 0: off


@dataclass
class LoopParts:
    """What the loop drives; built by frontier.train.wiring (for the train and finetune stages)."""

    budget: Budget
    nan_guard: NanGuardConfig
    info: DistInfo
    engine: Any
    gate: StepGate
    store: CheckpointStore
    batches: TrainBatches
    val: list[Batch]
    schedule: LRSchedule
    monitor: RunMonitor
    seq_len: int
    flops_per_token: float
    peak_flops: float | None


class Trainer:
    def __init__(self, parts: LoopParts, state: TrainerState, saved_step: int | None = None) -> None:
        self.p = parts
        self.budget = parts.budget
        self.state = state
        self.guard = NanGuard(parts.nan_guard)
        self.early = EarlyStopping(parts.budget.early_stopping)
        self.stop_reason = "max_steps"
        self._saved_step = saved_step  # the step whose checkpoint exists already (a resume point)
        self._window_tokens = 0
        self._window_seconds = 0.0
        self.steplog = StepLog(parts.info.device)
        self.prefetch = Prefetcher(parts.batches.step, parts.info.device, end=parts.budget.max_steps)
        self._lrs: list[float] = []  # the learning rate of each step in the step log
        self._flags_group: Any = None  # the gloo group of _agree, made at the first multi-rank step

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> TrainerState:
        try:
            with StopRequest() as stop, peer_errors(self.p.info, "a step's collective"), self.prefetch:  # DeepSpeed's
                self._loop(stop)
            self.settle()
        finally:
            self.prefetch.close()
            self.p.monitor.close()
        if self._saved_step != self.state.step:
            self.save()
        return self.state

    def _loop(self, stop: StopRequest) -> None:
        start = last_ckpt = time.monotonic()
        every_minutes = self.budget.checkpoint.every_minutes
        while self.state.step < self.budget.max_steps:
            now = time.monotonic()
            out_of_time = self.budget.max_minutes > 0 and now - start >= 60 * self.budget.max_minutes
            ckpt_due = every_minutes > 0 and now - last_ckpt >= 60 * every_minutes
            signalled, out_of_time, ckpt_due = self._agree([stop.requested, out_of_time, ckpt_due])
            if (signalled or out_of_time or ckpt_due) and self.settle():
                continue  # rolled back: decide again from the restored step
            if signalled:
                self.save()
                raise TrainingInterrupted(
                    f"{self.budget.stage}: stopped by {stop.name or 'a signal on another rank'} at step "
                    f"{self.state.step}; checkpoint saved in {self.p.store.root}. Run the same command again to resume"
                )
            if out_of_time:
                self.stop_reason = "max_minutes"
                return
            if ckpt_due:
                self.save()
                last_ckpt = time.monotonic()
            stop_now = self.train_one_step()
            self.state.elapsed_seconds += time.monotonic() - now
            if stop_now:
                return

    def _agree(self, flags: list[bool]) -> list[float]:
        """The loop's flags summed over ranks: on one rank, nothing to do; else one all-reduce of host
        tensors over a gloo group (the training backend's, NCCL, would take a GPU tensor and read it back:
        a device sync every step)."""
        values = [float(f) for f in flags]
        if self.p.info.world_size == 1:
            return values
        if self._flags_group is None:  # collective: every rank gets here at its first step
            self._flags_group = dist.new_group(backend="gloo")
        t = torch.tensor(values, dtype=torch.float64)  # on the host
        with peer_errors(self.p.info, "the loop's flag all-reduce"):
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self._flags_group)
        return t.tolist()

    def train_one_step(self) -> bool:
        """Run one step and what follows it; True when training should stop early."""
        st = self.state
        self.p.monitor.begin_step(st.step)
        lr = self.p.schedule(st.step) * st.lr_scale
        for group in self.p.engine.optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        batches = self.prefetch.get(st.step)
        result = run_step(self.p.engine, batches.batches, self.p.info, self.p.gate, batches.targets)
        st.step += 1
        self.steplog.add(result)
        self._lrs.append(lr)
        seconds = time.perf_counter() - t0  # host time: the device's is added when the log is read
        step_tokens = self.p.batches.layout.global_batch * self.p.seq_len
        st.tokens += step_tokens
        st.wall_seconds += seconds
        self._window_tokens += step_tokens
        self._window_seconds += seconds
        if not self._sync_point(st.step):
            return False
        if self.settle():
            return False
        return self._after_step()

    def _sync_point(self, step: int) -> bool:
        """Whether the host reads the step log after `step`: something after this step needs it."""
        cfg = self.budget
        every = (cfg.log_every, cfg.eval_every, cfg.checkpoint.every_steps)
        return step == cfg.max_steps or any(n and step % n == 0 for n in every)

    def settle(self) -> bool:
        """Read the step log (the one host sync) and account for its steps in order; True when it rolled back."""
        if not self.steplog.steps:
            return False
        st, cfg = self.state, self.budget
        t0 = time.perf_counter()
        results = self.steplog.read()
        waited = time.perf_counter() - t0  # the device finishing the queued steps
        st.wall_seconds += waited
        self._window_seconds += waited
        lrs, self._lrs = self._lrs, []
        first = st.step - len(results) + 1
        for step, result, lr in zip(range(first, st.step + 1), results, lrs):
            verdict = self.guard.observe(st, result.finite)
            st.target_tokens += int(result.targets)
            self.p.monitor.end_step(step, float(result.loss), result.grad_norm)
            if step % cfg.log_every == 0 or step == cfg.max_steps or not result.finite:
                # the window's time ends at the sync: a row before it (a non-finite step) gets no throughput
                self._log_row(step, float(result.loss), lr, result.grad_norm, throughput=step == st.step)
            if verdict == "skip":
                log.warning("step %d: non-finite loss/gradients (%s); update skipped (%d in a row)", step,
                            result.loss, st.nan_streak)  # fmt: skip
            elif verdict == "rollback":
                self.rollback(step)
                return True
        return False

    def _after_step(self) -> bool:
        st, cfg = self.state, self.budget
        stop = False
        val_loss = None
        if cfg.eval_every and (st.step % cfg.eval_every == 0 or st.step == cfg.max_steps):
            val_loss = evaluate(self.p.engine, self.p.val, self.p.info)
            improved = self.early.observe(st, val_loss)
            st.val_rows.append({"step": st.step, "val_loss": val_loss})
            self.p.monitor.log_val(st.step, val_loss, st.best_val_loss)
            if improved and cfg.checkpoint.keep_best and st.step != cfg.max_steps:
                self.save(val_loss=val_loss)
            if self.early.should_stop(st):
                log.info("early stopping at step %d: no val improvement > %g in %d evaluations", st.step,
                         cfg.early_stopping.min_delta, cfg.early_stopping.patience)  # fmt: skip
                self.stop_reason = "early_stopping"
                stop = True
        every = cfg.checkpoint.every_steps
        if (every and st.step % every == 0) or (stop or st.step == cfg.max_steps):
            if self._saved_step != st.step:
                self.save(val_loss=val_loss)
        return stop

    def _log_row(self, step: int, loss: float, lr: float, grad_norm: float | None, throughput: bool = True) -> None:
        st = self.state
        tps = None
        if throughput:
            tps = self._window_tokens / self._window_seconds if self._window_seconds > 0 else None
            self._window_tokens, self._window_seconds = 0, 0.0
        row = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tps}
        st.train_rows.append(row)
        achieved = self.p.flops_per_token * tps if tps else None
        extra = {
            "mfu": mfu(self.p.flops_per_token, tps or 0.0, self.p.peak_flops, self.p.info.world_size),
            "flops_per_s": achieved,
            "memory_gb": _memory_gb(self.p.info.device),
            "loss_scale": loss_scale(self.p.engine),
        }
        self.p.monitor.log_train(row, extra)

    # -- checkpoints and recovery --------------------------------------------------------------

    def save(self, val_loss: float | None = None) -> None:
        st = self.state
        st.world_size = self.p.info.world_size
        st.global_batch = self.p.batches.layout.global_batch
        path = self.p.store.save(self.p.engine, st, val_loss=val_loss)
        if path is None:  # non-finite state: nothing written, nothing pruned
            return
        self._saved_step = st.step
        removed = self.p.store.prune(self.budget.checkpoint.keep_last, self.budget.checkpoint.keep_best, st.run_id)
        log.info("checkpoint %s saved%s", path, f" ({len(removed)} old removed)" if removed else "")

    def rollback(self, at_step: int | None = None) -> None:
        """Back to the newest valid checkpoint; `at_step`: the step the streak reached its limit (default: now)."""
        st, nan_cfg = self.state, self.p.nan_guard
        at = st.step if at_step is None else at_step
        what = f"the loss was non-finite for {st.nan_streak} consecutive steps (up to step {at})"
        if not self.guard.can_roll_back(st):
            raise TrainingError(
                f"{self.budget.stage}: {what} after {st.rollbacks} rollback(s) with the learning rate scaled to "
                f"{st.lr_scale:g}x; giving up (engine.nan_guard.max_rollbacks={nan_cfg.max_rollbacks}). Lower the "
                "learning rate, use engine.grad_clip, or check the data; the last good checkpoint is kept"
            )
        path = self.p.store.newest_valid(run_id=st.run_id)  # saved only from finite state
        if path is None:
            raise TrainingError(
                f"{self.budget.stage}: {what} and there is no checkpoint to roll back to; save checkpoints along the "
                "way (train.checkpoint.every_steps, finetune.checkpoint_every) or lower the learning rate"
            )
        carried = (st.rollbacks + 1, st.lr_scale * nan_cfg.lr_factor, st.nan_skipped, st.elapsed_seconds)
        self.state = self.p.store.load(self.p.engine, path)
        s = self.state
        s.rollbacks, s.lr_scale, s.nan_skipped, s.elapsed_seconds = carried
        self.state.nan_streak = 0
        self.steplog, self._lrs = StepLog(self.p.info.device), []
        self._saved_step = None
        log.warning("%s: rolled back to %s (step %d) with the learning rate scaled to %gx (rollback %d of %d)",
                    what, path, self.state.step, self.state.lr_scale, self.state.rollbacks,
                    nan_cfg.max_rollbacks)  # fmt: skip


def _memory_gb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None
