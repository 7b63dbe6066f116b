"""engine.activation_checkpointing: the same gradients and losses as without it, while it really recomputes.

Recomputation replays each decoder layer's forward in backward, so it must go through the same patched
modules (frontier's kernels, the rope of FrontierAttention, the frontier attention entry, with the same
keywords: document ids) and the same dropout masks (the
non-reentrant checkpoint restores the RNG state of the forward). A switch that did nothing would pass
the equivalence tests, so the recompute tests count what runs during backward.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers.modeling_utils
from torch import nn

import frontier.model.fused_modules as routing
from frontier.model.build import build_model
from frontier.model.checkpointing import enable_activation_checkpointing
from frontier.model.kernels import apply_kernels
from frontier.model.loss import CausalLMWithLoss
from frontier.train.run import train
from tests.train.helpers import VOCAB, losses, params, weights

LLAMA = ("model.hidden_size=64", "model.num_heads=4")  # head dim 16: what the Triton attention tiles take
GPT2_DROPOUT = ("model.arch=gpt2", "model.dropout=0.1")
TRITON = tuple(f"kernels.{op}=triton" for op in ("attention", "rms_norm", "rope", "swiglu"))
TORCH = tuple(f"kernels.{op}=torch" for op in ("attention", "rms_norm", "rope", "swiglu"))


def _module(overrides: tuple[str, ...], checkpointing: bool, dtype: torch.dtype) -> CausalLMWithLoss:
    """The train stage's module (model built from params, kernels applied), in training mode."""
    p = params(*overrides)
    torch.manual_seed(0)
    lm = apply_kernels(build_model(p.model, VOCAB), p.kernels)
    if checkpointing:
        enable_activation_checkpointing(lm)
    return CausalLMWithLoss(lm, p.kernels).to(dtype).train()


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (3, 17), generator=torch.Generator().manual_seed(seed))
    return ids[:, :-1], ids[:, 1:]  # (3, 16) inputs and next-token targets


def _grads(module: CausalLMWithLoss, seed: int = 123) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Loss, gradients, and the next draw of the RNG after forward + backward (dropout from `seed`)."""
    torch.manual_seed(seed)
    loss = module(*_batch())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.detach(), grads, torch.rand(4)


@pytest.mark.parametrize(
    "overrides, dtype, tol",
    [
        ((*LLAMA, *TORCH), torch.float64, 1e-12),
        ((*LLAMA, *TRITON), torch.float32, 1e-6),  # the Triton kernels under TRITON_INTERPRET=1 (fp32 only)
        ((*LLAMA, "model.dropout=0.1"), torch.float64, 1e-12),  # attention dropout: SDPA's, on the torch RNG
        (GPT2_DROPOUT, torch.float64, 1e-12),
    ],
    ids=["llama-torch-fp64", "llama-triton-fp32", "llama-dropout-fp64", "gpt2-dropout-fp64"],
)
def test_gradients_match_without_checkpointing(overrides: tuple[str, ...], dtype: torch.dtype, tol: float) -> None:
    loss0, grads0, rng0 = _grads(_module(overrides, False, dtype))
    loss1, grads1, rng1 = _grads(_module(overrides, True, dtype))
    torch.testing.assert_close(loss1, loss0, rtol=tol, atol=0)
    assert grads1.keys() == grads0.keys() and len(grads0) > 0
    for name, grad in grads0.items():
        # the recomputed forward is the same computation: only a different summation order could differ
        torch.testing.assert_close(grads1[name], grad, rtol=tol, atol=tol, msg=name)
    assert torch.equal(rng1, rng0)  # the replay restored the RNG: the next dropout mask is the run's own


def test_dropout_is_active_so_the_replay_is_tested() -> None:
    module = _module(GPT2_DROPOUT, True, torch.float64)
    assert _grads(module, seed=1)[0] != _grads(module, seed=2)[0]


def _count_forwards(modules: list[nn.Module]) -> Callable[[], int]:
    calls = [0]

    def hook(mod: nn.Module, args: tuple) -> None:
        calls[0] += 1

    for m in modules:
        m.register_forward_pre_hook(hook)
    return lambda: calls[0]


@pytest.mark.parametrize("checkpointing", [False, True], ids=["off", "on"])
def test_backward_recomputes_each_layer_through_the_patched_modules(
    checkpointing: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _module((*LLAMA, *TORCH), checkpointing, torch.float32)
    layers = module.lm.model.layers
    mlp_calls = _count_forwards([layer.mlp for layer in layers])  # FrontierMLP (frontier.kernels.swiglu)
    ropes = [0]  # frontier.kernels.rope calls of the FrontierAttention modules
    real_rope = routing.rope
    monkeypatch.setattr(routing, "rope", lambda *a, **kw: ropes.__setitem__(0, ropes[0] + 1) or real_rope(*a, **kw))
    loss = module(*_batch())
    forward_mlp, forward_rope = mlp_calls(), ropes[0]
    assert (forward_mlp, forward_rope) == (len(layers), len(layers))
    loss.backward()
    recomputed_mlp, recomputed_rope = mlp_calls() - forward_mlp, ropes[0] - forward_rope
    if checkpointing:  # each layer once more, its rotary embedding routed to frontier.kernels.rope again
        assert (recomputed_mlp, recomputed_rope) == (len(layers), len(layers))
    else:
        assert (recomputed_mlp, recomputed_rope) == (0, 0)


def _saved_bytes(module: nn.Module) -> int:
    """Bytes autograd keeps for backward outside checkpointed regions (checkpoint stores its own inputs)."""
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(*_batch()).backward()
    return total[0]


def test_checkpointing_stores_less() -> None:
    overrides = (*LLAMA, *TORCH, "model.num_layers=4")
    plain, checkpointed = (_saved_bytes(_module(overrides, on, torch.float32)) for on in (False, True))
    assert checkpointed < plain / 2, (checkpointed, plain)


def test_evaluation_is_not_checkpointed(checkpoint_calls: Callable[[], int]) -> None:
    module = _module((*LLAMA, *TORCH), True, torch.float32)
    module(*_batch())
    assert checkpoint_calls() == 2  # training mode with grad: each layer
    with torch.no_grad():
        module(*_batch())
        module.eval()(*_batch())
    assert checkpoint_calls() == 2  # evaluation (the trainer's, under no_grad and eval()) stores nothing anyway


# --- the train stage ------------------------------------------------------------------------------------

RUN = ("model.dropout=0.1", "train.checkpoint.every_steps=3", "train.checkpoint.keep_last=3",
       "train.checkpoint.keep_best=false")  # fmt: skip


@pytest.fixture
def checkpoint_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], int]]:
    """Counts transformers' per-layer checkpoint calls (it binds torch's checkpoint when enabled)."""
    calls = [0]
    real = transformers.modeling_utils.checkpoint

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting)
    yield lambda: calls[0]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory, corpus: Any) -> Path:
    root = tmp_path_factory.mktemp("plain")
    train(params(*RUN), corpus.tokens, corpus.tokenizer, root / "out", root / "ckpt")
    return root / "out"


def test_train_run_has_the_same_losses(
    tmp_path: Path, corpus: Any, plain_run: Path, checkpoint_calls: Callable[[], int], caplog: pytest.LogCaptureFixture
) -> None:
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    train(params(*RUN, "engine.activation_checkpointing=true"), corpus.tokens, corpus.tokenizer, out, ckpt)
    # 6 steps x 1 micro-batch x 2 layers in training mode (the recomputation itself is not a new call)
    assert checkpoint_calls() == 6 * 2
    assert losses(out) == losses(plain_run)
    w0, w1 = weights(plain_run), weights(out)
    assert all(torch.equal(w1[k], w0[k]) for k in w0)

    # the switch is operational: a run checkpointed with it on resumes with it off and continues exactly
    shutil.rmtree(ckpt / "step_00000006")
    resumed = tmp_path / "resumed"
    with caplog.at_level(logging.INFO, logger="frontier.train"):
        train(params(*RUN), corpus.tokens, corpus.tokenizer, resumed, ckpt)
    assert any(r.startswith("resumed from") and r.endswith("at step 3") for r in caplog.messages), caplog.messages
    assert losses(resumed) == losses(plain_run)
    assert checkpoint_calls() == 6 * 2  # nothing checkpointed once it is off


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_zero_run_has_the_same_losses(
    tmp_path: Path, corpus: Any, checkpoint_calls: Callable[[], int], zero_stage: int
) -> None:
    # ZeRO-3: every parameter partitioned (no small one stays whole), so the recomputation must gather them again
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 0}}))
    run = (*RUN, "train.max_steps=3", f"engine.zero_stage={zero_stage}", f"engine.deepspeed_config={ds_json}")
    outs = []
    for on in (False, True):
        outs.append(tmp_path / f"out{on}")
        train(params(*run, f"engine.activation_checkpointing={str(on).lower()}"), corpus.tokens, corpus.tokenizer,
              outs[-1], tmp_path / f"ckpt{on}")  # fmt: skip
    assert checkpoint_calls() == 3 * 2
    assert losses(outs[1]) == losses(outs[0])


def test_finetune_takes_the_switch_from_train(tmp_path: Path, checkpoint_calls: Callable[[], int]) -> None:
    """LoRA (adapter dropout on) over the frozen base: the same per-step and held-out losses with it on."""
    from frontier.config import load_params
    from frontier.finetune.run import finetune
    from frontier.finetune.sft_data import build_sft_pairs
    from tests.eval.tiny import trained_run
    from tests.finetune.test_lora import FT_OVERRIDES
    from tests.finetune.test_sft_data import MODULES, prepared_dir

    short = [*FT_OVERRIDES, "finetune.max_steps=4", "finetune.log_every=1", "finetune.eval_every=0",
             "finetune.dropout=0.1"]  # fmt: skip
    build_sft_pairs(load_params(None, short), prepared_dir(tmp_path / "prepared", MODULES), tmp_path / "sft")
    base = trained_run()["out"] / "model"
    metrics = []
    for on in (False, True):
        p = load_params(None, [*short, f"engine.activation_checkpointing={str(on).lower()}"])
        metrics.append(finetune(p, base, tmp_path / "sft", tmp_path / f"out{on}", tmp_path / f"ckpt{on}"))
    assert checkpoint_calls() == 4 * 2  # 4 steps x 1 micro-batch x 2 layers of the base
    assert losses(tmp_path / "outTrue") == losses(tmp_path / "outFalse")
    assert metrics[1]["finetuned_heldout_loss"] == metrics[0]["finetuned_heldout_loss"]
