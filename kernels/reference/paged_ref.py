"""Pure-torch oracle for paged decode, KV-cache writes and attention-state merging.

Paged layout: k_cache/v_cache [num_blocks, block_size, heads_kv, D]; block_table int32
[num_seqs, max_blocks] lists each sequence's blocks in order (any block ids, shared blocks
allowed); seq_lens int32 [num_seqs] counts the tokens of each sequence including the q_len new
ones. Token p of sequence s lives at block_table[s, p // block_size], offset p % block_size.
The q_len queries are the sequence's last q_len positions: the attention rules of
reference.attention apply with Sq = q_len, Sk = seq_len, causal always.
fp8 caches hold value / scale: real value = cache value * k_scale (v_scale).
"""
from __future__ import annotations

import torch

from .attention_ref import attention


def gather_kv(cache: torch.Tensor, block_table_row: torch.Tensor, seq_len: int, scale: float,
              dtype: torch.dtype) -> torch.Tensor:
    """One sequence's keys or values [seq_len, heads_kv, D] in ``dtype`` (dequantised)."""
    block_size = cache.shape[1]
    nblocks = (seq_len + block_size - 1) // block_size
    blocks = block_table_row[:nblocks].long()
    x = cache[blocks].reshape(nblocks * block_size, *cache.shape[2:])[:seq_len]
    if x.dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2):
        return (x.to(torch.float32) * scale).to(dtype)
    return x.to(dtype)


def paged_attention(q, k_cache, v_cache, block_table, seq_lens, softmax_scale, window_left,
                    window_right, softcap, alibi_slopes, k_scale, v_scale):
    """q [num_seqs, q_len, Hq, D] -> (out [num_seqs, q_len, Hq, D] q.dtype,
    lse fp32 [num_seqs, Hq, q_len])."""
    num_seqs, q_len, hq, _ = q.shape
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.empty_like(q)
    lse = torch.empty(num_seqs, hq, q_len, dtype=torch.float32, device=q.device)
    for s, seq_len in enumerate(seq_lens.tolist()):
        k = gather_kv(k_cache, block_table[s], seq_len, k_scale, ct)
        v = gather_kv(v_cache, block_table[s], seq_len, v_scale, ct)
        slopes = None
        if alibi_slopes is not None:
            slopes = alibi_slopes[s] if alibi_slopes.dim() == 2 else alibi_slopes
        o, l = attention(q[s:s + 1].to(ct), k[None], v[None], True, softmax_scale, window_left,
                         window_right, softcap, slopes)
        out[s] = o[0].to(q.dtype)
        lse[s] = l[0]
    return out, lse


def _fp8_max(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).max


def write_kv_cache(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale):
    """Scatter k/v [num_tokens, heads_kv, D] into the caches at slot_mapping [num_tokens]
    (slot = block * block_size + offset; -1 = padding, skipped). In place; returns None.
    fp8 caches store value / scale, saturated to the format's finite range."""
    block_size = k_cache.shape[1]
    slots = slot_mapping.long()
    keep = slots >= 0
    slots = slots[keep]
    blocks, offsets = slots // block_size, slots % block_size
    for src, cache, scale in ((k[keep], k_cache, k_scale), (v[keep], v_cache, v_scale)):
        if cache.dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2):
            lim = _fp8_max(cache.dtype)
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
