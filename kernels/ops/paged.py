"""pk.paged_attention, pk.write_kv_cache, pk.merge_attention_states (inference only, no autograd).

Layouts and semantics: reference/paged_ref.py. Each is also ``torch.ops.polykernels.<name>``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._library import define, fake
from ._run import empty_like_contiguous, run
from . import checks


@define("paged_attention")
def _paged(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor, seq_lens: Tensor,
           softmax_scale: float, window_left: int, window_right: int, softcap: float,
           alibi_slopes: Optional[Tensor], k_scale: float, v_scale: float) -> tuple[Tensor, Tensor]:
    return run("paged_attention", q, k_cache, v_cache, block_table, seq_lens, softmax_scale,
                    window_left, window_right, softcap, alibi_slopes, k_scale, v_scale)


@fake(_paged)
def _(q, *rest):
    n, q_len, hq, d = q.shape
    return q.new_empty(n, q_len, hq, d), q.new_empty(n, hq, q_len, dtype=torch.float32)


def paged_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor,
                    seq_lens: Tensor, *, softmax_scale: float | None = None,
                    window: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                    alibi_slopes: Tensor | None = None, return_lse: bool = False,
                    k_scale: float = 1.0, v_scale: float = 1.0):
    """Decode attention over a paged KV cache.

    q [num_seqs, q_len, heads_q, D] (q_len 1 for decode, more for speculative decoding: the
    last q_len positions of each sequence, attending causally); k_cache/v_cache [num_blocks,
    block_size, heads_kv, D] in q's dtype or fp8 e4m3 (real value = stored * k_scale / v_scale);
    block_table int32 [num_seqs, max_blocks]; seq_lens int32 [num_seqs] (tokens including the
    new ones). Returns out [num_seqs, q_len, heads_q, D] and, with return_lse, lse fp32
    [num_seqs, heads_q, q_len].
    """
    out, lse = _paged(*paged_attention_args(
        q, k_cache, v_cache, block_table, seq_lens, softmax_scale=softmax_scale, window=window,
        softcap=softcap, alibi_slopes=alibi_slopes, k_scale=k_scale, v_scale=v_scale))
    return (out, lse) if return_lse else out


def paged_attention_args(q, k_cache, v_cache, block_table, seq_lens, *, softmax_scale=None,
                         window=(-1, -1), softcap=0.0, alibi_slopes=None, return_lse=False,
                         k_scale=1.0, v_scale=1.0) -> tuple:
    """Validate public arguments; return the op's internal arguments."""
    k_scale, v_scale = checks.cache_scale(k_scale, "k_scale"), checks.cache_scale(v_scale, "v_scale")
    checks.paged(q, k_cache, v_cache, block_table, seq_lens, k_scale, v_scale)
    wl, wr = checks.window_pair(window)
    scale, softcap = checks.scalar_args(softmax_scale, softcap, q.shape[-1])
    checks.alibi(alibi_slopes, q, q.shape[0], q.shape[2])
    return (q, k_cache, v_cache, block_table, seq_lens, scale, wl, wr, softcap, alibi_slopes,
            k_scale, v_scale)


@define("write_kv_cache", mutates_args=("k_cache", "v_cache"))
def _write_kv(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor,
              k_scale: float, v_scale: float) -> None:
    # again here, at run time: a compiled graph's public call could not compare memory
    checks.no_aliasing(dict(k_cache=k_cache, v_cache=v_cache), dict(k=k, v=v, slot_mapping=slot_mapping))
    run("write_kv_cache", k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)


@fake(_write_kv)
def _(*args):
    return None


def write_kv_cache(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor,
                   *, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """Scatter new tokens into the paged caches, in place.

    k/v [num_tokens, heads_kv, D]; k_cache/v_cache [num_blocks, block_size, heads_kv, D];
    slot_mapping int32/int64 [num_tokens], slot = block * block_size + offset, -1 = padding
    (skipped). fp8 caches store value / scale.
    """
    _write_kv(*write_kv_cache_args(k, v, k_cache, v_cache, slot_mapping, k_scale=k_scale,
                                   v_scale=v_scale))


def write_kv_cache_args(k, v, k_cache, v_cache, slot_mapping, *, k_scale=1.0, v_scale=1.0):
    k_scale, v_scale = checks.cache_scale(k_scale, "k_scale"), checks.cache_scale(v_scale, "v_scale")
    checks.kv_write(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    return k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale


@define("merge_attention_states")
def _merge(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    return run("merge_attention_states", out_a, lse_a, out_b, lse_b)


@fake(_merge)
def _(out_a, lse_a, out_b, lse_b):
    return empty_like_contiguous(out_a, lse_a)


def merge_attention_states(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor):
    """Combine attention over two disjoint key sets into attention over their union.

    out_* [..., seqlen, heads, D] (3-D or 4-D), lse_* fp32 [..., heads, seqlen]: the layouts
    pk.attention / varlen_attention / paged_attention return. Returns (out, lse).
    """
    return _merge(*merge_attention_states_args(out_a, lse_a, out_b, lse_b))


def merge_attention_states_args(out_a, lse_a, out_b, lse_b):
    checks.merge_states(out_a, lse_a, out_b, lse_b)
    return out_a, lse_a, out_b, lse_b
