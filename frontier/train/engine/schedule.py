"""Learning-rate schedules as a pure function of the step.

The schedule has no state of its own: the learning rate of update `step` (0-based) is
``lr_at(step) * lr_scale``, where `lr_scale` (lowered by a NaN rollback) lives in the trainer
state. Resuming therefore restores the schedule exactly from the step counter.

Conventions follow nanoGPT so its reference runs reproduce: warmup is
``peak * (step + 1) / (warmup + 1)`` for step < warmup; decay runs from `warmup` to `total`
(train.max_steps), after which the rate stays at the floor ``min_lr_ratio * peak``.
"""

from __future__ import annotations

import math

from frontier.config.engine import ScheduleConfig


class LRSchedule:
    def __init__(self, cfg: ScheduleConfig, peak_lr: float, total_steps: int) -> None:
        self.cfg = cfg
        self.peak = peak_lr
        self.floor = cfg.min_lr_ratio * peak_lr
        self.total = total_steps
        self.warmup = min(cfg.warmup_steps, total_steps)

    def progress(self, step: int) -> float:
        """Fraction of the decay phase done at `step`, in [0, 1]."""
        span = self.total - self.warmup
        return 1.0 if span <= 0 else min(max((step - self.warmup) / span, 0.0), 1.0)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.peak * (step + 1) / (self.warmup + 1)
        kind = self.cfg.kind
        if kind == "constant":
            return self.peak
        p = self.progress(step)
        if kind == "linear":
            shape = 1.0 - p
        elif kind == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * p))
        elif kind == "polynomial":
            shape = (1.0 - p) ** self.cfg.power
        else:  # wsd: stable at the peak, then linear decay over the last `decay_fraction` of all steps
            decay_start = self.total - self.cfg.decay_fraction * self.total
            if step < decay_start:
                return self.peak
            shape = max(0.0, 1.0 - (step - decay_start) / (self.total - decay_start))
        return self.floor + shape * (self.peak - self.floor)
