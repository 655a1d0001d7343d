"""The paged attention kernel: one program per (sequence, KV head x row chunk, KV split).

Serves paged_attention (q_len new tokens per sequence) and varlen_paged_attention (packed
queries, cu_seqlens_q: any q_len per sequence, decode and prefill rows in one launch).

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

from ..jit_checks import cu_seqlens_ok

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _tanh(x):
    # tanh(x) = 1 - 2 / (exp(2x) + 1): exact limits at +-inf without a libdevice call, which
    # keeps one source for the CUDA and HIP backends.
    return 1.0 - 2.0 / (tl.exp2(x * (2.0 * 1.4426950408889634)) + 1.0)


@triton.jit
def paged_decode_kernel(
    Q, K, V, BT, SL, CU_Q, ALIBI, KVS, SINKS, OUT, LSE,
    qk_scale, v_scale, softcap, window_left,
    q_len, group, head_dim, block_size, num_splits, row_chunks, num_blocks, max_blocks,
    stride_qs, stride_qt, stride_qh, stride_qd,
    stride_kb, stride_kt, stride_kh, stride_kd,
    stride_vb, stride_vt, stride_vh, stride_vd,
    stride_bts, stride_btb,
    stride_as, stride_ah,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr, DOT_FP32: tl.constexpr, VARLEN: tl.constexpr,
    HAS_KV_SCALES: tl.constexpr, HAS_SINKS: tl.constexpr, SCAN: tl.constexpr,
    MULTI_TOKEN: tl.constexpr,
):
    """Attention of the last q_len tokens of sequence ``s`` for the query heads of KV head
    ``kvh`` over this program's share of the keys.

    Grid (num_seqs, Hkv * row_chunks, num_splits): when q_len * group exceeds the largest
    tile that fits in registers (BLOCK_M), the rows are cut into ``row_chunks`` programs.
    Each chunk reads only the keys its rows can see (causal: up to its last token; a window
    also bounds the start), so long rows become prefill tiles rather than repeated full reads.

    VARLEN: q is packed [total_q, Hq, D] (stride_qs 0) and sequence s owns tokens
    CU_Q[s]..CU_Q[s+1]; ``q_len`` is then total_q and row_chunks covers the longest run
    (chunks past a sequence's rows do nothing). Otherwise CU_Q is unused and every sequence
    has q_len tokens.

    ``qk_scale`` = softmax_scale * k_scale (the fp8 key scale folded in; 1 otherwise);
    ``v_scale`` multiplies the result. HAS_KV_SCALES: KVS is contiguous fp32 [2, Hkv] of
    per-KV-head factors of both (fp8 caches; read here, so a GPU scale needs no host sync).
    OUT and LSE are contiguous and allocated by the
    launcher, so their strides are derived here instead of passed (on gfx90a/gfx942 ~45
    scalar arguments spilled SGPRs): uniform OUT [num_seqs, num_splits, q_len, Hq, D], LSE
    [num_seqs, num_splits, Hq, q_len]; VARLEN OUT [num_splits, total_q, Hq, D], LSE
    [num_splits, Hq, total_q]. With num_splits == 1 that is the final output (q dtype) and
    lse, otherwise fp32 partials for ``reduce_splits_kernel``. HAS_SINKS: SINKS fp32 [Hq]
    attention sinks, added here when num_splits == 1 and by the reduce otherwise (once).

    Index values are not trusted (docs/dispatch.md, "Index values"): seq_lens, cu_seqlens_q
    (VARLEN) and the block ids a program reads are range-checked here.
    A bad one never addresses memory (reads are clamped into the tensors) and every row
    that depends on it is NaN, lse NaN: a sequence whose seq_len or query run is wrong, the
    rows that read a bad block id, and every row of a VARLEN batch whose cu_seqlens_q is
    wrong (runs may overlap or leave rows to no program, so all of them).
    """
    s = tl.program_id(0)
    kvh = tl.program_id(1) // row_chunks
    chunk = tl.program_id(1) % row_chunks
    split = tl.program_id(2)

    if HAS_KV_SCALES:
        hkv = tl.num_programs(1) // row_chunks
        qk_scale = qk_scale * tl.load(KVS + kvh)
        v_scale = v_scale * tl.load(KVS + hkv + kvh)

    seq_len = tl.load(SL + s)
    if VARLEN:
        # This sequence's run, clamped into [0, total_q). With the outer ends pinned to 0 and
        # total_q, the runs of all sequences cover every row even when cu_seqlens_q is wrong
        # (each row x lies in the run of the last s whose start is <= x), so every row gets
        # written (NaN then).
        q0 = tl.where(s == 0, 0, tl.minimum(tl.maximum(tl.load(CU_Q + s), 0), q_len))
        q1 = tl.where(s == tl.num_programs(0) - 1, q_len,
                      tl.minimum(tl.maximum(tl.load(CU_Q + s + 1), q0), q_len))
        n_q = q1 - q0
        # A run longer than the grid's rows (max_seqlen_q understated) is an error only
        # where it would leave rows uncomputed: the bound is what the row chunks cover.
        bad = cu_seqlens_ok(CU_Q, tl.num_programs(0), q_len, (row_chunks * BLOCK_M) // group,
                            SCAN) == 0
    else:
        q0 = 0
        n_q = q_len
        bad = seq_len != seq_len  # False, as a run-time value like the VARLEN one
    cap = max_blocks * block_size
    bad = bad | (seq_len < 0) | (seq_len > cap) | ((seq_len > 0) & (seq_len < n_q))
    seq_len = tl.minimum(tl.maximum(seq_len, 0), cap)  # keys stay inside the table row
    n_rows = n_q * group
    rows = chunk * BLOCK_M + tl.arange(0, BLOCK_M)
    tok = rows // group
    head = kvh * group + rows % group
    row_ok = rows < n_rows
    pos = seq_len - n_q + tok  # absolute position of each row's query token (< 0: padded slot)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim

    q_ptrs = (Q + s.to(tl.int64) * stride_qs + (q0 + tok[:, None]).to(tl.int64) * stride_qt
              + head[:, None] * stride_qh + d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)

    if HAS_ALIBI:
        slope = tl.load(ALIBI + s * stride_as + head * stride_ah, mask=row_ok, other=0.0).to(tl.float32)

    # The keys this chunk's rows can see: up to its last row's position (causal), from its
    # first row's position - window_left; empty when the chunk has no rows. That range is
    # cut into num_splits chunks of whole tiles (so splits never share a tile).
    first_tok = (chunk * BLOCK_M) // group
    last_tok = (tl.minimum((chunk + 1) * BLOCK_M, n_rows) - 1) // group
    pos_first = seq_len - n_q + first_tok
    pos_last = seq_len - n_q + last_tok
    hi = tl.maximum(pos_last + 1, 0)
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(pos_first - window_left, 0)
    hi = tl.where(chunk * BLOCK_M < n_rows, tl.maximum(hi, lo), lo)
    n_tiles = tl.cdiv(hi - lo, BLOCK_N)
    tiles_per_split = tl.cdiv(n_tiles, num_splits)
    start = lo + split * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, hi)

    bt_base = BT + s.to(tl.int64) * stride_bts
    # The block ids this program reads through, checked before any is used (a check in the
    # key loop spilled SGPRs on gfx90a). Any bad index: no key is read, and the softmax
    # denominator is NaN, which every result of the rows inherits (out = acc / l,
    # lse = m + log l, the split reduce's weights).
    last_blk = tl.cdiv(end, block_size)
    n_bad = 0
    for b0 in range(start // block_size, last_blk, SCAN):
        b = b0 + tl.arange(0, SCAN)
        ids = tl.load(bt_base + b * stride_btb, mask=b < last_blk, other=0)
        n_bad += tl.sum(((ids < 0) | (ids >= num_blocks)).to(tl.int32), 0)
    bad = bad | (n_bad > 0)
    end = tl.where(bad, start, end)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.where(bad, float("nan"), tl.zeros([BLOCK_M], tl.float32))
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    k_base = K + kvh.to(tl.int64) * stride_kh
    v_base = V + kvh.to(tl.int64) * stride_vh
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
        if MULTI_TOKEN:
            # rows of different tokens see different keys (decode, one token per sequence,
            # compiles none of this). jit_checks.zero_nonfinite / nan_rows_seeing inline, in
            # the form that compiles spill-free here (theirs spilled 8 bytes on sm80 varlen;
            # v is fp32 under the interpreter for bf16, so `v != v` sees NaN); branch-free: a
            # branch spilled SGPRs on AMD
            special = (v != v) | (tl.abs(v.to(tl.float32)) == float("inf"))
            v = tl.where(special, 0.0, v)
            sees = tl.max(tl.where(visible, tl.max(special.to(tl.int32), 1)[None, :], 0), 1) > 0
            l_i = tl.where(sees, float("nan"), l_i)
        acc = acc * alpha[:, None] + tl.dot(pv, v)
        m_i = m_new

    if HAS_SINKS:
        if num_splits == 1:  # partials leave the sink to the reduce
            sink = tl.load(SINKS + head, mask=row_ok, other=0.0) * 1.4426950408889634
            m_new = tl.maximum(m_i, sink)
            alpha = tl.exp2(m_i - m_new)   # m_i -inf (nothing visible): 0
            l_i = l_i * alpha + tl.exp2(sink - m_new)
            acc = acc * alpha[:, None]
            m_i = m_new
    empty = l_i == 0.0
    out = acc * (v_scale / tl.where(empty, 1.0, l_i))[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)

    hq = (tl.num_programs(1) // row_chunks) * group
    if VARLEN:
        t_row = (split.to(tl.int64) * q_len + q0 + tok) * hq + head      # [splits, total_q, Hq]
        l_off = (split.to(tl.int64) * hq + head) * q_len + q0 + tok      # [splits, Hq, total_q]
    else:
        sp = s.to(tl.int64) * num_splits + split
        t_row = (sp * q_len + tok) * hq + head                           # [seqs, splits, q_len, Hq]
        l_off = (sp * hq + head) * q_len + tok                           # [seqs, splits, Hq, q_len]
    tl.store(OUT + t_row[:, None] * head_dim + d[None, :], out.to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + l_off, lse, mask=row_ok)

    if VARLEN:
        # A run longer than the row chunks cover (max_seqlen_q understated; always a bad
        # cu_seqlens_q) has rows no program computes: the last chunk writes them NaN.
        if chunk == row_chunks - 1:
            for r0 in range(row_chunks * BLOCK_M, n_rows, BLOCK_M):
                r = r0 + tl.arange(0, BLOCK_M)
                r_ok = r < n_rows
                r_tok = q0 + r // group
                r_head = kvh * group + r % group
                nan_row = (split.to(tl.int64) * q_len + r_tok) * hq + r_head
                tl.store(OUT + nan_row[:, None] * head_dim + d[None, :],
                         tl.full([BLOCK_M, BLOCK_D], float("nan"), tl.float32).to(OUT.dtype.element_ty),
                         mask=r_ok[:, None] & d_ok[None, :])
                tl.store(LSE + (split.to(tl.int64) * hq + r_head) * q_len + r_tok,
                         tl.full([BLOCK_M], float("nan"), tl.float32), mask=r_ok)
