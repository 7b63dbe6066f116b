"""The CUDA fused AdamW against the CPU kernel (needs a GPU and a CUDA build of the extension)."""

from __future__ import annotations

import pytest
import torch

from frontier.optim import ops
from frontier.optim.fused_adamw import FusedAdamW

pytestmark = pytest.mark.gpu
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
HYPER = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.1}
# more than one launch's worth of tensors (24) and of chunks (320 x 65536), odd sizes, tails
SIZES = [(1,), (3,), (17,), (8,), (4097,), (65536,), (65537,)] * 4 + [(21_000_001,), (5, 203)]


def make_args(param_dtype, grad_dtype, state_dtype, copy, device, misaligned=False):
    gen = torch.Generator().manual_seed(0)

    def tensor(shape, dtype, scale=1.0, rand=False):
        x = (torch.rand if rand else torch.randn)(shape, generator=gen) * scale
        if misaligned:  # contiguous but 4 bytes off 16-byte alignment: the scalar path
            buf = torch.empty(x.numel() + 1, dtype=dtype, device=device)
            buf[1:].copy_(x.reshape(-1))
            return buf[1:].view(shape)
        return x.to(dtype).to(device)

    return (
        [tensor(s, param_dtype) for s in SIZES],
        [tensor(s, grad_dtype) for s in SIZES],
        [tensor(s, state_dtype, 0.1) for s in SIZES],
        [tensor(s, state_dtype, 0.01, rand=True) for s in SIZES],
        [torch.tensor(4.0, device=device) for _ in SIZES],
        [torch.zeros(s, dtype=BF16, device=device) for s in SIZES] if copy else [],
        torch.tensor([0.5], device=device),
        torch.zeros(1, device=device),
    )


def assert_matches(cuda_args, cpu_args) -> None:
    for cuda_list, cpu_list in zip(cuda_args, cpu_args):
        pairs = zip(cuda_list, cpu_list) if isinstance(cuda_list, list) else [(cuda_list, cpu_list)]
        for a, b in pairs:
            a = a.cpu()
            # same math, no FMA contraction, IEEE division and sqrt: bit-identical but for a rare
            # last-ulp difference of the device's pow() in the bias corrections
            assert float((a == b).float().mean()) > 0.999
            rtol = 1e-6 if a.dtype == F32 else 8e-3
            torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=1e-30)


@pytest.mark.parametrize(
    "combo", [(F32, F32, F32, False), (F32, BF16, BF16, True), (F32, F16, F32, True), (BF16, BF16, BF16, False)]
)
@pytest.mark.parametrize("misaligned", [False, True])
def test_cuda_op_matches_cpu_op(combo, misaligned) -> None:
    ops.load_ops()
    assert ops.has_kernel("cuda"), "the extension was built without its CUDA kernels"
    cuda_args = make_args(*combo, "cuda", misaligned)
    cpu_args = make_args(*combo, "cpu", misaligned)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # runs on the current (non-default) stream
        for _ in range(3):
            ops.fused_adamw_(*cuda_args, **HYPER, check_finite=True, seed=7)
    stream.synchronize()
    for _ in range(3):
        ops.fused_adamw_(*cpu_args, **HYPER, check_finite=True, seed=7)
    assert float(cuda_args[4][0]) == 7.0
    assert_matches(cuda_args, cpu_args)


def test_cuda_nonfinite_grad_skips_the_step() -> None:
    ops.load_ops()
    args = make_args(F32, BF16, BF16, True, "cuda")
    args[1][-2][12345] = float("nan")
    before = [[t.clone() for t in a] for a in args[:6]]
    ops.fused_adamw_(*args, **HYPER, check_finite=True, seed=0)
    assert float(args[7]) == 1.0
    # bit for bit, the planted NaN included (torch.equal calls NaN unequal to itself)
    for now, then in zip(args[:6], before):
        assert all(torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True) is None for a, b in zip(now, then))
    found = torch.zeros(1, device="cuda")
    ops.nonfinite_check_(args[1], torch.ones(1, device="cuda"), found)
    assert float(found) == 1.0


def test_fused_adamw_on_cuda_matches_torch_adamw() -> None:
    def params(device):
        gen = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter(torch.randn(s, generator=gen).to(device)) for s in [(1,), (1023,), (70001,)]]

    ours, ref = params("cuda"), params("cuda")
    fused = FusedAdamW(ours, lr=1e-3, weight_decay=0.1)
    torch_opt = torch.optim.AdamW(ref, lr=1e-3, weight_decay=0.1, foreach=False)
    gen = torch.Generator().manual_seed(1)
    for _ in range(100):
        for a, b in zip(ours, ref):
            a.grad = torch.randn(a.shape, generator=gen).cuda()
            b.grad = a.grad.clone()
        fused.step()
        torch_opt.step()
    for a, b in zip(ours, ref):
        assert float((a - b).abs().max() / b.abs().max()) <= 1e-6
