"""Pure-torch attention oracle (and last-resort implementation).

Math in fp32 (fp64 when the inputs are fp64), result cast back to the input dtype. It
materialises the full score matrix: correct for every feature, not fast. Semantics (docs/design.md,
FlashAttention 2 conventions), for query row i and key column j with d = i + Sk - Sq - j:
  s = scale * q_i.k_j;  softcap > 0: s = softcap * tanh(s / softcap);  ALiBi: s += -slope * |d|
  visible iff -right <= d <= left, window (left, right), -1 unbounded; causal => right = 0
  out_i = softmax(s over visible j) @ v;  lse_i = log(sum over visible j of exp(s)) (fp32)
  a row with no visible key: out 0, lse -inf.
Attention sinks (gpt-oss): a per-query-head logit sink_h joins every row's softmax
denominator as a key with no value: out_i = sum_j e^s_ij v_j / (sum_j e^s_ij + e^sink_h),
lse_i = log(sum_j e^s_ij + e^sink_h) (a row with no visible key: out 0, lse sink_h).
"""
from __future__ import annotations

import torch


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def visibility(sq: int, sk: int, causal: bool, window_left: int, window_right: int,
               device) -> tuple[torch.Tensor, torch.Tensor]:
    """(visible [sq, sk] bool, distance d [sq, sk] int64) for one (batch, head)."""
    i = torch.arange(sq, device=device)[:, None]
    j = torch.arange(sk, device=device)[None, :]
    d = i + (sk - sq) - j
    right = 0 if causal else window_right
    visible = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if window_left >= 0:
        visible &= d <= window_left
    if right >= 0:
        visible &= d >= -right
    return visible, d


def _scores(q, k, softmax_scale, softcap, alibi_slopes, d, ct):
    """q [B, Sq, Hq, D], k [B, Sk, Hq, D] (already expanded for GQA) -> s [B, Hq, Sq, Sk]."""
    s = torch.einsum("bqhd,bkhd->bhqk", q.to(ct), k.to(ct)) * softmax_scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(ct)
        slopes = slopes[None, :] if slopes.dim() == 1 else slopes  # [B or 1, Hq]
        s = s - slopes[:, :, None, None] * d.abs().to(ct)[None, None]
    return s


def _softmax_with_lse(s, visible, sinks=None):
    """Masked softmax that gives p = 0 and lse = -inf for rows with no visible key (no NaN,
    also in the backward pass: masked entries never reach exp with a finite gradient).
    sinks [Hq] (s is [B, Hq, Sq, Sk]): one more logit per head in each row's denominator."""
    s = s.masked_fill(~visible, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    if sinks is not None:
        sink = sinks.to(s.dtype)[None, :, None, None]
        m = torch.maximum(m, sink)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    e = torch.exp(s - m)
    denom = e.sum(dim=-1, keepdim=True)
    if sinks is not None:
        denom = denom + torch.exp(sink - m)
    p = e / torch.where(denom == 0, torch.ones_like(denom), denom)
    lse = (torch.log(denom) + m).squeeze(-1)
    return p, lse


def _expand_kv(k, hq):
    hk = k.shape[2]
    return k if hk == hq else k.repeat_interleave(hq // hk, dim=2)


def attention_math(q, k, v, causal, softmax_scale, window_left, window_right, softcap,
                   alibi_slopes, sinks=None):
    """Differentiable forward in the compute dtype: (out [B, Sq, Hq, D] in ct, lse [B, Hq, Sq])."""
    ct = compute_dtype(q)
    sq, sk, hq = q.shape[1], k.shape[1], q.shape[2]
    if sk == 0:  # no keys at all: every row is fully masked (lse: the sink alone, if any)
        b = q.shape[0]
        out = torch.zeros(b, sq, hq, v.shape[-1], dtype=ct, device=q.device)
        lse = torch.full((b, hq, sq), float("-inf"), dtype=ct, device=q.device)
        if sinks is not None:
            lse = lse.clone().copy_(sinks.to(ct)[None, :, None].expand(b, hq, sq))
        return out, lse
    visible, d = visibility(sq, sk, causal, window_left, window_right, q.device)
    s = _scores(q, _expand_kv(k, hq), softmax_scale, softcap, alibi_slopes, d, ct)
    p, lse = _softmax_with_lse(s, visible, sinks)
    return _visible_pv(p, _expand_kv(v, hq).to(ct), visible), lse


def _visible_pv(p, v, visible):
    """P V [B, Sq, H, D] over each row's visible keys only. P is 0 on masked keys, but 0 * NaN
    (or inf) is NaN: a V row a query cannot see (the causal future, a padded cache row) must
    contribute nothing at all. Non-finite V values of visible keys propagate as the sums
    would: NaN -> NaN, +-inf -> +-inf, both infinities -> NaN."""
    finite = torch.isfinite(v)
    if bool(finite.all()):
        return torch.einsum("bhqk,bkhd->bqhd", p, v)
    out = torch.einsum("bhqk,bkhd->bqhd", p, torch.where(finite, v, torch.zeros((), dtype=v.dtype, device=v.device)))
    vis = visible.to(v.dtype)

    def seen(mask):   # whether a visible key holds such a value, per output element
        return torch.einsum("qk,bkhd->bqhd", vis, mask.to(v.dtype)) > 0
    pos_inf, neg_inf, nan = seen(v == float("inf")), seen(v == float("-inf")), seen(v.isnan())
    out = torch.where(pos_inf, float("inf"), out)
    out = torch.where(neg_inf, float("-inf"), out)
    return torch.where(nan | (pos_inf & neg_inf), float("nan"), out)


def attention(q, k, v, causal, softmax_scale, window_left, window_right, softcap, alibi_slopes,
              sinks=None):
    """q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D] -> (out [B, Sq, Hq, D] q.dtype, lse fp32 [B, Hq, Sq]).
    sinks: fp32 [Hq] or None."""
    out, lse = attention_math(q, k, v, causal, softmax_scale, window_left, window_right,
                              softcap, alibi_slopes, sinks)
    return out.to(q.dtype), lse.to(torch.float32)


def attention_backward(dout, q, k, v, out, lse, causal, softmax_scale, window_left,
                       window_right, softcap, alibi_slopes, dlse=None, sinks=None):
    """Gradients (dq, dk, dv) by the explicit formulas (no autograd: this runs inside a custom
    op, below the autograd dispatch key). P is recomputed; out/lse are not needed.
    ``dlse`` (fp32 [B, Hq, Sq] or None) is the gradient flowing into the returned lse:
    d lse_i / d s_ij = P_ij, so it adds P * dlse_i to dS (kernels fold it into
    delta = rowsum(dO * O) - dlse).
      dV = P^T dO;  dP = dO V^T;  dS = P * (dP - rowsum(dP * P) + dlse);
      softcap: dS_raw = dS * (1 - tanh^2);  dQ = scale dS_raw K;  dK = scale dS_raw^T Q
    GQA: gradients of the query heads sharing a KV head are summed into it. With sinks, P is
    normalised by the denominator that includes them (the formulas are otherwise unchanged;
    the sinks' own gradient is computed by the autograd layer from out and lse)."""
    ct = compute_dtype(q)
    b, sq, hq, _ = q.shape
    sk, hk = k.shape[1], k.shape[2]
    if sk == 0:  # no keys: output is constant 0
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    visible, d = visibility(sq, sk, causal, window_left, window_right, q.device)
    qf, kf, vf, do = q.to(ct), _expand_kv(k, hq).to(ct), _expand_kv(v, hq).to(ct), dout.to(ct)
    raw = torch.einsum("bqhd,bkhd->bhqk", qf, kf) * softmax_scale
    s = raw
    if softcap > 0:
        t = torch.tanh(raw / softcap)
        s = softcap * t
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(ct)
        slopes = slopes[None, :] if slopes.dim() == 1 else slopes
        s = s - slopes[:, :, None, None] * d.abs().to(ct)[None, None]
    p, _ = _softmax_with_lse(s, visible, sinks)
    dv = torch.einsum("bhqk,bqhd->bkhd", p, do)
    # masked keys' dP is 0, not dO . V (a non-finite V row a query cannot see stays out)
    dp = torch.einsum("bqhd,bkhd->bhqk", do, vf).masked_fill(~visible, 0.0)
    ds = p * (dp - (dp * p).sum(dim=-1, keepdim=True))
    if dlse is not None:
        ds = ds + p * dlse.to(ct)[..., None]
    if softcap > 0:
        ds = ds * (1 - t * t)
    dq = torch.einsum("bhqk,bkhd->bqhd", ds, kf) * softmax_scale
    dk = torch.einsum("bhqk,bqhd->bkhd", ds, qf) * softmax_scale
    if hk != hq:  # fold the query-head groups back onto their KV head
        g = hq // hk
        dk = dk.reshape(b, sk, hk, g, -1).sum(dim=3)
        dv = dv.reshape(b, sk, hk, g, -1).sum(dim=3)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _sequences(cu_seqlens_q, cu_seqlens_k):
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    return [(b, cq[b], cq[b + 1], ck[b], ck[b + 1]) for b in range(len(cq) - 1)]


def _slopes_for(alibi_slopes, b):
    if alibi_slopes is None:
        return None
    return alibi_slopes[b] if alibi_slopes.dim() == 2 else alibi_slopes


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                     softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks=None):
    """Packed sequences: q [total_q, Hq, D], k/v [total_k, Hkv, D], cu_seqlens int32 [B + 1]
    -> (out [total_q, Hq, D], lse fp32 [Hq, total_q]). Each sequence is independent."""
    out = torch.zeros(*q.shape[:2], v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32, device=q.device)
    if sinks is not None:   # rows that see no key keep out 0 and get lse = their head's sink
        lse.copy_(sinks.to(torch.float32)[:, None].expand_as(lse))
    for b, q0, q1, k0, k1 in _sequences(cu_seqlens_q, cu_seqlens_k):
        if q1 == q0 or k1 == k0:  # no query, or no key: out stays 0, lse -inf (or the sink)
            continue
        o, l = attention(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], causal, softmax_scale,
                         window_left, window_right, softcap, _slopes_for(alibi_slopes, b), sinks)
        out[q0:q1] = o[0]
        lse[:, q0:q1] = l[0]
    return out, lse


def varlen_attention_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                              max_seqlen_q, max_seqlen_k, causal, softmax_scale, window_left,
                              window_right, softcap, alibi_slopes, dlse=None, sinks=None):
    """Per-sequence attention_backward; dlse fp32 [Hq, total_q] or None."""
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for b, q0, q1, k0, k1 in _sequences(cu_seqlens_q, cu_seqlens_k):
        if q1 == q0 or k1 == k0:
            continue
        g = attention_backward(dout[None, q0:q1], q[None, q0:q1], k[None, k0:k1],
                               v[None, k0:k1], None, None, causal, softmax_scale, window_left,
                               window_right, softcap, _slopes_for(alibi_slopes, b),
                               None if dlse is None else dlse[None, :, q0:q1], sinks)
        dq[q0:q1], dk[k0:k1], dv[k0:k1] = g[0][0], g[1][0], g[2][0]
    return dq, dk, dv
