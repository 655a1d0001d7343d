"""``paged_attention`` and ``varlen_paged_attention`` from torch's own CPU flash kernel: each
sequence's blocks gathered into a dense K/V (one index copy), then torch's attention
(``attention.attention`` here: bottom-right causal, empty sequences and non-finite V handled).

What a torch user writes for a paged cache, offered as a provider so measured selection can
pick it where torch's kernel is faster than ours (on AVX2 CPUs its prefill is; the benchmark
bench_varlen_paged.py measures both). A decode row (one query) sees every key of its
sequence, so its query heads are folded into query rows of their KV head: one [g, Hkv] call
instead of an [1, Hq] GQA one (measured 3-8x faster for decode rows on the AVX2 CPU).

Refused (exactness first): fp8 caches (dequantising into q's dtype would round twice), kv
scales, softcap, ALiBi, windows, sinks, a strided query head dim; GPUs (path pending).
It reads seq_lens / cu_seqlens / the block table on the host, so it checks their values itself.
"""
from __future__ import annotations

import torch

from ..ops import checks
from ..reference.paged_ref import gather_kv
from . import attention as flash
from .common import cpu_only_reason

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _one(q, k_cache, v_cache, table_row, seq_len: int, scale: float):
    """q [q_len, Hq, D] of one sequence -> (out [q_len, Hq, D], lse [Hq, q_len])."""
    q_len, hq, d = q.shape
    if q_len == 0:
        return q.new_zeros(0, hq, d), q.new_zeros(hq, 0, dtype=torch.float32)
    k, v = gather_kv(k_cache, table_row, seq_len), gather_kv(v_cache, table_row, seq_len)
    hk = k.shape[1]
    if q_len == 1 and seq_len > 0 and hk != hq:
        # fold: the g query heads of a KV head become g query rows (all see every key)
        g = hq // hk
        out, lse = flash.attention(q.view(1, hk, g, d).transpose(1, 2), k[None], v[None], False,
                                   scale, -1, -1, 0.0, None)
        return out.transpose(1, 2).reshape(1, hq, d), lse.reshape(hq, 1)
    out, lse = flash.attention(q[None], k[None], v[None], True, scale, -1, -1, 0.0, None)
    return out[0], lse[0]


def paged_attention(q, k_cache, v_cache, block_table, seq_lens, softmax_scale, window_left,
                    window_right, softcap, alibi_slopes, k_scale, v_scale, kv_scales=None,
                    sinks=None):
    checks.paged_values(block_table, seq_lens, q.shape[1], k_cache.shape[0], k_cache.shape[1])
    n, q_len, hq, d = q.shape
    out = q.new_empty(n, q_len, hq, d)
    lse = q.new_empty(n, hq, q_len, dtype=torch.float32)
    for s, seq_len in enumerate(seq_lens.tolist()):
        out[s], lse[s] = _one(q[s], k_cache, v_cache, block_table[s], seq_len, softmax_scale)
    return out, lse


def varlen_paged_attention(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q,
                           softmax_scale, window_left, window_right, softcap, alibi_slopes,
                           k_scale, v_scale, kv_scales=None, sinks=None):
    checks.varlen_paged_values(block_table, seq_lens, cu_seqlens_q, q.shape[0], max_seqlen_q,
                               k_cache.shape[0], k_cache.shape[1])
    total, hq, d = q.shape
    out = q.new_empty(total, hq, d)
    lse = q.new_empty(hq, total, dtype=torch.float32)
    cu = cu_seqlens_q.tolist()
    for s, seq_len in enumerate(seq_lens.tolist()):
        a, b = cu[s], cu[s + 1]
        if a < b:
            out[a:b], lse[:, a:b] = _one(q[a:b], k_cache, v_cache, block_table[s], seq_len,
                                         softmax_scale)
    return out, lse


def _refusal(q, k_cache, softcap, alibi_slopes, window_left, kv_scales, sinks, op) -> str | None:
    reason = cpu_only_reason(op, q, why="GPU path pending")
    if reason:
        return reason
    if q.dtype not in _FLOATS or k_cache.dtype != q.dtype:
        return f"dtypes q {q.dtype}, cache {k_cache.dtype} (torch's kernel: caches in q's float dtype; no fp8)"
    if softcap > 0 or alibi_slopes is not None or sinks is not None:
        return "softcap / ALiBi / sinks not supported by torch's SDPA kernels"
    if window_left >= 0:
        return f"sliding window (left={window_left}) not supported by torch's flash kernel"
    if kv_scales is not None:
        return "kv_scales (fp8 caches only) not supported"
    if q.shape[-1] > 1 and q.stride(-1) != 1:
        return "q has a strided head dim (torch's CPU flash kernel returns wrong results for it)"
    return None


def paged_attention_supports(q, k_cache, v_cache, block_table, seq_lens, softmax_scale,
                             window_left, window_right, softcap, alibi_slopes, k_scale, v_scale,
                             kv_scales=None, sinks=None):
    return _refusal(q, k_cache, softcap, alibi_slopes, window_left, kv_scales, sinks,
                    "paged_attention")


def varlen_paged_attention_supports(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q,
                                    max_seqlen_q, softmax_scale, window_left, window_right,
                                    softcap, alibi_slopes, k_scale, v_scale, kv_scales=None,
                                    sinks=None):
    return _refusal(q, k_cache, softcap, alibi_slopes, window_left, kv_scales, sinks,
                    "varlen_paged_attention")
