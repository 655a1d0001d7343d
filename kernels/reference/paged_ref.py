"""Pure-torch oracle for paged decode, KV-cache writes and attention-state merging.

Paged layout: k_cache/v_cache [num_blocks, block_size, heads_kv, D]; block_table int32
[num_seqs, max_blocks] lists each sequence's blocks in order (any block ids, shared blocks
allowed); seq_lens int32 [num_seqs] counts the tokens of each sequence including the q_len new
ones. Token p of sequence s lives at block_table[s, p // block_size], offset p % block_size.
The q_len queries are the sequence's last q_len positions: the attention rules of
reference.attention apply with Sq = q_len, Sk = seq_len, causal always. varlen_paged_attention
packs the queries ([total_q, Hq, D], cu_seqlens_q), so q_len differs per sequence. A sequence
with seq_len 0 (a padded batch slot) has no visible key: out 0, lse -inf. Sinks (fp32
[Hq]): reference.attention's rule.
fp8 caches hold value / scale: real value = cache value * k_scale (v_scale).
"""
from __future__ import annotations

import torch

from .attention_ref import attention


def gather_kv(cache: torch.Tensor, block_table_row: torch.Tensor, seq_len: int, scale=1.0,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """One sequence's keys or values [seq_len, heads_kv, D] (an index copy of its blocks) in
    ``dtype``, default the cache's (dequantised: fp8 values times ``scale``, a float or a
    per-KV-head tensor [heads_kv])."""
    if dtype is None:
        dtype = cache.dtype
    block_size = cache.shape[1]
    nblocks = (seq_len + block_size - 1) // block_size
    blocks = block_table_row[:nblocks].long()
    x = cache[blocks].reshape(nblocks * block_size, *cache.shape[2:])[:seq_len]
    if x.dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2):
        if isinstance(scale, torch.Tensor):
            scale = scale.to(torch.float32)[:, None]
        return (x.to(torch.float32) * scale).to(dtype)
    return x.to(dtype)


def cache_scales(k_scale: float, v_scale: float, kv_scales):
    """The scales the op was given: floats, times the per-KV-head rows of kv_scales
    ([2, heads_kv] fp32, row 0 keys, row 1 values) when present."""
    if kv_scales is None:
        return k_scale, v_scale
    return kv_scales[0] * k_scale, kv_scales[1] * v_scale


def _attend_paged(q_seq, k_cache, v_cache, block_table_row, seq_len, softmax_scale, window_left,
                  window_right, softcap, slopes, k_scale, v_scale, ct, sinks=None):
    """One sequence: q_seq [q_len, Hq, D] (its last q_len positions) -> (out [q_len, Hq, D] ct,
    lse [Hq, q_len])."""
    k = gather_kv(k_cache, block_table_row, seq_len, k_scale, ct)
    v = gather_kv(v_cache, block_table_row, seq_len, v_scale, ct)
    o, l = attention(q_seq[None].to(ct), k[None], v[None], True, softmax_scale, window_left,
                     window_right, softcap, slopes, sinks)
    return o[0], l[0]


def _slopes(alibi_slopes, s):
    if alibi_slopes is None:
        return None
    return alibi_slopes[s] if alibi_slopes.dim() == 2 else alibi_slopes


def paged_attention(q, k_cache, v_cache, block_table, seq_lens, softmax_scale, window_left,
                    window_right, softcap, alibi_slopes, k_scale, v_scale, kv_scales=None,
                    sinks=None):
    """q [num_seqs, q_len, Hq, D] -> (out [num_seqs, q_len, Hq, D] q.dtype,
    lse fp32 [num_seqs, Hq, q_len]). A sequence with seq_len 0 (padding) gives 0 / -inf."""
    num_seqs, q_len, hq, _ = q.shape
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    k_scale, v_scale = cache_scales(k_scale, v_scale, kv_scales)
    out = torch.empty_like(q)
    lse = torch.empty(num_seqs, hq, q_len, dtype=torch.float32, device=q.device)
    for s, seq_len in enumerate(seq_lens.tolist()):
        o, l = _attend_paged(q[s], k_cache, v_cache, block_table[s], seq_len, softmax_scale,
                             window_left, window_right, softcap, _slopes(alibi_slopes, s),
                             k_scale, v_scale, ct, sinks)
        out[s] = o.to(q.dtype)
        lse[s] = l
    return out, lse


def varlen_paged_attention(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q,
                           softmax_scale, window_left, window_right, softcap, alibi_slopes,
                           k_scale, v_scale, kv_scales=None, sinks=None):
    """q [total_q, Hq, D] packed: sequence s owns rows cu_seqlens_q[s]:cu_seqlens_q[s + 1], its
    last q_len_s positions (any q_len_s >= 0, decode and prefill rows mixed) -> (out
    [total_q, Hq, D] q.dtype, lse fp32 [Hq, total_q]). seq_len 0 (padding) gives 0 / -inf."""
    total_q, hq, _ = q.shape
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    k_scale, v_scale = cache_scales(k_scale, v_scale, kv_scales)
    out = torch.empty_like(q)
    lse = torch.empty(hq, total_q, dtype=torch.float32, device=q.device)
    cu = cu_seqlens_q.tolist()
    for s, seq_len in enumerate(seq_lens.tolist()):
        a, b = cu[s], cu[s + 1]
        if a == b:
            continue
        o, l = _attend_paged(q[a:b], k_cache, v_cache, block_table[s], seq_len, softmax_scale,
                             window_left, window_right, softcap, _slopes(alibi_slopes, s),
                             k_scale, v_scale, ct, sinks)
        out[a:b] = o.to(q.dtype)
        lse[:, a:b] = l
    return out, lse


def _fp8_max(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).max


def write_kv_cache(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale, kv_scales=None):
    """Scatter k/v [num_tokens, heads_kv, D] into the caches at slot_mapping [num_tokens]
    (slot = block * block_size + offset; -1 = padding, skipped). In place; returns None.
    fp8 caches store value / scale (per KV head with kv_scales), saturated to the format's
    finite range."""
    block_size = k_cache.shape[1]
    slots = slot_mapping.long()
    keep = slots >= 0
    slots = slots[keep]
    blocks, offsets = slots // block_size, slots % block_size
    k_scale, v_scale = cache_scales(k_scale, v_scale, kv_scales)
    for src, cache, scale in ((k[keep], k_cache, k_scale), (v[keep], v_cache, v_scale)):
        if cache.dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2):
            lim = _fp8_max(cache.dtype)
            if isinstance(scale, torch.Tensor):
                scale = scale.to(torch.float32)[:, None]
            vals = (src.to(torch.float32) / scale).clamp(-lim, lim).to(cache.dtype)
        else:
            vals = src.to(cache.dtype)
        cache[blocks, offsets] = vals


def merge_attention_states(out_a, lse_a, out_b, lse_b):
    """Combine two partial attentions over disjoint key sets into the attention over their union.

    out_* [..., S, H, D], lse_* fp32 [..., H, S]. A side with lse -inf contributes nothing;
    both -inf gives out 0 and lse -inf. lse +inf marks an empty side too (FlashAttention-2
    writes it for a zero-length sequence; vLLM's convention)."""
    ct = torch.float64 if out_a.dtype == torch.float64 else torch.float32
    la, lb = (torch.where(l == float("inf"), float("-inf"), l.to(ct)) for l in (lse_a, lse_b))
    m = torch.maximum(la, lb)
    m_safe = torch.where(torch.isinf(m) & (m < 0), torch.zeros_like(m), m)
    ea, eb = torch.exp(la - m_safe), torch.exp(lb - m_safe)
    s = ea + eb
    lse = torch.log(s) + m_safe
    s_safe = torch.where(s == 0, torch.ones_like(s), s)
    wa = (ea / s_safe).transpose(-1, -2)[..., None]  # [..., S, H, 1]
    wb = (eb / s_safe).transpose(-1, -2)[..., None]
    oa = torch.where(wa != 0, out_a.to(ct), torch.zeros((), dtype=ct, device=out_a.device))
    ob = torch.where(wb != 0, out_b.to(ct), torch.zeros((), dtype=ct, device=out_b.device))
    out = oa * wa + ob * wb
    return out.to(out_a.dtype), lse.to(torch.float32)
