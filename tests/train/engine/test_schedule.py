"""Learning-rate schedules: warmup, floor, and each decay shape at points where its value is known."""

from __future__ import annotations

import math

import pytest

from frontier.config.engine import ScheduleConfig
from frontier.train.engine.schedule import LRSchedule

PEAK, FLOOR = 1e-3, 1e-4


def sched(kind: str, warmup: int = 10, total: int = 110, **kw) -> LRSchedule:
    return LRSchedule(ScheduleConfig(kind=kind, warmup_steps=warmup, min_lr_ratio=FLOOR / PEAK, **kw), PEAK, total)


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine", "wsd", "polynomial"])
def test_warmup_is_linear_to_the_peak(kind):
    s = sched(kind)
    assert [s(i) for i in range(10)] == pytest.approx([PEAK * (i + 1) / 11 for i in range(10)])
    assert s(10) == pytest.approx(PEAK)  # first step after warmup


@pytest.mark.parametrize("kind", ["linear", "cosine", "wsd", "polynomial"])
def test_decays_reach_the_floor_and_stay(kind):
    s = sched(kind, power=2.0)
    assert s(110) == pytest.approx(FLOOR) and s(500) == pytest.approx(FLOOR)
    values = [s(i) for i in range(10, 111)]
    assert all(a >= b - 1e-15 for a, b in zip(values, values[1:]))  # never increases after warmup


def test_shapes_at_midpoint():
    mid = 10 + 50  # half of the 100 decay steps
    assert sched("constant")(mid) == PEAK and sched("constant")(10_000) == PEAK
    assert sched("linear")(mid) == pytest.approx((PEAK + FLOOR) / 2)
    assert sched("cosine")(mid) == pytest.approx(FLOOR + (PEAK - FLOOR) * 0.5 * (1 + math.cos(math.pi / 2)))
    assert sched("polynomial", power=2.0)(mid) == pytest.approx(FLOOR + (PEAK - FLOOR) * 0.25)
    assert sched("cosine")(10 + 25) == pytest.approx(FLOOR + (PEAK - FLOOR) * (0.5 + 0.5 * math.cos(math.pi / 4)))


def test_wsd_is_stable_then_decays_linearly_over_the_final_fraction():
    s = sched("wsd", decay_fraction=0.2)  # decay over the last 22 of 110 steps: from step 88
    assert all(s(i) == PEAK for i in range(10, 89))
    assert s(99) == pytest.approx(FLOOR + (PEAK - FLOOR) * (1 - 11 / 22))


def test_nanogpt_shakespeare_char_values():
    """nanoGPT get_lr with warmup 100, lr_decay_iters 2000, lr 1e-3, min_lr 1e-4 (train.py formulas)."""
    s = LRSchedule(ScheduleConfig(kind="cosine", warmup_steps=100, min_lr_ratio=0.1), 1e-3, 2000)

    def nanogpt(it: int) -> float:
        if it < 100:
            return 1e-3 * (it + 1) / (100 + 1)
        ratio = (it - 100) / (2000 - 100)
        return 1e-4 + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1e-3 - 1e-4)

    for it in (0, 50, 99, 100, 500, 1000, 1999):
        assert s(it) == pytest.approx(nanogpt(it), rel=1e-12)


def test_warmup_longer_than_the_run_is_capped():
    s = sched("cosine", warmup=500, total=20)
    assert s(19) == pytest.approx(PEAK * 20 / 21)
