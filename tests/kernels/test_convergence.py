"""Convergence tier: a mini Llama trained with every fused kernel follows the reference loss curve.

Both runs start from the same weights and see the same batches; one routes RMSNorm, RoPE, SwiGLU,
attention (frontier.model.kernels.apply_kernels) and the loss (frontier.kernels.cross_entropy)
through the Triton kernels, the other through the PyTorch references.

Tolerance: |loss_triton - loss_reference| <= 2e-5 at every step. Both runs are float32; the kernels
differ from the references only in summation order and rounding (~1e-7 relative per op), and over 30
AdamW steps the measured gap stays near 1e-6 (about 20x below the bound). A kernel error as small as
0.1% in one op moves the curve by more than the bound within a few steps, and the loss must fall by
at least 1.0 so the comparison is between curves that actually learn.
"""

from __future__ import annotations

import torch

from frontier.config.kernels import KernelsConfig
from frontier.kernels.cross_entropy import cross_entropy
from frontier.model.kernels import apply_kernels
from tests.model.test_apply_kernels import tiny_llama

STEPS, BATCH, SEQ, VOCAB = 30, 1, 32, 128
LOSS_ATOL = 2e-5
DATA_SEED = 0


def _train(cfg: KernelsConfig) -> list[float]:
    # 2 query heads over 1 KV head (head dim 32): small enough for the interpreter, still GQA.
    model = apply_kernels(tiny_llama(num_attention_heads=2, num_key_value_heads=1), cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(DATA_SEED)
    losses = []
    for _ in range(STEPS):
        # Arithmetic sequences with a random start: a pattern the model can learn in a few steps.
        start = torch.randint(0, VOCAB, (BATCH, 1), generator=gen)
        ids = (start + 5 * torch.arange(SEQ + 1)) % VOCAB  # (B, S+1)
        logits = model(ids[:, :-1]).logits  # (B, S, V)
        loss = cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1), impl=cfg.cross_entropy)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_triton_kernels_follow_the_reference_loss_curve() -> None:
    kernels = _train(KernelsConfig(attention="triton", cross_entropy="triton", rms_norm="triton", rope="triton",
                                   swiglu="triton"))  # fmt: skip
    reference = _train(KernelsConfig(attention="torch", cross_entropy="torch", rms_norm="torch", rope="torch",
                                     swiglu="torch"))  # fmt: skip
    assert reference[0] - min(reference) > 1.0, f"the reference run did not learn: {reference}"
    gaps = [abs(a - b) for a, b in zip(kernels, reference, strict=True)]
    worst = max(range(STEPS), key=gaps.__getitem__)
    assert gaps[worst] <= LOSS_ATOL, (
        f"step {worst}: loss {kernels[worst]:.7f} with kernels vs {reference[worst]:.7f} reference "
        f"(gap {gaps[worst]:.2e} > {LOSS_ATOL:.0e})"
    )
