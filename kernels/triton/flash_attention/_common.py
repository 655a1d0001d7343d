"""Pieces shared by the forward and backward kernels (Triton device functions)."""
import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def mm(a, b, DOT_FP32: tl.constexpr, PREC: tl.constexpr):
    """a @ b with an fp32 accumulator.

    DOT_FP32 is set only under the interpreter, for bf16 (its bf16 dot is wrong: triton#11584).
    PREC is "ieee" for fp32 inputs (tf32 would lose more than torch's fp32 baseline), else
    None (the default; AMD targets reject "tf32" even for fp16 dots).
    """
    if DOT_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def scores(qk, rows, cols, diag, sm_scale, softcap, slope,
           HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr):
    """Raw q.k products -> attention logits in log2 units (s * log2(e), for exp2), before
    masking.

    Returns (s2, t) where t = tanh(scaled / softcap) is what the backward needs for the
    softcap derivative (1 - t^2); t is unused (the scaled logits) without a softcap. Without
    softcap/ALiBi the scale and log2(e) fold into one multiply per element.
    """
    if HAS_SOFTCAP or HAS_ALIBI:
        s = qk * sm_scale
        t = s
        if HAS_SOFTCAP:
            # tanh(x) = 2 sigmoid(2x) - 1: core Triton has no tanh that works on every target.
            t = 2.0 * tl.sigmoid(s * (2.0 / softcap)) - 1.0
            s = softcap * t
        if HAS_ALIBI:
            d = rows[:, None] + diag - cols[None, :]
            s = s - slope * tl.abs(d).to(tl.float32)
        s2 = s * LOG2E
    else:
        s2 = qk * (sm_scale * LOG2E)
        t = s2
    return s2, t


@triton.jit
def visible(rows, cols, sq, sk, diag, window_left, window_right):
    """Mask of (row, col) pairs inside both sequences and inside the window.

    d = row + Sk - Sq - col must satisfy -window_right <= d <= window_left (unbounded sides
    arrive as a huge number).
    """
    d = rows[:, None] + diag - cols[None, :]
    return ((rows[:, None] < sq) & (cols[None, :] < sk)
            & (d >= -window_right) & (d <= window_left))


@triton.jit
def _span(CU, b, total):
    """(start, length) of varlen sequence b, never trusted: both ends are clamped into
    [0, total], the first start is 0 and the last end is total (as they must be), and a
    decreasing pair gives length 0. So every address the kernels form stays inside the packed
    tensors whatever cu_seqlens holds, and, with the ends pinned, each token x in [0, total)
    lies in [start_s, start_s + length_s) of the last s whose start is <= x (so the rows a
    program set covers can all be reached, see attn_fwd_kernel). int32 or int64 entries."""
    start = tl.where(b == 0, 0, tl.minimum(tl.maximum(tl.load(CU + b), 0), total)).to(tl.int32)
    end = tl.minimum(tl.maximum(tl.load(CU + b + 1), 0), total)
    end = tl.where(b == tl.num_programs(1) - 1, total, end).to(tl.int32)
    return start, tl.maximum(end - start, 0)


@triton.jit
def seq_bounds(CU_Q, CU_K, b, seqlen_q, seqlen_k, IS_VARLEN: tl.constexpr):
    """(q_start, sq, k_start, sk) of sequence b: from cu_seqlens when varlen (clamped, see
    _span; seqlen_q / seqlen_k carry the totals there), else (0, Sq, 0, Sk). Batch is grid
    axis 1 in every kernel."""
    if IS_VARLEN:
        q_start, sq = _span(CU_Q, b, seqlen_q)
        k_start, sk = _span(CU_K, b, seqlen_k)
    else:
        q_start = 0
        sq = seqlen_q
        k_start = 0
        sk = seqlen_k
    return q_start, sq, k_start, sk


@triton.jit
def token_base(b, start, seqlen, IS_VARLEN: tl.constexpr):
    """Token index (int64) of a sequence's first row in a contiguous [B, S, H, D] / [T, H, D]
    tensor the kernels allocate themselves (out, dq, dk, dv): b*S + start, varlen just start."""
    if IS_VARLEN:
        return start.to(tl.int64)
    else:
        return b.to(tl.int64) * seqlen + start


@triton.jit
def row_stat_base(b, h, n_heads, seqlen_q, q_start, IS_VARLEN: tl.constexpr):
    """Offset of row 0 of (b, h) in a contiguous lse/delta: [B, H, Sq] dense, [H, total_q]
    varlen (the launcher passes total_q as seqlen_q there)."""
    if IS_VARLEN:
        return h.to(tl.int64) * seqlen_q + q_start
    else:
        return (b.to(tl.int64) * n_heads + h) * seqlen_q


@triton.jit
def full_block_range(lo, hi, first, last, diag, window_left, window_right, length,
                     BLOCK: tl.constexpr):
    """Split the loop range [lo, hi) (lo a multiple of BLOCK) into masked head, unmasked
    middle and masked tail: returns (full_lo, full_hi) such that every block in
    [full_lo, full_hi) lies inside ``length`` and inside the window for every row of the
    program's block (rows first..last, d = row + diag - col). Skipping the mask there saves
    the per-element compare/select work on all interior blocks.

    Also used transposed (the dk/dv kernel loops over rows for a block of columns) by passing
    -diag and swapping the window sides.
    """
    full_lo = tl.maximum(last + diag - window_left, lo)
    full_lo = tl.minimum((full_lo + BLOCK - 1) // BLOCK * BLOCK, hi)
    y = tl.maximum(tl.minimum(first + diag + window_right + 1, length), 0)
    full_hi = tl.maximum(tl.minimum(y // BLOCK * BLOCK, hi), full_lo)
    return full_lo, full_hi
