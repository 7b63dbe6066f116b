"""Triton kernels of causal / document-masked flash attention (the FlashAttention-2 recipe):
the forward and the masking helpers the backward kernels (attention_triton_bwd.py) share.

Forward: one program per (query block, batch x query head) streams key/value blocks with an online
softmax and saves each row's logsumexp in log2 units (float32; the natural logsumexp of the scaled
scores times log2 e), which the backward's exp2 uses as is. Backward: a preprocess kernel computes
delta = rowsum(dO * O); one kernel per key block accumulates dK and dV over every query head of its
group (grouped-query attention without materialising repeated K/V, and without atomics); one
kernel per query block accumulates dQ.

Masking. A query i sees key j when j <= i (causal) and both lie in the same document. Documents are
contiguous runs of equal ids, so the launcher turns the ids into each token's document start and
end (doc_start[i] <= j < doc_end[i] <=> same document), and for j <= i "same document" is simply
j >= doc_start[i]. Each program splits its range of the other axis into masked head blocks, fully
visible blocks (no mask, no bounds checks: the fast path) and masked tail blocks, and skips blocks
no row can see: packed short documents cost only their own blocks.

Shapes: Q, OUT (B, H, S, D); K, V (B, H // GROUP, S, D), last dimension contiguous; LSE, DELTA
(B, H, S) float32 contiguous; DOC_START, DOC_END (B, S) int32 contiguous.
"""

from __future__ import annotations

from frontier.kernels.triton_utils import jit, tl, to_dtype


@jit
def _dot(a, b, acc, PREC: tl.constexpr, F32: tl.constexpr):
    """a @ b (+ acc) with fp32 accumulation. F32: feed the dot fp32 copies of the (exactly widened)
    operands; set only under the Triton interpreter, whose bf16 dot multiplies raw bit patterns."""
    if F32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PREC)


@jit
def _bounds(
    first,
    last,
    S,
    ds_ptr,
    de_ptr,
    STEP: tl.constexpr,
    KEYS_OWN: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DOC: tl.constexpr,
):
    """Ranges of the other axis for an own block of tokens [first, last]: lo <= ulo <= uhi <= hi.

    [lo, hi) holds every index some own token can see; [ulo, uhi) only STEP-aligned blocks that every
    own token sees whole (processed without a mask). KEYS_OWN: the own tokens are keys (dK/dV kernel)
    and the other axis is queries; otherwise the own tokens are queries.
    """
    zero = first * 0
    if HAS_DOC:
        ds_first = tl.load(ds_ptr + first)
        ds_last = tl.load(ds_ptr + last)
        de_first = tl.load(de_ptr + first)
        de_last = tl.load(de_ptr + last)
    else:
        ds_first = zero
        ds_last = zero
        de_first = zero + S
        de_last = zero + S
    if KEYS_OWN:
        if CAUSAL:
            lo = first // STEP * STEP  # queries i >= j, in the same document: i < doc_end[j]
            ulo = (last + STEP - 1) // STEP * STEP
        else:
            lo = ds_first // STEP * STEP
            ulo = (ds_last + STEP - 1) // STEP * STEP
        hi = de_last
        uhi = de_first // STEP * STEP
    else:
        lo = ds_first // STEP * STEP  # keys from the first row's document start
        ulo = (ds_last + STEP - 1) // STEP * STEP
        if CAUSAL:
            hi = last + 1
            uhi = (first + 1) // STEP * STEP
        else:
            hi = de_last
            uhi = de_first // STEP * STEP
    ulo = tl.minimum(tl.maximum(ulo, lo), hi)
    uhi = tl.minimum(tl.maximum(uhi, ulo), hi)
    return lo, ulo, uhi, hi


@jit
def _visible(rows, cols, row_ds, row_de, S, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr):
    """(rows, cols) mask: query rows[i] sees key cols[j] (keys past the end are invisible)."""
    if CAUSAL:
        ok = cols[None, :] <= rows[:, None]  # keys past the end lie after every real row
    else:
        ok = cols[None, :] < S
    if HAS_DOC:
        ok = ok & (cols[None, :] >= row_ds[:, None])
        if not CAUSAL:
            ok = ok & (cols[None, :] < row_de[:, None])
    return ok


@jit
def _visible_t(keys, queries, key_ds, key_de, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr):
    """(keys, queries) mask, the transpose of _visible, from the keys' document bounds.

    Queries past the end need no mask: their q, dO and delta load as 0, so they add exactly 0."""
    if CAUSAL:
        ok = queries[None, :] >= keys[:, None]
    else:
        ok = queries[None, :] >= 0
    if HAS_DOC:
        ok = ok & (queries[None, :] < key_de[:, None])
        if not CAUSAL:
            ok = ok & (queries[None, :] >= key_ds[:, None])
    return ok


@jit
def _fwd_inner(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    v_base,
    stride_ks,
    stride_vs,
    offs_m,
    row_ds,
    row_de,
    S,
    qk_scale,
    lo,
    hi,
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DOC: tl.constexpr,
    PREC: tl.constexpr,
    F32: tl.constexpr,
):
    offs_d = tl.arange(0, D)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[:, None] * stride_ks + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vs + offs_d[None, :]
        if MASKED:
            k = tl.load(k_ptrs, mask=(offs_n < S)[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
        qk = _dot(q, tl.trans(k), None, PREC, F32)  # (BLOCK_M, BLOCK_N) fp32
        if MASKED:
            qk = tl.where(_visible(offs_m, offs_n, row_ds, row_de, S, CAUSAL, HAS_DOC), qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen nothing yet
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_use = m_new
        p = tl.math.exp2(qk * qk_scale - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptrs, mask=(offs_n < S)[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], PREC, F32)
        m_i = m_new
    return acc, l_i, m_i


@jit
def attn_fwd_kernel(
    Q,
    K,
    V,
    OUT,
    LSE,
    DOC_START,
    DOC_END,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_ob,
    stride_oh,
    stride_os,
    H,
    GROUP,
    S,
    qk_scale,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DOC: tl.constexpr,
    PREC: tl.constexpr,
    F32: tl.constexpr,
):
    # Inductor passes Python floats to user kernels as fp64 (Triton's launcher, fp32): fix the math's
    # dtype here, or fp64 scores reach tl.dot's fp32 accumulator and compilation fails.
    qk_scale = tl.cast(qk_scale, tl.float32)
    # Heaviest (last) causal query blocks first: better tail balance across the grid.
    start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    hk = h // GROUP
    first = start_m * BLOCK_M
    offs_m = first + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < S
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    doc_off = b * S
    if HAS_DOC:
        row_ds = tl.load(DOC_START + doc_off + offs_m, mask=row_ok, other=0)
        row_de = tl.load(DOC_END + doc_off + offs_m, mask=row_ok, other=0)
    else:
        row_ds = offs_m
        row_de = offs_m
    last = tl.minimum(first + BLOCK_M, S) - 1
    lo, ulo, uhi, hi = _bounds(first, last, S, DOC_START + doc_off, DOC_END + doc_off, BLOCK_N, False, CAUSAL, HAS_DOC)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        stride_ks,
        stride_vs,
        offs_m,
        row_ds,
        row_de,
        S,
        qk_scale,
        lo,
        ulo,
        D,
        BLOCK_N,
        True,
        CAUSAL,
        HAS_DOC,
        PREC,
        F32,
    )
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        stride_ks,
        stride_vs,
        offs_m,
        row_ds,
        row_de,
        S,
        qk_scale,
        ulo,
        uhi,
        D,
        BLOCK_N,
        False,
        CAUSAL,
        HAS_DOC,
        PREC,
        F32,
    )
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        stride_ks,
        stride_vs,
        offs_m,
        row_ds,
        row_de,
        S,
        qk_scale,
        uhi,
        hi,
        D,
        BLOCK_N,
        True,
        CAUSAL,
        HAS_DOC,
        PREC,
        F32,
    )
    # Every real row sees at least itself, so l_i > 0 there; padding rows are never stored.
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    o_ptrs = OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :]
    tl.store(o_ptrs, to_dtype(out, OUT.dtype.element_ty), mask=row_ok[:, None])
    lse = m_i + tl.math.log2(l_safe)  # log2 units: the backward's exp2 needs no conversion
    tl.store(LSE + (b * H + h) * S + offs_m, lse, mask=row_ok)
