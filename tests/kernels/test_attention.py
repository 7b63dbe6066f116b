"""Flash attention (frontier.kernels.attention) against a float64 reference.

On CPU the Triton kernels run under TRITON_INTERPRET=1 (set by tests/conftest.py), so shapes are
small; block sizes there are 32 queries x 16 keys (forward, dQ) and 32 keys x 16 queries (dK/dV),
so S = 67 / 127 cross several blocks and end mid-block. Tolerances: the kernel's error is at most
2x the error of PyTorch's own attention at the same precision (tests/kernels/tolerance.py).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from frontier.kernels.attention import (
    attention,
    attention_bwd,
    attention_fwd,
    attention_reference,
    attention_sdpa,
    visibility_mask,
)
from frontier.kernels.dispatch import KernelUnavailableError
from tests.kernels.tolerance import assert_close_to_reference, poison_

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@dataclass(frozen=True)
class Case:
    batch: int
    hq: int
    hkv: int
    seq: int
    dim: int
    dtype: torch.dtype
    causal: bool = True
    docs: tuple[tuple[int, ...], ...] | None = None  # document lengths per batch row

    def __str__(self) -> str:
        docs = "" if self.docs is None else "-docs" + "_".join(".".join(map(str, r)) for r in self.docs)
        return (
            f"B{self.batch}-H{self.hq}/{self.hkv}-S{self.seq}-D{self.dim}-{str(self.dtype)[6:]}"
            f"-{'causal' if self.causal else 'full'}{docs}"
        )


def doc_ids_from_lengths(lengths: tuple[tuple[int, ...], ...], dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """(B, S) non-decreasing ids (not starting at 0, with gaps) from per-row document lengths."""
    rows = [torch.repeat_interleave(torch.arange(len(r)) * 3 + 7, torch.tensor(r)) for r in lengths]
    return torch.stack(rows).to(dtype)


CASES = [
    Case(2, 4, 2, 67, 32, F32),  # GQA, S ends mid-block
    Case(2, 4, 2, 67, 32, BF16),
    Case(2, 4, 2, 67, 32, F16),
    Case(1, 2, 1, 1, 16, F32),  # a single token
    Case(1, 4, 1, 127, 16, BF16),  # one KV head shared by four
    Case(1, 2, 2, 64, 16, F32),  # exact multiple of every block
    Case(1, 2, 1, 40, 64, F16),
    Case(1, 1, 1, 33, 128, BF16),
    Case(2, 2, 2, 50, 32, F32, causal=False),
    Case(2, 2, 1, 50, 32, BF16, causal=False),
    # Documents: several per row, a one-token document, one spanning whole blocks (unmasked path).
    Case(2, 4, 2, 67, 32, F32, docs=((10, 1, 30, 26), (67,))),
    Case(2, 4, 2, 67, 32, BF16, docs=((1, 40, 1, 25), (3, 64))),
    Case(1, 2, 1, 127, 16, F32, docs=((5, 100, 22),)),
    Case(2, 2, 2, 67, 16, F16, causal=False, docs=((10, 1, 30, 26), (40, 27))),
    Case(1, 2, 1, 127, 16, F32, causal=False, docs=((5, 100, 22),)),
]


def _inputs(case: Case, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(case.batch, case.hq, case.seq, case.dim, generator=gen).to(case.dtype)
    k = torch.randn(case.batch, case.hkv, case.seq, case.dim, generator=gen).to(case.dtype)
    v = torch.randn(case.batch, case.hkv, case.seq, case.dim, generator=gen).to(case.dtype)
    do = torch.randn(case.batch, case.hq, case.seq, case.dim, generator=gen).to(case.dtype)
    return q, k, v, do


def _reference_grads(q, k, v, do, *, upcast: bool, **kw) -> tuple[torch.Tensor, ...]:  # noqa: ANN001
    """out, dq, dk, dv of the reference; float64 inputs when upcast (the truth), else the inputs' dtype."""
    leaves = [(x.double() if upcast else x).detach().requires_grad_() for x in (q, k, v)]
    out = attention_reference(*leaves, upcast=upcast, **kw)
    out.backward(do.to(out.dtype))
    return (out, *(x.grad for x in leaves))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_kernels_match_reference(case: Case) -> None:
    q, k, v, do = _inputs(case, seed=zlib.crc32(str(case).encode()))
    doc_ids = None if case.docs is None else doc_ids_from_lengths(case.docs)
    assert doc_ids is None or doc_ids.shape == (case.batch, case.seq)
    scale = case.dim**-0.5
    kw = dict(causal=case.causal, doc_ids=doc_ids, scale=scale)

    out, lse = poison_(torch.empty_like(q)), poison_(q.new_empty(q.shape[:3], dtype=torch.float32))
    attention_fwd(q, k, v, doc_ids, case.causal, scale, out=out, lse=lse)
    dq, dk, dv = (poison_(torch.empty_like(x)) for x in (q, k, v))
    attention_bwd(do, q, k, v, out, lse, doc_ids, case.causal, scale, dq=dq, dk=dk, dv=dv)

    truth = _reference_grads(q, k, v, do, upcast=True, **kw)
    torch_lowp = _reference_grads(q, k, v, do, upcast=False, **kw)
    for name, got, ref64, ref_lp in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), truth, torch_lowp):
        assert got.dtype == case.dtype
        assert_close_to_reference(got, ref64, ref_lp, k=2.0, name=f"{case} {name}")

    # The saved logsumexp (log2 units) of the scaled, masked scores of the same (rounded) inputs.
    group = case.hq // case.hkv
    scores = q.double() @ k.double().repeat_interleave(group, 1).transpose(-1, -2) * scale  # (B, Hq, S, S)
    mask = visibility_mask(case.seq, causal=case.causal, doc_ids=doc_ids, device=q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(lse.double() * math.log(2), scores.logsumexp(-1), rtol=1e-5, atol=1e-5)


def test_public_autograd_path_with_strided_inputs() -> None:
    """attention(impl='triton') through the registered op and its autograd: (B, S, H, D) views, int32
    doc ids, a custom scale, and a gradient that is not contiguous."""
    gen = torch.Generator().manual_seed(1)
    b, s, hq, hkv, d = 2, 45, 4, 2, 32
    q = torch.randn(b, s, hq, d, generator=gen).transpose(1, 2)  # (B, Hq, S, D), strided
    k = torch.randn(b, s, hkv, d, generator=gen).transpose(1, 2)
    v = torch.randn(b, s, hkv, d, generator=gen).transpose(1, 2)
    do = torch.randn(b, s, hq, d, generator=gen).transpose(1, 2)
    doc_ids = doc_ids_from_lengths(((20, 1, 24), (45,)), torch.int32)
    kw = dict(causal=True, doc_ids=doc_ids, scale=0.3)

    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = attention(*leaves, impl="triton", **kw)
    assert out.shape == (b, hq, s, d) and out.stride() == q.stride()  # output keeps q's layout
    out.backward(do)
    truth = _reference_grads(q, k, v, do, upcast=True, **kw)
    torch_f32 = _reference_grads(q, k, v, do, upcast=False, **kw)
    for name, got, ref64, ref32 in zip(("out", "dq", "dk", "dv"), (out, *(x.grad for x in leaves)), truth, torch_f32):
        assert_close_to_reference(got, ref64, ref32, name=name)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("docs", [None, ((3, 1, 12), (16,))])
def test_sdpa_and_torch_impls_agree(causal: bool, docs: tuple | None) -> None:
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 16, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 2, 16, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 2, 16, 8, generator=gen, dtype=torch.float64)
    doc_ids = None if docs is None else doc_ids_from_lengths(docs)
    ref = attention(q, k, v, causal=causal, doc_ids=doc_ids, impl="torch")
    torch.testing.assert_close(attention(q, k, v, causal=causal, doc_ids=doc_ids, impl="sdpa"), ref)
    torch.testing.assert_close(attention_sdpa(q, k, v, causal=causal, doc_ids=doc_ids), ref)
    torch.testing.assert_close(attention(q, k, v, causal=causal, doc_ids=doc_ids), ref)  # auto on CPU

    # Independent check of the reference's masking: row by row, softmax over the visible keys only.
    kr, vr = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    ids = torch.zeros(2, 16) if doc_ids is None else doc_ids
    for i in range(16):
        keys = [j for j in range(16) if (j <= i or not causal)]
        for bi in range(2):
            vis = torch.tensor([j for j in keys if ids[bi, j] == ids[bi, i]])
            w = (q[bi, :, i, None, :] @ kr[bi][:, vis].transpose(-1, -2) / math.sqrt(8)).softmax(-1)  # (H, 1, n)
            torch.testing.assert_close(ref[bi, :, i], (w @ vr[bi][:, vis])[:, 0])


def test_opcheck_forward_and_backward_ops() -> None:
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 20, 16, generator=gen, requires_grad=True)
    k = torch.randn(1, 1, 20, 16, generator=gen, requires_grad=True)
    v = torch.randn(1, 1, 20, 16, generator=gen, requires_grad=True)
    doc_ids = doc_ids_from_lengths(((7, 13),))
    torch.library.opcheck(torch.ops.frontier.attention_fwd, (q, k, v, doc_ids, True, 0.25))
    torch.library.opcheck(torch.ops.frontier.attention_fwd, (q, k, v, None, False, 0.25))
    out, lse = torch.ops.frontier.attention_fwd(q, k, v, None, True, 0.25)
    do = torch.randn_like(q)
    args = (do, q.detach(), k.detach(), v.detach(), out.detach(), lse, None, True, 0.25)
    torch.library.opcheck(torch.ops.frontier.attention_bwd, args)


def test_rejects_bad_inputs() -> None:
    q, k = torch.randn(1, 4, 8, 16), torch.randn(1, 3, 8, 16)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        attention(q, k, k)
    with pytest.raises(KernelUnavailableError, match="is not one of"):
        attention(q, q, q, impl="flash")
    with pytest.raises(KernelUnavailableError, match="power-of-two head dim"):
        attention(torch.randn(1, 1, 8, 24), torch.randn(1, 1, 8, 24), torch.randn(1, 1, 8, 24), impl="triton")
    with pytest.raises(ValueError, match="doc_ids must be integer"):
        attention(q, q, q, doc_ids=torch.zeros(1, 7, dtype=torch.int64))


# Compiles the kernels for an H100 (sm_90a: TTIR -> TTGIR -> PTX -> cubin with Triton's bundled ptxas)
# in a process without the interpreter, at the GPU block sizes: catches what only the real compiler
# rejects (types, layouts, shared memory), on machines without a GPU. Runs as a script (no pytest).
_COMPILE_SM90 = """
import torch
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile as triton_compile

import frontier.kernels.attention_triton as fwd
import frontier.kernels.attention_triton_bwd as bwd
from frontier.kernels.attention import _config, _dot_args

assert type(fwd.attn_fwd_kernel).__name__ == "JITFunction"
POINTERS = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "OUT": "*bf16", "DO": "*bf16", "DQ": "*bf16",
            "DK": "*bf16", "DV": "*bf16", "LSE": "*fp32", "DELTA": "*fp32", "DOC_START": "*i32", "DOC_END": "*i32"}
for name, fn in [("fwd", fwd.attn_fwd_kernel), ("dq", bwd.attn_bwd_dq_kernel),
                 ("dkdv", bwd.attn_bwd_dkdv_kernel), ("pre", bwd.attn_bwd_preprocess_kernel)]:
    cfg = _config(name, 128, torch.bfloat16)
    options = {"num_warps": cfg.pop("num_warps"), "num_stages": cfg.pop("num_stages", 1)}
    constexprs = dict(D=128, **cfg)
    if name != "pre":
        constexprs.update(CAUSAL=True, HAS_DOC=True, **_dot_args(torch.bfloat16))
    signature = {a: "constexpr" if a in constexprs else POINTERS.get(a, "fp32" if "scale" in a else "i32")
                 for a in fn.arg_names}
    compiled = triton_compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                              options=options)
    assert compiled.asm["cubin"] and compiled.metadata.shared <= 227 * 1024, (name, compiled.metadata.shared)
    assert name == "pre" or "wgmma" in compiled.asm["ptx"], name  # Hopper tensor-core MMAs
    print(name, "ok")
"""


def test_kernels_compile_for_sm90() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_SM90],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["fwd", "ok", "dq", "ok", "dkdv", "ok", "pre", "ok"]


# ---------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [BF16, F16])
@pytest.mark.parametrize("dim", [64, 128])
def test_gpu_blocks_match_reference(dtype: torch.dtype, dim: int) -> None:
    """The GPU block sizes (128 x 64 etc.) on a longer, ragged sequence with documents and GQA."""
    case = Case(2, 8, 2, 1000, dim, dtype, docs=((300, 1, 500, 199), (1000,)))
    q, k, v, do = (x.cuda() for x in _inputs(case, seed=4))
    doc_ids = doc_ids_from_lengths(case.docs).cuda()
    kw = dict(causal=True, doc_ids=doc_ids)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = attention(*leaves, impl="triton", **kw)
    out.backward(do)
    truth = _reference_grads(q, k, v, do, upcast=True, **kw)
    torch_lowp = _reference_grads(q, k, v, do, upcast=False, **kw)
    for name, got, ref64, ref_lp in zip(("out", "dq", "dk", "dv"), (out, *(x.grad for x in leaves)), truth, torch_lowp):
        assert_close_to_reference(got, ref64, ref_lp, name=name)


@pytest.mark.gpu
def test_gpu_opcheck_and_compile_fullgraph() -> None:
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, h, 300, 64, generator=gen).cuda().to(BF16).requires_grad_() for h in (4, 2, 2))
    doc_ids = doc_ids_from_lengths(((100, 200), (300,))).cuda()
    torch.library.opcheck(torch.ops.frontier.attention_fwd, (q, k, v, doc_ids, True, 0.125))

    def loss(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attention(q, k, v, doc_ids=doc_ids, impl="triton").float().square().sum()

    eager = torch.autograd.grad(loss(q, k, v), (q, k, v))
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(q, k, v), (q, k, v))
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
def test_gpu_auto_uses_sdpa_for_unsupported_head_dims() -> None:
    q, k, v = (torch.randn(1, 2, 64, 96, device="cuda", dtype=BF16) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v), attention_sdpa(q, k, v))
    with pytest.raises(KernelUnavailableError, match="power-of-two head dim"):
        attention(q, k, v, impl="triton")
