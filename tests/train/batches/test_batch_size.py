"""train.micro_batch_size: auto — the budget and the probe choose, the global batch stays, a resume keeps the choice."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

import frontier.train.batches.batch_size as bs
from frontier.errors import ConfigError
from frontier.model.build import build_model
from frontier.model.checkpointing import enable_activation_checkpointing
from frontier.model.kernels import apply_kernels
from frontier.model.loss import CausalLMWithLoss
from frontier.train.launch.distributed import DistInfo
from frontier.train.run import train
from tests.train.helpers import VOCAB, losses, params, read_rows, weights

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
AUTO = ("train.micro_batch_size=auto", "train.global_batch_size=8")


def _module(*overrides: str, checkpointing: bool = False) -> CausalLMWithLoss:
    """The train stage's module for the tiny params (as frontier.train.run builds it)."""
    p = params(*overrides)
    torch.manual_seed(0)
    lm = apply_kernels(build_model(p.model, VOCAB), p.kernels)
    if checkpointing:
        enable_activation_checkpointing(lm)
    return CausalLMWithLoss(lm, p.kernels).train()


def _estimate(module: CausalLMWithLoss, seq_len: int = 16) -> bs.MemoryEstimate:
    static = bs.static_bytes(module, "fp32", 0, 1, 4)
    return bs.MemoryEstimate(static, bs.activation_bytes_per_sample(module, seq_len, VOCAB))


def _choose(estimate: bs.MemoryEstimate, budget: int, global_size: int = 8, info: DistInfo = CPU) -> bs.Split:
    return bs.choose(global_size=global_size, info=info, recorded=None, measure=lambda: estimate,
                     cuda_step_for=lambda: pytest.fail("no probe on the CPU"), probe_device=False,
                     budget=budget)  # fmt: skip


# -- splits --------------------------------------------------------------------------------------


def test_candidates_split_the_global_batch_evenly_largest_first() -> None:
    assert bs.candidates(12, 1) == [12, 6, 4, 3, 2, 1]
    assert bs.candidates(12, 2) == [6, 3, 2, 1]
    assert bs.candidates(7, 1) == [7, 1]
    with pytest.raises(ConfigError, match=r"train\.global_batch_size: 6 does not split over 4 ranks"):
        bs.candidates(6, 4)


@pytest.mark.parametrize("overrides, message", [
    (("train.micro_batch_size=auto",), r"train\.global_batch_size: micro_batch_size auto needs the global batch"),
    ((*AUTO, "train.grad_accum_steps=2"), r"train\.grad_accum_steps: 2 is derived when micro_batch_size is auto"),
    (("train.global_batch_size=8",), r"train\.global_batch_size: 8 is read only with micro_batch_size auto"),
    (("train.micro_batch_size=most",), r"train\.micro_batch_size: got 'most', expected an integer or one of 'auto'"),
    (("train.micro_batch_size=auto", "train.global_batch_size=0"), r"train\.global_batch_size: got 0, expected a "
     r"value >= 1"),
])  # fmt: skip
def test_bad_auto_settings_are_one_clear_error(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        params(*overrides)


# -- the CPU budget ------------------------------------------------------------------------------


def test_static_bytes_count_weights_gradients_and_optimizer_state_per_zero_stage() -> None:
    module = torch.nn.Linear(10, 10)  # 110 parameters
    assert bs.static_bytes(module, "fp32", 0, 4, 4) == 110 * (4 + 4 + 8)
    assert bs.static_bytes(module, "fp32", 1, 2, 4) == 110 * (4 + 4 + 8 / 2)
    assert bs.static_bytes(module, "fp32", 2, 2, 4) == 110 * (4 + 4 / 2 + 8 / 2)
    assert bs.static_bytes(module, "fp32", 3, 2, 4) == 110 * (4 / 2 + 4 / 2 + 8 / 2)
    assert bs.static_bytes(module, "bf16", 0, 1, 2) == 110 * (2 + 2 + 4 + 4)  # bf16 moments + fp32 master
    module.bias.requires_grad_(False)  # frozen weights (a LoRA base) have no gradient or optimizer state
    assert bs.static_bytes(module, "fp32", 0, 1, 4) == 110 * 4 + 100 * (4 + 8)


def test_activations_are_measured_per_sample_and_leave_the_rng_alone() -> None:
    module = _module()
    per_sample = bs.activation_bytes_per_sample(module, 16, VOCAB)
    torch.manual_seed(5)
    expected_draw = torch.rand(1)
    torch.manual_seed(5)
    bs.activation_bytes_per_sample(module, 16, VOCAB)
    assert torch.equal(torch.rand(1), expected_draw)
    # at least the logits (T x V fp32) are kept for the loss's backward; a longer sample keeps more
    assert per_sample >= 16 * VOCAB * 4
    assert bs.activation_bytes_per_sample(module, 8, VOCAB) < per_sample
    assert all(p.grad is None for p in module.parameters())
    # activation checkpointing keeps each layer's input instead of its intermediates
    assert bs.activation_bytes_per_sample(_module(checkpointing=True), 16, VOCAB) < per_sample


def test_a_smaller_budget_picks_a_smaller_micro_batch_at_the_same_global_batch() -> None:
    estimate = _estimate(_module())
    chosen = []
    for fits in (8, 7, 4, 3, 2, 1):  # the budget for exactly `fits` samples
        split = _choose(estimate, estimate.at(fits))
        assert split.micro_batch_size * split.grad_accum_steps == 8  # one rank: the global batch kept
        assert split.chosen_by == "cpu budget"
        chosen.append(split.micro_batch_size)
    assert chosen == [8, 4, 4, 2, 2, 1]  # the largest divisor of 8 within the budget


def test_a_budget_too_small_for_one_sample_is_one_clear_error() -> None:
    estimate = _estimate(_module())
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size: auto: a micro-batch of 1 needs about .* MiB .* "
                                          r"but this rank's budget is .* MiB .*activation_checkpointing"):  # fmt: skip
        _choose(estimate, estimate.at(1) - 1)


def test_the_default_budget_is_a_fraction_of_the_available_ram() -> None:
    import psutil

    available = psutil.virtual_memory().available
    assert 0 < bs.cpu_budget(1) <= available * bs.BUDGET_FRACTION
    assert bs.cpu_budget(4) <= bs.cpu_budget(1) / 4 * 1.1  # shared by the ranks of the node (RAM moves a little)


# -- the CUDA probe ------------------------------------------------------------------------------


class _Device:
    """A step that runs out of memory above `capacity` samples, as a device would, and logs what it was asked."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.asked = capacity, []

    def step(self, micro: int) -> None:
        self.asked.append(micro)
        if micro > self.capacity:
            raise torch.OutOfMemoryError(f"CUDA out of memory: tried {micro} samples")


def test_the_probe_backs_off_on_out_of_memory_to_the_largest_that_runs() -> None:
    device = _Device(capacity=5)
    split = bs.choose(global_size=12, info=CPU, recorded=None, measure=lambda: pytest.fail("no budget on CUDA"),
                      cuda_step_for=lambda: device.step, probe_device=True)  # fmt: skip
    assert device.asked == [12, 6, 4]  # largest first, one step each, stopping at the first that runs
    assert (split.micro_batch_size, split.grad_accum_steps, split.chosen_by) == (4, 3, "cuda probe")


def test_the_probe_only_backs_off_on_out_of_memory() -> None:
    def broken(micro: int) -> None:
        raise RuntimeError("a bug, not memory")

    with pytest.raises(RuntimeError, match="a bug"):
        bs.probe(broken, [4, 2, 1], (torch.OutOfMemoryError,))


def test_no_micro_batch_fitting_the_device_is_one_clear_error() -> None:
    device = _Device(capacity=0)
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size: auto: even a micro-batch of 1 runs out of device"):
        bs.choose(global_size=4, info=CPU, recorded=None, measure=lambda: pytest.fail("no budget on CUDA"),
                  cuda_step_for=lambda: device.step, probe_device=True)  # fmt: skip
    assert device.asked == [4, 2, 1]


@pytest.mark.gpu
def test_the_probe_on_a_real_device_finds_where_memory_ends() -> None:
    """A real forward + backward per candidate: with this process capped at its weights, the reservation and
    about 40 samples' activations, large micro-batches run out of memory and the probe settles on a smaller
    one that really runs. The cap (not a tensor filling the device) keeps the out-of-memory errors in this
    process: other tests share the GPU at the same time (pytest -n)."""
    module = _module("model.max_seq_len=512").cuda()
    seq_len, options = 512, bs.candidates(4096, 1)
    one = bs.activation_bytes_per_sample(module, seq_len, VOCAB)
    reserve = 64 * 2**20  # stands in for the engine's optimizer state
    total = torch.cuda.get_device_properties(0).total_memory
    cap = torch.cuda.memory_reserved() + reserve + 40 * one
    torch.cuda.set_per_process_memory_fraction(cap / total)
    try:
        chosen = bs.probe(bs.cuda_step(module, seq_len, VOCAB, reserve), options, (torch.OutOfMemoryError,))
        assert 1 <= chosen < 4096 and chosen in options
        bs.cuda_step(module, seq_len, VOCAB, reserve)(chosen)  # it runs again
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert all(p.grad is None for p in module.parameters())


# -- in the train stage --------------------------------------------------------------------------

RUN = (*AUTO, "train.max_steps=4", "train.checkpoint.every_steps=2", "train.checkpoint.keep_best=false")


def _run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def by_params(tmp_path_factory, corpus) -> Path:
    """The same run with the split given in params: micro 8 x 1."""
    root = tmp_path_factory.mktemp("by_params")
    train(params(*RUN[2:], "train.micro_batch_size=8"), corpus.tokens, corpus.tokenizer, root / "out", root / "ckpt")
    return root


def test_auto_on_a_small_budget_keeps_the_global_batch_and_the_run(tmp_path, corpus, by_params, monkeypatch) -> None:
    estimate = _estimate(_module())
    monkeypatch.setattr(bs, "cpu_budget", lambda ranks: estimate.at(2))  # this machine has room for 2 samples
    train(params(*RUN), corpus.tokens, corpus.tokenizer, tmp_path / "out", tmp_path / "ckpt")
    assert _run_json(tmp_path / "out")["batch"] == {"micro_batch_size": 2, "grad_accum_steps": 4,
                                                    "chosen_by": "cpu budget"}  # fmt: skip
    assert _run_json(by_params / "out")["batch"]["chosen_by"] == "params"
    # the same samples per step, summed in another order
    torch.testing.assert_close(losses(tmp_path / "out"), losses(by_params / "out"), rtol=1e-6, atol=0)
    w0, w1 = weights(by_params / "out"), weights(tmp_path / "out")
    assert all(torch.allclose(w1[k], w0[k], rtol=0, atol=1e-5) for k in w0)


def test_a_resume_keeps_the_recorded_micro_batch_on_another_machine(tmp_path, corpus, monkeypatch, caplog) -> None:
    estimate = _estimate(_module())
    monkeypatch.setattr(bs, "cpu_budget", lambda ranks: estimate.at(4))
    first = tmp_path / "first"
    train(params(*RUN), corpus.tokens, corpus.tokenizer, first / "out", first / "ckpt")
    assert json.loads((first / "ckpt" / "logs" / bs.RECORD).read_text())["micro_batch_size"] == 4
    shutil.copytree(first / "ckpt", tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "ckpt" / "step_00000004")
    monkeypatch.setattr(bs, "cpu_budget", lambda ranks: estimate.at(1))  # a machine that would choose 1
    with caplog.at_level(logging.INFO, logger="frontier"):
        train(params(*RUN), corpus.tokens, corpus.tokenizer, tmp_path / "out", tmp_path / "ckpt")
    assert any("resumed from" in r.getMessage() for r in caplog.records)
    assert _run_json(tmp_path / "out")["batch"] == {"micro_batch_size": 4, "grad_accum_steps": 2,
                                                    "chosen_by": "recorded"}  # fmt: skip
    assert losses(tmp_path / "out") == losses(first / "out")  # the same split: the same bits


def test_a_fresh_run_chooses_again(tmp_path, corpus, monkeypatch) -> None:
    """The record belongs to a run: train.resume none (or other params) starts a run that chooses anew."""
    estimate = _estimate(_module())
    monkeypatch.setattr(bs, "cpu_budget", lambda ranks: estimate.at(4))
    train(params(*RUN), corpus.tokens, corpus.tokenizer, tmp_path / "out", tmp_path / "ckpt")
    monkeypatch.setattr(bs, "cpu_budget", lambda ranks: estimate.at(2))
    shutil.rmtree(tmp_path / "out")
    train(params(*RUN, "train.resume=none"), corpus.tokens, corpus.tokenizer, tmp_path / "out", tmp_path / "ckpt")
    assert _run_json(tmp_path / "out")["batch"]["micro_batch_size"] == 2
    assert read_rows(tmp_path / "ckpt" / "logs" / "train.csv")[0]["step"] == 1  # a new run, from step 1
