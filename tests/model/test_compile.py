"""frontier.model.compile: model + loss as one graph, the same values and names as eager, no recompiles.

Inductor compiles on the CPU in tens of seconds, so one compiled Llama module (fixture) serves the value,
name and recompile tests; whether a forward is one graph is dynamo's question alone (torch._dynamo.explain,
no Inductor), so it is asked of more configurations.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch._dynamo.utils import counters

from frontier.model.build import build_model
from frontier.model.checkpointing import enable_activation_checkpointing
from frontier.model.compile import compile_for_training
from frontier.model.kernels import apply_kernels
from frontier.model.loss import CausalLMWithLoss
from tests.train.helpers import VOCAB, params

TORCH = tuple(f"kernels.{op}=torch" for op in ("attention", "rms_norm", "rope", "swiglu"))


def _module(*overrides: str) -> CausalLMWithLoss:
    """The train stage's module (built from params, kernels applied), in training mode, seed 0."""
    p = params(*overrides)
    torch.manual_seed(0)
    return CausalLMWithLoss(apply_kernels(build_model(p.model, VOCAB), p.kernels), p.kernels).train()


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (2, 17), generator=torch.Generator().manual_seed(seed))
    return ids[:, :-1], ids[:, 1:]  # (2, 16) inputs and next-token targets


def _loss_and_grads(module: CausalLMWithLoss, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss = module(*_batch(seed))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters()}


@pytest.fixture(scope="module")
def compiled() -> Iterator[tuple[CausalLMWithLoss, CausalLMWithLoss, list[str]]]:
    """(eager, compiled) copies of one Llama module and the compiled one's state_dict keys before compiling."""
    torch._dynamo.reset()
    eager, module = _module(*TORCH), _module(*TORCH)
    keys = list(module.state_dict())
    compile_for_training(module, zero_stage=0)
    yield eager, module, keys
    torch._dynamo.reset()


def test_compiled_loss_and_gradients_match_eager(compiled) -> None:
    eager, module, _ = compiled
    for seed in (1, 2):  # the second call runs the graph the first one compiled
        loss0, grads0 = _loss_and_grads(eager, seed)
        loss1, grads1 = _loss_and_grads(module, seed)
        # fp32 with fused kernels: only the rounding of a different evaluation order may differ; the
        # measured gap is ~1e-7 relative (one ulp of fp32), the bound is 10x that
        torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=0)
        assert grads1.keys() == grads0.keys()
        for name, grad in grads0.items():
            torch.testing.assert_close(grads1[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_names_and_weights_are_those_of_the_eager_module(compiled) -> None:
    _, module, keys = compiled
    assert list(module.state_dict()) == keys  # no _orig_mod. prefix: checkpoints and exports keep their names
    assert [n for n, _ in module.named_parameters()] == [n for n, _ in _module(*TORCH).named_parameters()]
    assert not any(k.startswith("_orig_mod") for k in module.lm.state_dict())


def test_dropout_draws_the_eager_masks_from_the_eager_generator() -> None:
    """GPT-2 with dropout: the same loss and gradients as eager, and the torch RNG left in the same state."""
    torch._dynamo.reset()
    overrides = ("model.arch=gpt2", "model.dropout=0.1")
    eager, module = _module(*overrides), _module(*overrides)
    compile_for_training(module, zero_stage=0)
    for seed in (1, 2):
        results = []
        for m in (eager, module):
            torch.manual_seed(100 + seed)
            results.append((*_loss_and_grads(m, seed), torch.rand(4)))
        (loss0, grads0, next0), (loss1, grads1, next1) = results
        torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=0)  # other masks: ~1e-4 (measured)
        for name, grad in grads0.items():
            torch.testing.assert_close(grads1[name], grad, rtol=1e-4, atol=1e-5, msg=name)
        assert torch.equal(next1, next0)
    torch._dynamo.reset()


def test_later_calls_reuse_the_compiled_graph(compiled) -> None:
    _, module, _ = compiled
    _loss_and_grads(module, 3)  # the graph exists (compiled by now or here)
    before = counters["stats"]["unique_graphs"]
    for seed in (4, 5):
        _loss_and_grads(module, seed)
    assert counters["stats"]["unique_graphs"] == before, "a call with the same shapes compiled again"


@pytest.mark.parametrize(
    "overrides",
    [
        TORCH,
        (),  # kernels: auto (the PyTorch references on the CPU)
        ("kernels.fused_linear_cross_entropy=true",),
        ("model.arch=gpt2",),
        ("model.num_kv_heads=2",),  # grouped-query attention
        ("checkpointing",),
    ],
    ids=["llama-torch", "llama-auto", "llama-fused-loss", "gpt2", "llama-gqa", "llama-checkpointing"],
)
def test_model_and_loss_are_one_graph(overrides: tuple[str, ...]) -> None:
    """What compile_for_training compiles with fullgraph=True traces without a graph break."""
    torch._dynamo.reset()
    if overrides == ("checkpointing",):
        module = _module()
        enable_activation_checkpointing(module.lm)
    else:
        module = _module(*overrides)
    explained = torch._dynamo.explain(module.forward)(*_batch(1))
    assert [b.reason for b in explained.break_reasons] == []
    assert explained.graph_count == 1
    torch._dynamo.reset()


@pytest.mark.parametrize("arch", ["llama", "llama-checkpointing", "gpt2"])
def test_packed_documents_are_one_graph(arch: str) -> None:
    """Document ids are an input of the graph like the tokens (a keyword down to the attention, or GPT-2's
    mask built from them): no Python state to guard on, no break."""
    torch._dynamo.reset()
    module = _module("model.arch=gpt2") if arch == "gpt2" else _module()
    if arch == "llama-checkpointing":
        enable_activation_checkpointing(module.lm)
    positions = torch.cat([torch.arange(9), torch.arange(7)]).expand(2, -1)  # (2, 16): two documents a row
    doc_ids = (torch.arange(16) >= 9).long().expand(2, -1)  # (2, 16)
    explained = torch._dynamo.explain(module.forward)(*_batch(1), positions, doc_ids)
    assert [b.reason for b in explained.break_reasons] == []
    assert explained.graph_count == 1
    torch._dynamo.reset()


def test_fullgraph_is_asked_for_where_the_graph_holds() -> None:
    """A graph break is an error, not a silent eager island, except under ZeRO-3 (its per-module fetch hooks);
    activation checkpointing is one graph too (see the one-graph test)."""
    module = _module(*TORCH)

    def breaks(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        torch._dynamo.graph_break()
        return x.sum() + y.sum()

    for zero_stage in (0, 2):
        module.forward = breaks
        compile_for_training(module, zero_stage=zero_stage)
        with pytest.raises(torch._dynamo.exc.Unsupported):
            module(*_batch(1))
    module.forward = breaks
    compile_for_training(module, zero_stage=3)
    assert module(*_batch(1)) == breaks(*_batch(1))
    torch._dynamo.reset()
