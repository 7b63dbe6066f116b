"""NaN/inf guard (skip, roll back with a lower learning rate, give up) and early stopping.

Non-finite losses are injected by wrapping the real loss module's forward: the training code
under test (step gate, guard, checkpoints, rollback) runs unmodified.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from frontier.config.engine import EarlyStoppingConfig
from frontier.errors import TrainingError
from frontier.model.loss import CausalLMWithLoss
from frontier.train.checkpoint.state import TrainerState
from frontier.train.engine.schedule import LRSchedule
from frontier.train.engine.stability import EarlyStopping, StepGate
from frontier.train.run import train
from tests.train.helpers import params, read_rows


def poison(monkeypatch, bad_calls):
    """Make the training forward calls whose (0-based) index is in `bad_calls` return NaN."""
    original = CausalLMWithLoss.forward
    calls = {"n": 0}

    def forward(self, input_ids, targets, **kwargs):
        loss = original(self, input_ids, targets, **kwargs)
        if self.training:
            hit = calls["n"] in bad_calls
            calls["n"] += 1
            if hit:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(CausalLMWithLoss, "forward", forward)


@pytest.fixture
def run(tmp_path, corpus):
    """train() with tiny params + overrides into tmp_path/out and tmp_path/ckpt -> (metrics, out)."""

    def _run(*overrides):
        out = tmp_path / "out"
        return train(params(*overrides), corpus.tokens, corpus.tokenizer, out, tmp_path / "ckpt"), out

    return _run


def test_step_gate_vetoes_the_update():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    gate = StepGate(opt)
    p.grad = torch.full((3,), float("nan"))
    gate.skip = True
    opt.step()
    assert torch.equal(p.detach(), torch.ones(3)) and not opt.state  # no moment was touched
    gate.skip = False
    p.grad = torch.ones(3)
    opt.step()
    assert (p.detach() < 1).all() and gate.vetoed == 1


def _optimizers():
    from frontier.optim.fused_adamw import FusedAdamW

    return {
        "frontier": lambda ps: FusedAdamW(ps, lr=0.1, weight_decay=0.1),
        "torch_fused": lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.1, fused=True),
        "torch_foreach": lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.1, foreach=True),
    }


def _run_gate(make, vetoes):
    """Three steps of one optimizer behind a StepGate; vetoes[i] is None (plain), "host" or "device" (skip), or
    "device0" (a zero device flag: no skip). Returns the params and every optimizer state tensor."""
    torch.manual_seed(0)
    params_ = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    opt = make(params_)
    gate = StepGate(opt)
    for i, veto in enumerate(vetoes):
        for q in params_:
            q.grad = torch.randn_like(q) * (i + 1)
        gate.skip = veto == "host"
        gate.found_inf = torch.tensor(float(veto == "device")) if veto in ("device", "device0") else None
        opt.step()
        gate.skip, gate.found_inf = False, None
    state = [v.clone() for q in params_ for v in opt.state[q].values() if torch.is_tensor(v)]
    return [q.detach().clone() for q in params_] + state, gate


@pytest.mark.parametrize("impl", ["frontier", "torch_fused", "torch_foreach"])
def test_device_skip_equals_the_host_skip(impl):
    make = _optimizers()[impl]
    host, host_gate = _run_gate(make, [None, "host", None])
    device, device_gate = _run_gate(make, [None, "device", None])
    assert len(host) == len(device) and all(torch.equal(a, b) for a, b in zip(host, device))
    assert host_gate.vetoed == 1
    # optimizers that take the flag skip on the device (no host veto); the others read it on the host
    assert device_gate.on_device == (impl != "torch_foreach")
    assert device_gate.vetoed == (0 if device_gate.on_device else 1)
    plain, _ = _run_gate(make, [None, None, None])
    zero_flag, _ = _run_gate(make, [None, "device0", None])
    assert all(torch.equal(a, b) for a, b in zip(plain, zero_flag))  # a zero flag changes nothing
    assert not all(torch.equal(a, b) for a, b in zip(plain, host))  # and the skip really skipped


def test_device_flag_replaces_fused_adamws_own_check():
    """A zero flag is the caller's verdict: FusedAdamW does not read the grads again (its check is the caller's)."""
    from frontier.optim.fused_adamw import FusedAdamW

    p = torch.nn.Parameter(torch.ones(3))
    opt = FusedAdamW([p], lr=0.1)
    p.grad = torch.tensor([1.0, float("inf"), 1.0])
    opt.step()  # its own check: skipped
    assert torch.equal(p.detach(), torch.ones(3)) and opt.last_step_skipped()
    opt.step(found_inf=torch.ones(1))
    assert torch.equal(p.detach(), torch.ones(3)) and opt.last_step_skipped()
    p.grad = torch.ones(3)
    opt.step(found_inf=torch.zeros(1))
    assert (p.detach() < 1).all() and not opt.last_step_skipped()


def test_single_nan_step_is_skipped_counted_and_alerted(run, tmp_path, monkeypatch):
    poison(monkeypatch, {4})  # step 5 (one forward per step)
    metrics, out = run("train.max_steps=8", "engine.nan_guard.max_consecutive=3")
    assert metrics["nan_skipped"] == 1 and metrics["rollbacks"] == 0 and metrics["steps"] == 8
    rows = {int(r["step"]): r for r in read_rows(out / "plots" / "train.csv")}
    assert math.isnan(rows[5]["loss"]) and all(math.isfinite(rows[s]["loss"]) for s in rows if s != 5)
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    assert [(a["rule"], a["step"]) for a in alerts if a["rule"] == "nan"] == [("nan", 5)]


def test_streak_rolls_back_with_lower_lr_and_recovers(run, tmp_path, monkeypatch):
    poison(monkeypatch, {4, 5})  # steps 5 and 6 fail once; the replay after the rollback is clean
    metrics, out = run(
        "train.max_steps=8", "train.checkpoint.every_steps=2", "engine.nan_guard.max_consecutive=2",
        "engine.nan_guard.lr_factor=0.5",
    )  # fmt: skip
    assert metrics["rollbacks"] == 1 and metrics["nan_skipped"] == 2 and metrics["steps"] == 8
    rows = read_rows(out / "plots" / "train.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 9))  # history rewound to step 4, then replayed
    p = params()
    schedule = LRSchedule(p.schedule, p.optimizer.lr, 8)  # itself tested in test_schedule.py
    for r in rows:
        scale = 0.5 if r["step"] > 4 else 1.0
        assert r["lr"] == pytest.approx(schedule(int(r["step"]) - 1) * scale, rel=1e-12)
    assert all(math.isfinite(r["loss"]) for r in rows)


def test_persistent_nan_gives_up_after_bounded_rollbacks(run, tmp_path, monkeypatch):
    poison(monkeypatch, set(range(2, 1000)))  # from step 3 on, always
    with pytest.raises(TrainingError, match=r"non-finite for 2 consecutive steps .*after 1 rollback.*max_rollbacks=1"):
        run(
            "train.max_steps=8", "train.checkpoint.every_steps=2", "engine.nan_guard.max_consecutive=2",
            "engine.nan_guard.max_rollbacks=1",
        )  # fmt: skip
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "ckpt" / "step_00000002" / "manifest.json").is_file()  # the last good checkpoint is kept


def test_nan_streak_without_a_checkpoint_is_a_clear_error(run, tmp_path, monkeypatch):
    poison(monkeypatch, set(range(0, 1000)))
    with pytest.raises(TrainingError, match="no checkpoint to roll back to"):
        run("train.max_steps=8", "engine.nan_guard.max_consecutive=2")


def test_early_stopping_ends_the_run_and_still_exports(run):
    metrics, out = run(
        "train.max_steps=40", "train.eval_every=2", "train.early_stopping.patience=2",
        "train.early_stopping.min_delta=10.0",  # nothing after the first eval counts as an improvement
    )  # fmt: skip
    assert metrics["stop_reason"] == "early_stopping" and metrics["steps"] == 6
    assert [int(r["step"]) for r in read_rows(out / "plots" / "val.csv")] == [2, 4, 6]
    assert (out / "model" / "model.safetensors").is_file()


def test_early_stopping_rule():
    rule = EarlyStopping(EarlyStoppingConfig(patience=2, min_delta=0.1))
    state = TrainerState()
    assert rule.observe(state, 3.0) and state.best_val_loss == 3.0
    assert not rule.observe(state, 2.95)  # better, but not by more than min_delta
    assert state.best_val_loss == 3.0 and not rule.should_stop(state)
    assert rule.observe(state, 2.5) and state.evals_since_best == 0
    assert not rule.observe(state, float("nan"))
    assert not rule.observe(state, 2.6) and rule.should_stop(state)
    assert not EarlyStopping(EarlyStoppingConfig(patience=0)).should_stop(state)  # 0: off


def test_wall_clock_limit_and_time_based_checkpoints(run, tmp_path):
    metrics, out = run(
        "train.max_steps=1000000", "train.max_minutes=0.02", "train.checkpoint.every_minutes=0.0001",
        "train.checkpoint.keep_last=1000",
    )  # fmt: skip
    assert metrics["stop_reason"] == "max_minutes" and 0 < metrics["steps"] < 1000000
    saved = sorted(int(p.name.split("_")[1]) for p in (tmp_path / "ckpt").glob("step_*"))
    assert len(saved) >= 2 and saved[-1] == metrics["steps"]  # time-based saves, then the final one
    assert (out / "model" / "model.safetensors").is_file()
