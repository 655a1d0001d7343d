"""Flash attention backward kernels.

Three launches, no atomics:
1. ``attn_bwd_delta_kernel``: delta_i = sum_d dout_i * out_i (fp32, laid out like lse);
2. ``attn_bwd_dkdv_kernel``: one program per (key block, batch, kv head) accumulates dk/dv
   over every query head of its GQA group and every query block that can see it;
3. ``attn_bwd_dq_kernel``: one program per (query block, batch, q head) accumulates dq.
Probabilities are recomputed from lse: p = exp(s - lse). With a softcap the chain rule adds
the factor 1 - tanh^2; ALiBi is a constant shift and adds nothing.

q/k/v/out/dout take any strides; dq/dk/dv (allocated like q/k/v, contiguous) and lse/delta
(contiguous fp32) are addressed by computed offsets to keep the scalar-argument count down.
"""
import triton
import triton.language as tl

from ._common import (LOG2E, full_block_range, mm, row_stat_base, scores, seq_bounds, token_base,
                      visible)


@triton.jit
def attn_bwd_delta_kernel(
    O, DO, DELTA, CU_Q,
    stride_ob, stride_os, stride_oh, stride_od,
    stride_dob, stride_dos, stride_doh, stride_dod,
    seqlen_q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    q_start, sq, _, _ = seq_bounds(CU_Q, CU_Q, b, seqlen_q, seqlen_q, IS_VARLEN)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < sq) & (offs_d[None, :] < HEAD_DIM)
    pos = (q_start + rows).to(tl.int64)[:, None]
    b64 = b.to(tl.int64)
    o = tl.load(O + b64 * stride_ob + h * stride_oh + pos * stride_os + offs_d[None, :] * stride_od,
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b64 * stride_dob + h * stride_doh + pos * stride_dos + offs_d[None, :] * stride_dod,
                 mask=mask, other=0.0).to(tl.float32)
    base = row_stat_base(b, h, tl.num_programs(2), seqlen_q, q_start, IS_VARLEN)
    tl.store(DELTA + base + rows, tl.sum(o * do, 1), mask=rows < sq)


@triton.jit
def _load_lse_log2(LSE, rows, sq):
    """lse in log2 units; a fully masked row (-inf) becomes 0 so that exp2(-inf - 0) = 0."""
    lse = tl.load(LSE + rows, mask=rows < sq, other=0.0)
    return tl.where(lse == float("-inf"), 0.0, lse * LOG2E)


@triton.jit
def _dkdv_block(k, v, dk, dv, q_base, do_base, lse_base, delta_base, stride_qs, stride_dos, q_start,
                start_m, full_lo, full_hi, offs_m, d_ok, cols, sq, sk, diag, sm_scale, softcap,
                slope, window_left, window_right, HAS_SOFTCAP: tl.constexpr,
                HAS_ALIBI: tl.constexpr, DOT_FP32: tl.constexpr, PREC: tl.constexpr):
    """dk/dv contributions of one query block. The element mask is skipped for blocks whose
    rows are all inside the sequence and see every column of this program's block (see
    full_block_range; columns past the key length only touch dk/dv rows that are never
    stored). A uniform run-time branch keeps one pipelined loop."""
    rows = start_m + offs_m
    qpos = (q_start + rows).to(tl.int64)[:, None]
    q_mask = (rows[:, None] < sq) & d_ok[None, :]
    q = tl.load(q_base + qpos * stride_qs, mask=q_mask, other=0.0)
    do = tl.load(do_base + qpos * stride_dos, mask=q_mask, other=0.0)
    lse = _load_lse_log2(lse_base, rows, sq)
    delta = tl.load(delta_base + rows, mask=rows < sq, other=0.0)
    # Transposed scores: [BLOCK_N, BLOCK_M], so dk/dv come out of plain dots.
    st, tt = scores(mm(k, tl.trans(q), DOT_FP32, PREC), cols, rows, -diag,
                    sm_scale, softcap, slope, HAS_SOFTCAP, HAS_ALIBI)
    pt = tl.exp2(st - lse[None, :])
    partial = (start_m < full_lo) | (start_m >= full_hi)
    if partial:
        pt = tl.where(tl.trans(visible(rows, cols, sq, sk, diag, window_left, window_right)), pt, 0.0)
    dv += mm(pt.to(do.dtype), do, DOT_FP32, PREC)
    dpt = mm(v, tl.trans(do), DOT_FP32, PREC)
    if partial:
        # masked pairs' dP is 0, not dO . V: with NaN / inf in a V row, pt = 0 would still give
        # 0 * NaN in dS (the reference's rule). Mask recomputed: cheaper than keeping it live.
        dpt = tl.where(tl.trans(visible(rows, cols, sq, sk, diag, window_left, window_right)), dpt, 0.0)
    dst = pt * (dpt - delta[None, :])
    if HAS_SOFTCAP:
        dst = dst * (1.0 - tt * tt)
    dk += mm(dst.to(q.dtype), q, DOT_FP32, PREC)
    return dk, dv


@triton.jit
def attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, CU_Q, CU_K, ALIBI,
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_dob, stride_dos, stride_doh, stride_dod,
    stride_ab, stride_ah,
    seqlen_q, seqlen_k, group,
    sm_scale, softcap, window_left, window_right,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
    DOT_FP32: tl.constexpr, PREC: tl.constexpr,
):
    pid_n = tl.program_id(0)
    b = tl.program_id(1)
    hk = tl.program_id(2)
    q_start, sq, k_start, sk = seq_bounds(CU_Q, CU_K, b, seqlen_q, seqlen_k, IS_VARLEN)
    n_start = pid_n * BLOCK_N
    if n_start >= sk:
        return
    diag = sk - sq
    b64 = b.to(tl.int64)

    cols = n_start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_m = tl.arange(0, BLOCK_M)
    d_ok = offs_d < HEAD_DIM
    kv_mask = (cols[:, None] < sk) & d_ok[None, :]
    kpos = (k_start + cols).to(tl.int64)[:, None]
    k = tl.load(K + b64 * stride_kb + hk * stride_kh + kpos * stride_ks + offs_d[None, :] * stride_kd,
                mask=kv_mask, other=0.0)
    v = tl.load(V + b64 * stride_vb + hk * stride_vh + kpos * stride_vs + offs_d[None, :] * stride_vd,
                mask=kv_mask, other=0.0)

    # Query rows that see some column of this block: cols - diag - window_right ..
    # cols - diag + window_left.
    last_col = tl.minimum(n_start + BLOCK_N, sk) - 1
    lo = tl.maximum(n_start - diag - window_right, 0)
    lo = (lo // BLOCK_M) * BLOCK_M
    hi = tl.minimum(last_col - diag + window_left + 1, sq)

    # Row blocks needing no mask: the column-loop split, transposed (-diag, sides swapped).
    full_lo, full_hi = full_block_range(lo, hi, n_start, n_start + BLOCK_N - 1, -diag, window_right,
                                        window_left, sq, BLOCK_M)

    n_heads_k = tl.num_programs(2)
    n_heads_q = n_heads_k * group
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for g in range(0, group):
        h = hk * group + g
        slope = 0.0
        if HAS_ALIBI:
            slope = tl.load(ALIBI + b * stride_ab + h * stride_ah)
        q_base = Q + b64 * stride_qb + h * stride_qh + offs_d[None, :] * stride_qd
        do_base = DO + b64 * stride_dob + h * stride_doh + offs_d[None, :] * stride_dod
        stat = row_stat_base(b, h, n_heads_q, seqlen_q, q_start, IS_VARLEN)
        lse_base = LSE + stat
        delta_base = DELTA + stat
        for start_m in range(lo, hi, BLOCK_M):
            dk, dv = _dkdv_block(k, v, dk, dv, q_base, do_base, lse_base, delta_base, stride_qs,
                                 stride_dos, q_start, start_m, full_lo, full_hi, offs_m, d_ok, cols,
                                 sq, sk, diag, sm_scale, softcap, slope, window_left, window_right,
                                 HAS_SOFTCAP, HAS_ALIBI, DOT_FP32, PREC)

    dk = dk * sm_scale
    tok = token_base(b, k_start, seqlen_k, IS_VARLEN) + cols
    offs = (tok[:, None] * n_heads_k + hk) * HEAD_DIM + offs_d[None, :]
    tl.store(DK + offs, dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + offs, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_block(q, do, lse, delta, dq, k_base, v_base, stride_ks, stride_vs, k_start, start_n,
              full_lo, full_hi, offs_n, d_ok, rows, sq, sk, diag, sm_scale, softcap, slope,
              window_left, window_right, HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
              DOT_FP32: tl.constexpr, PREC: tl.constexpr):
    """dq contribution of one key block (element mask skipped for blocks inside the sequence
    and the window: every row sees every key there)."""
    cols = start_n + offs_n
    kpos = (k_start + cols).to(tl.int64)[:, None]
    kv_mask = (cols[:, None] < sk) & d_ok[None, :]
    k = tl.load(k_base + kpos * stride_ks, mask=kv_mask, other=0.0)
    v = tl.load(v_base + kpos * stride_vs, mask=kv_mask, other=0.0)
    s, t = scores(mm(q, tl.trans(k), DOT_FP32, PREC), rows, cols, diag, sm_scale, softcap,
                  slope, HAS_SOFTCAP, HAS_ALIBI)
    p = tl.exp2(s - lse[:, None])
    dp = mm(do, tl.trans(v), DOT_FP32, PREC)
    if (start_n < full_lo) | (start_n >= full_hi):
        # masked pairs: p = 0 and dP = 0, not dO . V (0 * NaN from a V row this row cannot see
        # would reach its dq; the reference's rule)
        vis = visible(rows, cols, sq, sk, diag, window_left, window_right)
        p = tl.where(vis, p, 0.0)
        dp = tl.where(vis, dp, 0.0)
    ds = p * (dp - delta[:, None])
    if HAS_SOFTCAP:
        ds = ds * (1.0 - t * t)
    dq += mm(ds.to(k.dtype), k, DOT_FP32, PREC)
    return dq


@triton.jit
def attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU_Q, CU_K, ALIBI,
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_dob, stride_dos, stride_doh, stride_dod,
    stride_ab, stride_ah,
    seqlen_q, seqlen_k, group,
    sm_scale, softcap, window_left, window_right,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
    DOT_FP32: tl.constexpr, PREC: tl.constexpr,
):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # heavy (causal) blocks first
    b = tl.program_id(1)
    h = tl.program_id(2)
    hk = h // group
    q_start, sq, k_start, sk = seq_bounds(CU_Q, CU_K, b, seqlen_q, seqlen_k, IS_VARLEN)
    m_start = pid_m * BLOCK_M
    if m_start >= sq:
        return
    diag = sk - sq
    b64 = b.to(tl.int64)

    rows = m_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < HEAD_DIM
    q_mask = (rows[:, None] < sq) & d_ok[None, :]
    qpos = (q_start + rows).to(tl.int64)[:, None]
    q = tl.load(Q + b64 * stride_qb + h * stride_qh + qpos * stride_qs + offs_d[None, :] * stride_qd,
                mask=q_mask, other=0.0)
    do = tl.load(DO + b64 * stride_dob + h * stride_doh + qpos * stride_dos + offs_d[None, :] * stride_dod,
                 mask=q_mask, other=0.0)
    n_heads_q = tl.num_programs(2)
    stat = row_stat_base(b, h, n_heads_q, seqlen_q, q_start, IS_VARLEN)
    lse = _load_lse_log2(LSE + stat, rows, sq)
    delta = tl.load(DELTA + stat + rows, mask=rows < sq, other=0.0)
    slope = 0.0
    if HAS_ALIBI:
        slope = tl.load(ALIBI + b * stride_ab + h * stride_ah)

    k_base = K + b64 * stride_kb + hk * stride_kh + offs_d[None, :] * stride_kd
    v_base = V + b64 * stride_vb + hk * stride_vh + offs_d[None, :] * stride_vd
    last_row = tl.minimum(m_start + BLOCK_M, sq) - 1
    lo = tl.maximum(m_start + diag - window_left, 0)
    lo = (lo // BLOCK_N) * BLOCK_N
    hi = tl.minimum(last_row + diag + window_right + 1, sk)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    full_lo, full_hi = full_block_range(lo, hi, m_start, m_start + BLOCK_M - 1, diag, window_left,
                                        window_right, sk, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        dq = _dq_block(q, do, lse, delta, dq, k_base, v_base, stride_ks, stride_vs, k_start, start_n,
                       full_lo, full_hi, offs_n, d_ok, rows, sq, sk, diag, sm_scale, softcap, slope,
                       window_left, window_right, HAS_SOFTCAP, HAS_ALIBI, DOT_FP32, PREC)

    dq = dq * sm_scale
    tok = token_base(b, q_start, seqlen_q, IS_VARLEN) + rows
    tl.store(DQ + (tok[:, None] * n_heads_q + h) * HEAD_DIM + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=q_mask)
