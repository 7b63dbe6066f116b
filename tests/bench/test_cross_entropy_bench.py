"""Cross-entropy benchmarks: the Triton kernel against torch eager, torch.compile and Liger-Kernel.

Run on a GPU with ``pytest tests/bench/test_cross_entropy_bench.py --benchmark-only``. The op is memory
bound: each result carries GB/s and its fraction of the measured copy bandwidth, counting the bytes any
implementation must move (forward: read the logits; forward+backward: read them and write the gradient).
Targets on H100: fwd+bwd at >= 85% of that floor and >= 2x eager.

Every round gets fresh logits (a non-leaf copy made outside the timed region), since the Triton path
writes the gradient over them; the gradient is taken w.r.t. those logits, as the lm_head would receive it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from frontier.kernels.cross_entropy import cross_entropy
from tests.bench.conftest import record

N_TOKENS = 8192  # e.g. 4 sequences of 2048 tokens
VOCABS = [32000, 128256]  # Llama-2, Llama-3


def _liger(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers import LigerCrossEntropyLoss

    return LigerCrossEntropyLoss()(logits, targets)


@functools.cache
def _compiled() -> Callable[..., torch.Tensor]:
    return torch.compile(F.cross_entropy)


IMPLS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "triton": lambda x, t: cross_entropy(x, t, impl="triton"),  # non-leaf logits: gradient written over them
    "triton_functional": lambda x, t: cross_entropy(x, t, impl="triton"),  # given a leaf: fresh gradient buffer
    "torch_eager": F.cross_entropy,
    "torch_compile": lambda x, t: _compiled()(x, t),
    "liger": _liger,
}


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_cross_entropy_bf16(benchmark, device_limits: dict, impl: str, vocab: int, mode: str) -> None:  # noqa: ANN001
    benchmark.group = f"cross_entropy bf16 N{N_TOKENS} V{vocab} {mode}"
    if impl == "liger":
        pytest.importorskip("liger_kernel")
    fn = IMPLS[impl]
    gen = torch.Generator(device="cuda").manual_seed(0)
    base = torch.randn(N_TOKENS, vocab, device="cuda", dtype=torch.bfloat16, generator=gen)
    targets = torch.randint(0, vocab, (N_TOKENS,), device="cuda", generator=gen)
    backward = mode == "fwd+bwd"

    def setup() -> tuple[tuple[torch.Tensor], dict]:
        leaf = base.detach().requires_grad_(backward)
        logits = leaf.clone() if backward and impl != "triton_functional" else leaf  # non-leaf: like lm_head
        torch.cuda.synchronize()
        return (logits,), {}

    def step(logits: torch.Tensor) -> None:
        with torch.set_grad_enabled(backward):
            loss = fn(logits, targets)
            if backward:
                torch.autograd.grad(loss, logits)
        torch.cuda.synchronize()

    step(*setup()[0])  # compile / autotune outside the measurement
    benchmark.pedantic(step, setup=setup, rounds=20, warmup_rounds=2)
    logits_bytes = N_TOKENS * vocab * base.element_size()
    record(benchmark, device_limits, bytes_moved=logits_bytes * (2 if backward else 1))
