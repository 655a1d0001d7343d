"""The paged decode kernel: one program per (sequence, KV head, KV split).

GQA packing: the ``group = Hq // Hkv`` query heads that share a KV head, times the ``q_len``
new tokens, form the rows of one tile (row r -> token r // group, head kvh * group + r % group),
so each KV byte of a sequence is read once per split, and with >= 16 rows the QK^T and PV
products are real matrix-instruction dots (mma / wgmma / v_mfma) instead of vector FMAs.

Keys are gathered token by token through the block table (``token -> block_table[token //
block_size]``), so any block size works (48, 1, 256, ...) and the tile size ``BLOCK_N`` is
independent of it.
"""
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _tanh(x):
    # tanh(x) = 1 - 2 / (exp(2x) + 1): exact limits at +-inf without a libdevice call, which
    # keeps one source for the CUDA and HIP backends.
    return 1.0 - 2.0 / (tl.exp2(x * (2.0 * 1.4426950408889634)) + 1.0)


@triton.jit
def paged_decode_kernel(
    Q, K, V, BT, SL, ALIBI, OUT, LSE,
    qk_scale, v_scale, softcap, window_left,
    q_len, group, head_dim, block_size, num_splits, row_chunks,
    stride_qs, stride_qt, stride_qh, stride_qd,
    stride_kb, stride_kt, stride_kh, stride_kd,
    stride_vb, stride_vt, stride_vh, stride_vd,
    stride_bts, stride_btb,
    stride_as, stride_ah,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """Attention of the last q_len tokens of sequence ``s`` for the query heads of KV head
    ``kvh`` over this program's share of the keys.

    Grid (num_seqs, Hkv * row_chunks, num_splits): when q_len * group exceeds the largest
    tile that fits in registers (BLOCK_M), the rows are cut into ``row_chunks`` programs,
    each re-reading the keys (only for large speculative q_len x GQA products).

    ``qk_scale`` = softmax_scale * k_scale (the fp8 key scale folded in; 1 otherwise);
    ``v_scale`` multiplies the result. OUT is contiguous [num_seqs, num_splits, q_len, Hq, D]
    and LSE contiguous [num_seqs, num_splits, Hq, q_len]: with num_splits == 1 that is the
    final output (q dtype) and lse, otherwise fp32 partials for ``reduce_splits_kernel``.
    The launcher allocates both, so their strides are derived here instead of passed: on
    gfx90a/gfx942 the ~45 scalar arguments spilled SGPRs (18-49) before.
    """
    s = tl.program_id(0)
    kvh = tl.program_id(1) // row_chunks
    chunk = tl.program_id(1) % row_chunks
    split = tl.program_id(2)

    seq_len = tl.load(SL + s)
    rows = chunk * BLOCK_M + tl.arange(0, BLOCK_M)
    tok = rows // group
    head = kvh * group + rows % group
    row_ok = rows < q_len * group
    pos = seq_len - q_len + tok  # absolute position of each row's query token
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim

    q_ptrs = (Q + s.to(tl.int64) * stride_qs + tok[:, None] * stride_qt + head[:, None] * stride_qh
              + d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)

    if HAS_ALIBI:
        slope = tl.load(ALIBI + s * stride_as + head * stride_ah, mask=row_ok, other=0.0).to(tl.float32)

    # This program's key range: the visible range of the sequence cut into num_splits
    # chunks of whole tiles (so splits never share a tile).
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(seq_len - q_len - window_left, 0)
    n_tiles = tl.cdiv(seq_len - lo, BLOCK_N)
    tiles_per_split = tl.cdiv(n_tiles, num_splits)
    start = lo + split * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, seq_len)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    k_base = K + kvh.to(tl.int64) * stride_kh
    v_base = V + kvh.to(tl.int64) * stride_vh
    bt_base = BT + s.to(tl.int64) * stride_bts
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < end
        blk = tl.load(bt_base + (n // block_size) * stride_btb, mask=n_ok, other=0).to(tl.int64)
        off = (n % block_size).to(tl.int64)
        # [BLOCK_N, BLOCK_D] with the contiguous head dim last, so each token's row is read
        # with vector loads; transposed in registers for the dot (measured on sm80: loading
        # the [D, N] view directly costs 64 scalar pointers per thread and spills).
        k = tl.load(k_base + (blk * stride_kb + off * stride_kt)[:, None] + d[None, :] * stride_kd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if DOT_FP32:
            k = k.to(tl.float32)
        else:
            k = k.to(q.dtype)  # fp8 -> fp16/bf16 is exact; the scale is in qk_scale
        qk = tl.dot(q, tl.trans(k)) * qk_scale  # natural units: softmax_scale * q.k
        if HAS_SOFTCAP:
            qk = softcap * _tanh(qk / softcap)
        dist = pos[:, None] - n[None, :]  # d = i + Sk - Sq - j of docs/design.md
        if HAS_ALIBI:
            qk = qk - slope[:, None] * tl.abs(dist).to(tl.float32)
        visible = (dist >= 0) & n_ok[None, :]
        if HAS_WINDOW:
            visible = visible & (dist <= window_left)
        qk = tl.where(visible, qk * 1.4426950408889634, float("-inf"))  # log2 units

        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # A row with nothing visible yet keeps m = -inf; subtracting 0 instead keeps exp2 at 0
        # rather than NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(qk - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + (blk * stride_vb + off * stride_vt)[:, None] + d[None, :] * stride_vd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if DOT_FP32:
            v = v.to(tl.float32)
            pv = p
        else:
            v = v.to(q.dtype)
            pv = p.to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(pv, v)
        m_i = m_new

    empty = l_i == 0.0
    out = acc * (v_scale / tl.where(empty, 1.0, l_i))[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)

    hq = (tl.num_programs(1) // row_chunks) * group
    sp = s.to(tl.int64) * num_splits + split
    o_ptrs = OUT + ((sp * q_len + tok[:, None]) * hq + head[:, None]) * head_dim + d[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + (sp * hq + head) * q_len + tok, lse, mask=row_ok)
