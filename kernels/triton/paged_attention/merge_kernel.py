"""Merging partial attention states: the split-KV reduction and merge_attention_states.

A partial state is (out, lse) over a subset of the keys; two of them combine as
``lse = log(e^lse_a + e^lse_b)``, ``out = e^(lse_a - lse) out_a + e^(lse_b - lse) out_b``,
computed from the larger lse so nothing overflows; both -inf (no visible key on either side)
gives out 0, lse -inf. No tl.dot here: these are pure bandwidth kernels.
"""
import triton
import triton.language as tl


@triton.jit
def reduce_splits_kernel(
    PO, PL, OUT, LSE, SINKS,
    num_splits, q_len, head_dim,
    stride_pos, stride_pop, stride_pot, stride_poh, stride_pod,
    stride_pls, stride_plp, stride_plh, stride_plt,
    stride_os, stride_ot, stride_oh, stride_od,
    stride_ls, stride_lh, stride_lt,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, HAS_SINKS: tl.constexpr,
):
    """One program per (sequence * q_len + token, query head): merge the fp32 partials of
    ``num_splits`` (<= BLOCK_S) splits into the final output (OUT's dtype) and fp32 lse.
    HAS_SINKS: SINKS[h] (fp32, natural units) is one more state with out 0 (attention sinks).

    The lse of all splits are read at once (BLOCK_S values) but the partial outputs one
    split at a time: a [BLOCK_S, BLOCK_D] tile (64 x 256 fp32) would spill on AMD."""
    st = tl.program_id(0)
    h = tl.program_id(1)
    s = (st // q_len).to(tl.int64)
    t = st % q_len
    sp = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim

    pl = PL + s * stride_pls + h * stride_plh + t * stride_plt
    lse = tl.load(pl + sp * stride_plp, mask=sp < num_splits, other=float("-inf"))
    m = tl.max(lse, 0)
    if HAS_SINKS:
        sink = tl.load(SINKS + h)
        m = tl.maximum(m, sink)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.sum(tl.exp2((lse - m_safe) * 1.4426950408889634), 0)  # empty splits add 0
    if HAS_SINKS:
        total += tl.exp2((sink - m_safe) * 1.4426950408889634)
    acc = tl.zeros([BLOCK_D], tl.float32)
    po = PO + s * stride_pos + t * stride_pot + h * stride_poh + d * stride_pod
    for i in range(num_splits):
        w = tl.exp2((tl.load(pl + i * stride_plp) - m_safe) * 1.4426950408889634)
        if w > 0.0:  # an empty split's out is 0 anyway; skipping saves its read
            acc += w * tl.load(po + i * stride_pop, mask=d_ok, other=0.0)
    empty = total == 0.0
    out = acc / tl.where(empty, 1.0, total)
    out_lse = tl.where(empty, float("-inf"), m_safe + tl.log(tl.where(empty, 1.0, total)))
    tl.store(OUT + s * stride_os + t * stride_ot + h * stride_oh + d * stride_od,
             out.to(OUT.dtype.element_ty), mask=d_ok)
    tl.store(LSE + s * stride_ls + h * stride_lh + t * stride_lt, out_lse)


@triton.jit
def merge_two_kernel(
    OA, LA, OB, LB, OUT, LSE,
    rows, head_dim,
    s_oa_b, s_oa_r, s_oa_h, s_oa_d,
    s_ob_b, s_ob_r, s_ob_h, s_ob_d,
    s_o_b, s_o_r, s_o_h, s_o_d,
    s_la_b, s_la_h, s_la_r,
    s_lb_b, s_lb_h, s_lb_r,
    s_l_b, s_l_h, s_l_r,
    BLOCK_D: tl.constexpr,
):
    """One program per (batch * rows + row, head): out [B, S, H, D] and lse [B, H, S] with
    any strides (B = 1 with zero strides for the 3-d form)."""
    br = tl.program_id(0)
    h = tl.program_id(1)
    b = (br // rows).to(tl.int64)
    r = br % rows
    d = tl.arange(0, BLOCK_D)
    ok = d < head_dim

    la = tl.load(LA + b * s_la_b + h * s_la_h + r * s_la_r)
    lb = tl.load(LB + b * s_lb_b + h * s_lb_h + r * s_lb_r)
    # lse +inf also marks an empty state (FlashAttention-2 writes it for a zero-length
    # sequence; vLLM's convention): read as -inf
    la = tl.where(la == float("inf"), float("-inf"), la)
    lb = tl.where(lb == float("inf"), float("-inf"), lb)
    m = tl.maximum(la, lb)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    wa = tl.exp2((la - m_safe) * 1.4426950408889634)
    wb = tl.exp2((lb - m_safe) * 1.4426950408889634)
    total = wa + wb
    empty = total == 0.0
    inv = 1.0 / tl.where(empty, 1.0, total)
    oa = tl.load(OA + b * s_oa_b + r * s_oa_r + h * s_oa_h + d * s_oa_d, mask=ok, other=0.0)
    ob = tl.load(OB + b * s_ob_b + r * s_ob_r + h * s_ob_h + d * s_ob_d, mask=ok, other=0.0)
    # An empty side (lse -inf) contributes nothing, even when its out holds NaN/garbage, as
    # in the reference: select instead of multiplying by a zero weight.
    oa = tl.where(wa > 0.0, oa.to(tl.float32), 0.0)
    ob = tl.where(wb > 0.0, ob.to(tl.float32), 0.0)
    out = oa * (wa * inv) + ob * (wb * inv)
    tl.store(OUT + b * s_o_b + r * s_o_r + h * s_o_h + d * s_o_d, out.to(OUT.dtype.element_ty), mask=ok)
    tl.store(LSE + b * s_l_b + h * s_l_h + r * s_l_r,
             tl.where(empty, float("-inf"), m_safe + tl.log(tl.where(empty, 1.0, total))))
