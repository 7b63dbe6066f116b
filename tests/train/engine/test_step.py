"""run_step and StepLog: no host sync on a step, the device-side skip, and the trainer's one read per log step.

Host syncs are counted by a TorchFunctionMode that sees every Tensor.item / __bool__ / __float__ /
__int__ / tolist / numpy call of the thread it runs in (on a GPU each of them waits for the
stream); the GPU test uses torch.cuda.set_sync_debug_mode, which sees the real synchronisations.
"""

from __future__ import annotations

import math
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from frontier.data.tokens import TokenShards
from frontier.model.build import build_model
from frontier.model.loss import CausalLMWithLoss
from frontier.train.batches.data import Layout, TrainBatches, WindowSampler
from frontier.train.engine.ds_config import build_ds_config
from frontier.train.engine.engine import make_engine, whole_grads
from frontier.train.engine.optimizer import build_client_optimizer
from frontier.train.engine.stability import StepGate
from frontier.train.engine.step import StepLog, StepResult, run_step
from frontier.train.launch.distributed import init_distributed
from frontier.train.loop import Trainer
from frontier.train.run import train
from tests.train.helpers import VOCAB, params

_SYNCS = {
    torch.Tensor.item,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
}


# The model's forward reads values on the host by itself: transformers' packed-sequence detection
# (masking_utils.find_packed_sequence_indices, once per forward, skipped only under torch.compile).
# That belongs to the model, not to the training step, and is counted apart.
_MODEL_READS = ("/transformers/", "/frontier/model/")


def _in_model(where: str) -> bool:
    return any(part in where for part in _MODEL_READS)


class CountSyncs(TorchFunctionMode):
    """Counts the calls that read a tensor's value on the host (a device sync on a GPU), with their caller."""

    def __init__(self) -> None:
        super().__init__()
        self.all: list[tuple[str, str]] = []  # (call, file:line of the code that made it)

    def __torch_function__(self, func: Callable, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _SYNCS:
            frame = sys._getframe(1)
            while frame.f_back is not None and "/torch/" in frame.f_code.co_filename:
                frame = frame.f_back
            self.all.append((func.__name__, f"{frame.f_code.co_filename}:{frame.f_lineno}"))
        return func(*args, **(kwargs or {}))

    @property
    def calls(self) -> list[str]:
        """The reads made by anything but the model's mask code."""
        return [f"{name} at {where}" for name, where in self.all if not _in_model(where)]

    @property
    def model_reads(self) -> int:
        return sum(_in_model(where) for _, where in self.all)


@pytest.fixture
def device_syncs(monkeypatch) -> list[str]:
    """Calls of DeepSpeed's accelerator synchronize (a no-op on the CPU, a device sync on a GPU), recorded."""
    from deepspeed.accelerator import get_accelerator

    accel, calls = get_accelerator(), []
    original = accel.synchronize

    def synchronize(*args, **kwargs):
        frame = sys._getframe(1)
        calls.append(f"{frame.f_code.co_filename}:{frame.f_lineno}")
        return original(*args, **kwargs)

    monkeypatch.setattr(accel, "synchronize", synchronize)
    return calls


def _engine(*overrides: str, device: str = "cpu"):
    p = params(*overrides)
    info = init_distributed()
    torch.manual_seed(0)
    module = CausalLMWithLoss(build_model(p.model, VOCAB), p.kernels).to(device)
    optimizer = build_client_optimizer(module, p.optimizer)
    gate = StepGate(optimizer)
    ds_config = build_ds_config(p.engine, info.world_size, micro_batch_size=p.train.micro_batch_size,
                                grad_accum_steps=p.train.grad_accum_steps)  # fmt: skip
    engine = make_engine(module, optimizer, ds_config)
    return engine, gate, info, p


def _batches(corpus, p, step: int):
    sampler = WindowSampler(TokenShards(corpus.tokens / "train"), 16, p.seed, True)
    lay = Layout(p.train.micro_batch_size, p.train.grad_accum_steps, 1, 0)
    return TrainBatches(sampler, lay).step(step)


def _snapshot(engine) -> list[torch.Tensor]:
    tensors = [q.detach().clone() for q in engine.module.parameters()]
    for state in engine.optimizer.state.values():
        tensors += [v.detach().clone() for v in state.values() if torch.is_tensor(v)]
    return tensors


@pytest.mark.parametrize("accum", [1, 2])
def test_a_step_reads_nothing_on_the_host_and_the_log_reads_once(corpus, accum, device_syncs):
    engine, gate, info, p = _engine(f"train.grad_accum_steps={accum}", "train.micro_batch_size=2")
    assert whole_grads(engine) is not None and not engine.enable_backward_allreduce  # ZeRO-0 fp32, one rank
    log = StepLog(info.device)
    counted = []
    for step in range(4):  # DeepSpeed's throughput timer starts synchronizing at its third step
        batches = _batches(corpus, p, step)
        targets = sum(b.num_targets for b in batches)  # the prefetcher counts before the step
        counted.append(targets)
        with CountSyncs() as syncs:
            result = run_step(engine, batches, info, gate, targets)
            log.add(result)
        assert syncs.calls == [], f"step {step}: host reads {syncs.calls}"
        assert syncs.model_reads <= accum  # on the CPU: transformers' one per forward
        assert device_syncs == [], f"step {step}: device synchronize from {device_syncs}"  # DeepSpeed's timers
    with CountSyncs() as syncs:
        window = log.read()
    assert [name for name, _ in syncs.all] == ["tolist"]
    assert len(window) == 4 and log.steps == 0
    assert [r.targets for r in window] == counted
    assert all(r.finite and math.isfinite(r.loss) and r.grad_norm > 0 for r in window)


def test_trainer_syncs_only_on_log_steps(corpus, tmp_path, monkeypatch):
    counts: list[int] = []
    original = Trainer.train_one_step

    def counted(self):
        with CountSyncs() as syncs:
            out = original(self)
        counts.append(len(syncs.calls))
        return out

    monkeypatch.setattr(Trainer, "train_one_step", counted)
    train(params("train.max_steps=8", "train.log_every=4"), corpus.tokens, corpus.tokenizer, tmp_path / "out",
          tmp_path / "ckpt")  # fmt: skip
    assert counts[:3] == [0, 0, 0] and counts[4:7] == [0, 0, 0]
    assert counts[3] == 1  # step 4: the step log, read once (a log row and its figures)


def _poison_loss(engine, monkeypatch) -> None:
    original = type(engine.module).forward

    def forward(self, input_ids, targets, **kwargs):
        return original(self, input_ids, targets, **kwargs) * float("nan")

    monkeypatch.setattr(type(engine.module), "forward", forward)


def test_a_non_finite_loss_is_skipped_on_the_device(corpus, monkeypatch):
    engine, gate, info, p = _engine()
    batches = _batches(corpus, p, 0)
    run_step(engine, batches, info, gate)  # a real update first: moments exist
    before = _snapshot(engine)
    _poison_loss(engine, monkeypatch)
    poisoned = _batches(corpus, p, 1)
    targets = sum(b.num_targets for b in poisoned)  # the prefetcher counts before the step
    with CountSyncs() as syncs:
        result = run_step(engine, poisoned, info, gate, targets)
    assert syncs.calls == []
    assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(engine)))  # weights, moments, step counts
    assert float(result.skipped) == 1.0 and math.isnan(float(result.loss))
    assert gate.vetoed == 0  # decided on the device, not by the host veto


def test_non_finite_gradients_with_a_finite_loss_are_skipped(corpus):
    engine, gate, info, p = _engine()
    run_step(engine, _batches(corpus, p, 0), info, gate)
    before = _snapshot(engine)
    first = next(iter(engine.module.parameters()))
    hook = first.register_hook(lambda g: torch.full_like(g, float("inf")))
    try:
        result = run_step(engine, _batches(corpus, p, 1), info, gate)
    finally:
        hook.remove()
    assert math.isfinite(float(result.loss)) and float(result.skipped) == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(engine)))
    after = run_step(engine, _batches(corpus, p, 2), info, gate)  # the next step updates again
    assert float(after.skipped) == 0.0
    assert not all(torch.equal(a, b) for a, b in zip(before, _snapshot(engine)))


def test_clipping_matches_deepspeeds_rule(corpus):
    """The trainer clips with DeepSpeed's coefficient min(1, clip / (norm + 1e-6)) and reports the unclipped norm."""
    engine, gate, info, p = _engine("engine.grad_clip=0.01")
    grads = whole_grads(engine)
    assert grads is not None and grads.clip == 0.01 and engine.gradient_clipping() == 0.0  # DeepSpeed's is off
    seen: dict[str, Any] = {}
    inner = engine.optimizer.step

    def spy(*args, **kwargs):
        seen["grads"] = [q.grad.detach().clone() for q in grads.params]
        return inner(*args, **kwargs)

    engine.optimizer.step = spy
    module = CausalLMWithLoss(build_model(p.model, VOCAB), p.kernels)
    module.load_state_dict(engine.module.state_dict())
    batches = _batches(corpus, p, 0)
    n = sum(b.num_targets for b in batches)
    for b in batches:
        (module(**b.model_inputs(torch.device("cpu"))) / n).backward()
    reference = [q.grad for q in {id(q): q for q in module.parameters()}.values()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in reference]))
    result = run_step(engine, batches, info, gate)
    assert float(result.grad_norm) == pytest.approx(float(norm), rel=1e-5) and float(norm) > 0.01
    coef = 0.01 / (float(norm) + 1e-6)
    for got, ref in zip(seen["grads"], reference):
        torch.testing.assert_close(got, ref * coef, rtol=1e-4, atol=1e-9)


def test_step_log_gives_back_every_step_in_order():
    log = StepLog(torch.device("cpu"))
    steps = [(1.5, 0.25, False, 10), (math.nan, math.nan, True, 12), (2.5, None, False, 7)]
    for loss, norm, bad, targets in steps:
        log.add(StepResult(
            loss=torch.tensor(loss, dtype=torch.float64),
            targets=float(targets) if bad else torch.tensor(float(targets)),  # host or device counts
            grad_norm=None if norm is None else torch.tensor(norm),
            skipped=torch.tensor(float(bad)),
        ))  # fmt: skip
    assert log.steps == 3
    got = log.read()
    assert [(r.finite, r.targets) for r in got] == [(True, 10), (False, 12), (True, 7)]
    assert got[0].loss == 1.5 and got[0].grad_norm == 0.25 and got[2].grad_norm is None
    assert math.isnan(got[1].loss) and math.isnan(got[1].grad_norm)
    assert log.read() == [] and log.steps == 0


def test_a_nan_between_log_steps_is_accounted_as_its_own_step(corpus, tmp_path, monkeypatch):
    """With log_every 4, a NaN at step 2 is read at step 4, then counted, alerted and written with its own step."""
    import json

    from tests.train.engine.test_stability import poison
    from tests.train.helpers import read_rows

    poison(monkeypatch, {1})
    out = tmp_path / "out"
    metrics = train(params("train.max_steps=8", "train.log_every=4"), corpus.tokens, corpus.tokenizer, out,
                    tmp_path / "ckpt")  # fmt: skip
    assert metrics["nan_skipped"] == 1 and metrics["rollbacks"] == 0
    rows = read_rows(out / "plots" / "train.csv")
    assert [int(r["step"]) for r in rows] == [2, 4, 8]  # a non-finite step's row, as before
    assert math.isnan(rows[0]["loss"]) and all(math.isfinite(r["loss"]) for r in rows[1:])
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    assert [(a["rule"], a["step"]) for a in alerts if a["rule"] == "nan"] == [("nan", 2)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_never_synchronises(corpus):
    """No synchronising CUDA call in a step outside the model's forward (torch's sync debug mode)."""
    engine, gate, info, p = _engine(device="cuda")
    if info.device.type != "cuda":
        pytest.skip("DeepSpeed's accelerator is not CUDA here")
    from frontier.train.batches.prefetch import load_step

    log = StepLog(info.device)
    ready = [load_step(lambda s: _batches(corpus, p, s), s, info.device) for s in range(3)]
    for r in ready:  # warm-up on the same shapes: allocations, optimizer states, kernel autotuning
        log.add(run_step(engine, r.batches, info, gate, r.targets))
    log.read()
    torch.cuda.synchronize()
    stacks: list[list[str]] = []

    def record(message, category, filename, lineno, file=None, line=None):
        # torch's sync debug warning (c10/cuda), not its one-time "Synchronization debug mode is a prototype"
        # notice, which setting the mode itself raises
        if "called a synchronizing CUDA operation" in str(message):  # where it came from, innermost last
            stacks.append([f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()[:-1]])

    def watched(work) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record  # restored by catch_warnings
            torch.cuda.set_sync_debug_mode("warn")
            try:
                work()
            finally:
                torch.cuda.set_sync_debug_mode("default")

    watched(lambda: torch.ones(1, device="cuda").item())  # the control: a host read is seen
    assert len(stacks) == 1, "the recorder missed a known synchronising call"
    stacks.clear()
    for r in ready:
        watched(lambda r=r: log.add(run_step(engine, r.batches, info, gate, r.targets)))
    ours = [stack[-6:] for stack in stacks if not any(_in_model(frame) for frame in stack)]
    assert ours == [], "synchronising calls in the step:\n" + "\n\n".join("\n".join(s) for s in ours)
    assert all(r.finite for r in log.read())
