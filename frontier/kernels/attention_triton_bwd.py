"""Backward kernels of flash attention: delta = rowsum(dO * O), then dQ per query block and dK/dV
per key block over every query head of its group. Recipe, masking and shapes: attention_triton.py.
"""

from __future__ import annotations

from frontier.kernels.attention_triton import _bounds, _dot, _visible, _visible_t
from frontier.kernels.triton_utils import jit, tl, to_dtype


@jit
def attn_bwd_preprocess_kernel(
    OUT,
    DO,
    DELTA,
    stride_ob,
    stride_oh,
    stride_os,
    stride_dob,
    stride_doh,
    stride_dos,
    H,
    S,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """delta[b, h, i] = sum_d dO[b, h, i, d] * O[b, h, i, d] (float32)."""
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    row_ok = (offs_m < S)[:, None]
    o = tl.load(
        OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :], mask=row_ok, other=0.0
    )
    do = tl.load(
        DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dos + offs_d[None, :], mask=row_ok, other=0.0
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + (b * H + h) * S + offs_m, delta, mask=offs_m < S)


@jit
def _dq_inner(
    dq,
    q,
    do,
    lse2,
    delta,
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
            v = tl.load(v_ptrs, mask=(offs_n < S)[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        qk = _dot(q, tl.trans(k), None, PREC, F32)  # (BLOCK_M, BLOCK_N)
        if MASKED:
            qk = tl.where(_visible(offs_m, offs_n, row_ds, row_de, S, CAUSAL, HAS_DOC), qk, float("-inf"))
        p = tl.math.exp2(qk * qk_scale - lse2[:, None])
        dp = _dot(do, tl.trans(v), None, PREC, F32)
        ds = p * (dp - delta[:, None])
        dq = _dot(ds.to(k.dtype), k, dq, PREC, F32)
    return dq


@jit
def attn_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    DQ,
    LSE,
    DELTA,
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
    stride_dob,
    stride_doh,
    stride_dos,
    stride_dqb,
    stride_dqh,
    stride_dqs,
    H,
    GROUP,
    S,
    sm_scale,
    qk_scale,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DOC: tl.constexpr,
    PREC: tl.constexpr,
    F32: tl.constexpr,
):
    # fp32 scale math whoever launches (Inductor passes Python floats as fp64); see attn_fwd_kernel
    sm_scale = tl.cast(sm_scale, tl.float32)
    qk_scale = tl.cast(qk_scale, tl.float32)
    start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    hk = h // GROUP
    first = start_m * BLOCK_M
    offs_m = first + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < S
    q = tl.load(
        Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    do = tl.load(
        DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dos + offs_d[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    row_off = (b * H + h) * S
    lse2 = tl.load(LSE + row_off + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + row_off + offs_m, mask=row_ok, other=0.0)
    doc_off = b * S
    if HAS_DOC:
        row_ds = tl.load(DOC_START + doc_off + offs_m, mask=row_ok, other=0)
        row_de = tl.load(DOC_END + doc_off + offs_m, mask=row_ok, other=0)
    else:
        row_ds = offs_m
        row_de = offs_m
    last = tl.minimum(first + BLOCK_M, S) - 1
    lo, ulo, uhi, hi = _bounds(first, last, S, DOC_START + doc_off, DOC_END + doc_off, BLOCK_N, False, CAUSAL, HAS_DOC)
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    dq = _dq_inner(
        dq,
        q,
        do,
        lse2,
        delta,
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
    dq = _dq_inner(
        dq,
        q,
        do,
        lse2,
        delta,
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
    dq = _dq_inner(
        dq,
        q,
        do,
        lse2,
        delta,
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
    dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqs + offs_d[None, :]
    tl.store(dq_ptrs, to_dtype(dq * sm_scale, DQ.dtype.element_ty), mask=row_ok[:, None])


@jit
def _dkdv_inner(
    dk,
    dv,
    k,
    v,
    q_base,
    do_base,
    lse_base,
    delta_base,
    stride_qs,
    stride_dos,
    offs_n,
    key_ds,
    key_de,
    S,
    qk_scale,
    lo,
    hi,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DOC: tl.constexpr,
    PREC: tl.constexpr,
    F32: tl.constexpr,
):
    offs_d = tl.arange(0, D)
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_ptrs = q_base + offs_m[:, None] * stride_qs + offs_d[None, :]
        do_ptrs = do_base + offs_m[:, None] * stride_dos + offs_d[None, :]
        if MASKED:
            row_ok = offs_m < S
            q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
            lse2 = tl.load(lse_base + offs_m, mask=row_ok, other=0.0)
        else:
            q = tl.load(q_ptrs)
            lse2 = tl.load(lse_base + offs_m)
        qk_t = _dot(k, tl.trans(q), None, PREC, F32)  # (BLOCK_N, BLOCK_M): keys x queries
        if MASKED:
            qk_t = tl.where(_visible_t(offs_n, offs_m, key_ds, key_de, CAUSAL, HAS_DOC), qk_t, float("-inf"))
        p_t = tl.math.exp2(qk_t * qk_scale - lse2[None, :])
        if MASKED:
            do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0)
            delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        else:
            do = tl.load(do_ptrs)
            delta = tl.load(delta_base + offs_m)
        dv = _dot(p_t.to(do.dtype), do, dv, PREC, F32)
        dp_t = _dot(v, tl.trans(do), None, PREC, F32)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = _dot(ds_t.to(q.dtype), q, dk, PREC, F32)
    return dk, dv


@jit
def attn_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    DK,
    DV,
    LSE,
    DELTA,
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
    stride_dob,
    stride_doh,
    stride_dos,
    stride_dkb,
    stride_dkh,
    stride_dks,
    stride_dvb,
    stride_dvh,
    stride_dvs,
    H,
    GROUP,
    S,
    sm_scale,
    qk_scale,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DOC: tl.constexpr,
    PREC: tl.constexpr,
    F32: tl.constexpr,
):
    """One program per (key block, batch x KV head): loops over the GROUP query heads sharing it."""
    # fp32 scale math whoever launches (Inductor passes Python floats as fp64); see attn_fwd_kernel
    sm_scale = tl.cast(sm_scale, tl.float32)
    qk_scale = tl.cast(qk_scale, tl.float32)
    start_n = tl.program_id(0)
    bhk = tl.program_id(1)
    HK = H // GROUP
    b = (bhk // HK).to(tl.int64)
    hk = bhk % HK
    first = start_n * BLOCK_N
    offs_n = first + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    key_ok = (offs_n < S)[:, None]
    k = tl.load(
        K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :], mask=key_ok, other=0.0
    )
    v = tl.load(
        V + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vs + offs_d[None, :], mask=key_ok, other=0.0
    )
    doc_off = b * S
    if HAS_DOC:
        key_ds = tl.load(DOC_START + doc_off + offs_n, mask=offs_n < S, other=0)
        key_de = tl.load(DOC_END + doc_off + offs_n, mask=offs_n < S, other=0)
    else:
        key_ds = offs_n
        key_de = offs_n
    last = tl.minimum(first + BLOCK_N, S) - 1
    lo, ulo, uhi, hi = _bounds(first, last, S, DOC_START + doc_off, DOC_END + doc_off, BLOCK_M, True, CAUSAL, HAS_DOC)
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)
    for g in range(GROUP):
        h = hk * GROUP + g
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_dob + h * stride_doh
        lse_base = LSE + (b * H + h) * S
        delta_base = DELTA + (b * H + h) * S
        dk, dv = _dkdv_inner(
            dk,
            dv,
            k,
            v,
            q_base,
            do_base,
            lse_base,
            delta_base,
            stride_qs,
            stride_dos,
            offs_n,
            key_ds,
            key_de,
            S,
            qk_scale,
            lo,
            ulo,
            D,
            BLOCK_M,
            True,
            CAUSAL,
            HAS_DOC,
            PREC,
            F32,
        )
        dk, dv = _dkdv_inner(
            dk,
            dv,
            k,
            v,
            q_base,
            do_base,
            lse_base,
            delta_base,
            stride_qs,
            stride_dos,
            offs_n,
            key_ds,
            key_de,
            S,
            qk_scale,
            ulo,
            uhi,
            D,
            BLOCK_M,
            False,
            CAUSAL,
            HAS_DOC,
            PREC,
            F32,
        )
        dk, dv = _dkdv_inner(
            dk,
            dv,
            k,
            v,
            q_base,
            do_base,
            lse_base,
            delta_base,
            stride_qs,
            stride_dos,
            offs_n,
            key_ds,
            key_de,
            S,
            qk_scale,
            uhi,
            hi,
            D,
            BLOCK_M,
            True,
            CAUSAL,
            HAS_DOC,
            PREC,
            F32,
        )
    dk_ptrs = DK + b * stride_dkb + hk * stride_dkh + offs_n[:, None] * stride_dks + offs_d[None, :]
    dv_ptrs = DV + b * stride_dvb + hk * stride_dvh + offs_n[:, None] * stride_dvs + offs_d[None, :]
    tl.store(dk_ptrs, to_dtype(dk * sm_scale, DK.dtype.element_ty), mask=key_ok)
    tl.store(dv_ptrs, to_dtype(dv, DV.dtype.element_ty), mask=key_ok)
