"""Flash attention forward kernel (online softmax, one program per (query block, batch, head)).

Layout: q/k/v are [batch, seqlen, heads, head_dim] with any strides (varlen: [total, heads,
head_dim] with batch stride 0 and sequence starts from cu_seqlens). out is contiguous like q
and lse is contiguous fp32 [batch, heads, Sq] (varlen [heads, total_q]); their offsets are
computed, not passed, because every scalar argument costs a scalar register (on AMD the
attention kernels ran out of SGPRs with the extra strides).
"""
import triton
import triton.language as tl

from ..jit_checks import cu_seqlens_ok, nan_rows_seeing, zero_nonfinite
from ._common import (LOG2E, full_block_range, mm, row_stat_base, scores, seq_bounds, token_base,
                      visible)


@triton.jit
def _attend_block(q, k_base, v_base, stride_ks, stride_vs, k_start, offs_n, d_ok, dv_ok, rows, sq, sk,
                  diag,
                  sm_scale, softcap, slope, window_left, window_right, start_n, full_lo, full_hi,
                  m_i, l_i, acc,
                  HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
                  DOT_FP32: tl.constexpr, PREC: tl.constexpr, MASKED: tl.constexpr):
    """One key block of the online softmax. The element mask is applied only to blocks that
    are not entirely inside the sequence and the window (see full_block_range): a uniform
    run-time branch, so the loop stays one software-pipelined loop (three loops, one per
    region, spilled on sm80 and doubled compile time)."""
    cols = start_n + offs_n
    col_ok = cols < sk
    kpos = (k_start + cols).to(tl.int64)
    kt = tl.load(k_base + kpos[None, :] * stride_ks, mask=d_ok[:, None] & col_ok[None, :], other=0.0)
    s, _ = scores(mm(q, kt, DOT_FP32, PREC), rows, cols, diag, sm_scale, softcap, slope,
                  HAS_SOFTCAP, HAS_ALIBI)
    if (start_n < full_lo) | (start_n >= full_hi):
        s = tl.where(visible(rows, cols, sq, sk, diag, window_left, window_right), s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row with nothing visible yet keeps max -inf; subtract 0 there to avoid inf - inf.
    m_new_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_new_safe[:, None])
    alpha = tl.exp2(m_i - m_new_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_base + kpos[:, None] * stride_vs, mask=col_ok[:, None] & dv_ok[None, :], other=0.0)
    if MASKED:
        # Only a causal mask or a window hides a key from some rows and not others (keys past
        # a sequence are loaded as 0), and only on blocks with masked pairs; without one none
        # of this is compiled. The mask is recomputed: cheaper than keeping s live.
        if (start_n < full_lo) | (start_n >= full_hi):
            v, key_special = zero_nonfinite(v)
            l_i = nan_rows_seeing(key_special,
                                  visible(rows, cols, sq, sk, diag, window_left, window_right), l_i)
    acc = acc * alpha[:, None] + mm(p.to(v.dtype), v, DOT_FP32, PREC)
    return m_new, l_i, acc


@triton.jit
def attn_fwd_kernel(
    Q, K, V, O, LSE, CU_Q, CU_K, ALIBI, SINKS,
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_ab, stride_ah,
    seqlen_q, seqlen_k, max_seqlen_q, max_seqlen_k, group,
    sm_scale, softcap, window_left, window_right,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
    DOT_FP32: tl.constexpr, PREC: tl.constexpr, HAS_SINKS: tl.constexpr,
    MASKED: tl.constexpr,
):
    # Last query blocks first: under a causal mask they do the most work, so the long
    # programs start early instead of forming the tail of the launch.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    hk = h // group
    q_start, sq, k_start, sk = seq_bounds(CU_Q, CU_K, b, seqlen_q, seqlen_k, IS_VARLEN)
    m_start = pid_m * BLOCK_M
    if m_start >= sq:  # varlen: this sequence is shorter than max_seqlen_q
        return
    if IS_VARLEN:
        # cu_seqlens / max_seqlen are never trusted (issue 14): seq_bounds clamped them into
        # the tensors; if they are not a valid batch at all, no row can be trusted to belong to
        # its sequence, so every row of the output becomes NaN (lse too) instead of a
        # plausible value: this program computes nothing and writes NaN.
        batch = tl.num_programs(1)
        valid = (cu_seqlens_ok(CU_Q, batch, seqlen_q, max_seqlen_q, 128)
                 & cu_seqlens_ok(CU_K, batch, seqlen_k, max_seqlen_k, 128))
    diag = sk - sq
    b64 = b.to(tl.int64)

    rows = m_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < HEAD_DIM
    offs_dv = tl.arange(0, BLOCK_DV)   # V / out head dim (may differ from Q/K's: MLA 192 / 128)
    dv_ok = offs_dv < HEAD_DIM_V

    q_ptrs = (Q + b64 * stride_qb + h * stride_qh
              + (q_start + rows).to(tl.int64)[:, None] * stride_qs + offs_d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=(rows[:, None] < sq) & d_ok[None, :], other=0.0)
    k_base = K + b64 * stride_kb + hk * stride_kh + offs_d[:, None] * stride_kd
    v_base = V + b64 * stride_vb + hk * stride_vh + offs_dv[None, :] * stride_vd

    slope = 0.0
    if HAS_ALIBI:
        slope = tl.load(ALIBI + b * stride_ab + h * stride_ah)

    # Only key blocks that some row of this block can see: rows see cols in
    # [row + diag - window_left, row + diag + window_right].
    last_row = tl.minimum(m_start + BLOCK_M, sq) - 1
    lo = tl.maximum(m_start + diag - window_left, 0)
    lo = (lo // BLOCK_N) * BLOCK_N
    hi = tl.minimum(last_row + diag + window_right + 1, sk)

    if IS_VARLEN:
        hi = tl.where(valid, hi, lo)
    full_lo, full_hi = full_block_range(lo, hi, m_start, m_start + BLOCK_M - 1, diag, window_left,
                                        window_right, sk, BLOCK_N)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max, log2 units
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        m_i, l_i, acc = _attend_block(q, k_base, v_base, stride_ks, stride_vs, k_start, offs_n, d_ok,
                                      dv_ok, rows, sq, sk, diag, sm_scale, softcap, slope, window_left,
                                      window_right, start_n, full_lo, full_hi, m_i, l_i, acc,
                                      HAS_SOFTCAP, HAS_ALIBI, DOT_FP32, PREC, MASKED)

    if HAS_SINKS:
        # the head's sink joins the denominator as a key with no value (lse includes it)
        sink = tl.load(SINKS + h) * LOG2E
        m_new = tl.maximum(m_i, sink)
        alpha = tl.exp2(m_i - m_new)   # m_i -inf (nothing visible): 0
        l_i = l_i * alpha + tl.exp2(sink - m_new)
        acc = acc * alpha[:, None]
        m_i = m_new
    empty = l_i == 0.0  # no visible key: out 0, lse -inf
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) / LOG2E)
    if IS_VARLEN:
        out = tl.where(valid, out, float("nan"))
        lse = tl.where(valid, lse, float("nan"))
    n_heads = tl.num_programs(2)
    tok = token_base(b, q_start, seqlen_q, IS_VARLEN) + rows
    o_ptrs = O + (tok[:, None] * n_heads + h) * HEAD_DIM_V + offs_dv[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(rows[:, None] < sq) & dv_ok[None, :])
    lse_base = LSE + row_stat_base(b, h, n_heads, seqlen_q, q_start, IS_VARLEN)
    tl.store(lse_base + rows, lse, mask=rows < sq)
    if IS_VARLEN:
        # A sequence longer than the grid covers (max_seqlen_q lied; only possible when the
        # batch is invalid) has rows no program computes: the last query block's program
        # writes NaN over them, so no row keeps what was in the buffer. With the clamped
        # bounds every row of the packed output belongs to some sequence's range (_span), so
        # the NaN reaches every row.
        cover = tl.num_programs(0) * BLOCK_M
        tail_end = tl.where(pid_m == tl.num_programs(0) - 1, sq, cover)
        nan_o = tl.full([BLOCK_M, BLOCK_DV], float("nan"), O.dtype.element_ty)
        nan_l = tl.full([BLOCK_M], float("nan"), tl.float32)
        for t0 in range(cover, tail_end, BLOCK_M):
            r = t0 + tl.arange(0, BLOCK_M)
            t = token_base(b, q_start, seqlen_q, IS_VARLEN) + r
            tl.store(O + (t[:, None] * n_heads + h) * HEAD_DIM_V + offs_dv[None, :], nan_o,
                     mask=(r[:, None] < sq) & dv_ok[None, :])
            tl.store(lse_base + r, nan_l, mask=r < sq)
