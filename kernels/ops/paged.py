"""pk.paged_attention, pk.varlen_paged_attention, pk.write_kv_cache, pk.merge_attention_states (inference only, no autograd).

Layouts and semantics: reference/paged_ref.py. Each is also ``torch.ops.polykernels.<name>``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._library import define, fake
from ._run import empty_like_contiguous, run
from . import checks, paged_out


@define("paged_attention")
def _paged(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor, seq_lens: Tensor,
           softmax_scale: float, window_left: int, window_right: int, softcap: float,
           alibi_slopes: Optional[Tensor], k_scale: float, v_scale: float,
           kv_scales: Optional[Tensor] = None, sinks: Optional[Tensor] = None
           ) -> tuple[Tensor, Tensor]:
    return run("paged_attention", q, k_cache, v_cache, block_table, seq_lens, softmax_scale,
               window_left, window_right, softcap, alibi_slopes, k_scale, v_scale, kv_scales,
               sinks)


@fake(_paged)
def _(q, *rest):
    n, q_len, hq, d = q.shape
    return q.new_empty(n, q_len, hq, d), q.new_empty(n, hq, q_len, dtype=torch.float32)


def paged_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor,
                    seq_lens: Tensor, *, softmax_scale: float | None = None,
                    window: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                    alibi_slopes: Tensor | None = None, sinks: Tensor | None = None,
                    return_lse: bool = False, k_scale: float | Tensor = 1.0,
                    v_scale: float | Tensor = 1.0, out: Tensor | None = None):
    """Decode attention over a paged KV cache.

    q [num_seqs, q_len, heads_q, D] (q_len 1 for decode, more for speculative decoding: the
    last q_len positions of each sequence, attending causally); k_cache/v_cache [num_blocks,
    block_size, heads_kv, D] in q's dtype or fp8 e4m3 (real value = stored * k_scale / v_scale);
    block_table int32 [num_seqs, max_blocks]; seq_lens int32 [num_seqs] (tokens including the
    new ones; 0 marks a padded slot: its rows give 0 and lse -inf). k_scale / v_scale (fp8
    caches only): floats, one-element tensors or per-KV-head tensors [heads_kv]. sinks
    [heads_q]: attention sinks (pk.attention's rule). Returns out [num_seqs, q_len, heads_q, D]
    and, with return_lse, lse fp32 [num_seqs, heads_q, q_len]. ``out=``: a preallocated
    result (q's shape and dtype, any strides) written in place and returned.
    """
    args = paged_attention_args(
        q, k_cache, v_cache, block_table, seq_lens, softmax_scale=softmax_scale, window=window,
        softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks, k_scale=k_scale, v_scale=v_scale)
    if out is None:
        out, lse = _paged(*args)
    else:
        n, q_len, hq, _ = q.shape
        out, lse = paged_out.buffers(out, _named(args), q.shape, (n, hq, q_len), return_lse)
        paged_out.paged_attention_out(*args, out, lse)
    return (out, lse) if return_lse else out


def _named(args: tuple) -> dict:
    """The tensors among a paged op's internal arguments that ``out`` must not overlap."""
    names = ("q", "k_cache", "v_cache", "block_table", "seq_lens")
    extra = {"alibi_slopes": args[-5], "kv_scales": args[-2], "sinks": args[-1]}
    return {**dict(zip(names, args)), **extra}


def paged_attention_args(q, k_cache, v_cache, block_table, seq_lens, *, softmax_scale=None,
                         window=(-1, -1), softcap=0.0, alibi_slopes=None, sinks=None,
                         return_lse=False, k_scale=1.0, v_scale=1.0) -> tuple:
    """Validate public arguments; return the op's internal arguments."""
    checks.paged(q, k_cache, v_cache, block_table, seq_lens)
    return (q, k_cache, v_cache, block_table, seq_lens) + _attention_args(
        q, k_cache, q.shape[0], q.shape[2], softmax_scale, window, softcap, alibi_slopes, sinks,
        k_scale, v_scale)


def _attention_args(q, k_cache, num_seqs: int, heads_q: int, softmax_scale, window, softcap,
                    alibi_slopes, sinks, k_scale, v_scale) -> tuple:
    """The paged ops' shared trailing internal arguments, validated: (softmax_scale,
    window_left, window_right, softcap, alibi_slopes, k_scale, v_scale, kv_scales, sinks)."""
    k_scale, v_scale, kv_scales = checks.kv_cache_scales(k_scale, v_scale, k_cache)
    wl, wr = checks.window_pair(window)
    scale, softcap = checks.scalar_args(softmax_scale, softcap, q.shape[-1])
    checks.alibi(alibi_slopes, q, num_seqs, heads_q)
    sinks = checks.sinks(sinks, q, heads_q)
    return scale, wl, wr, softcap, alibi_slopes, k_scale, v_scale, kv_scales, sinks


@define("varlen_paged_attention")
def _varlen_paged(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor,
                  seq_lens: Tensor, cu_seqlens_q: Tensor, max_seqlen_q: int, softmax_scale: float,
                  window_left: int, window_right: int, softcap: float,
                  alibi_slopes: Optional[Tensor], k_scale: float, v_scale: float,
                  kv_scales: Optional[Tensor] = None, sinks: Optional[Tensor] = None
                  ) -> tuple[Tensor, Tensor]:
    return run("varlen_paged_attention", q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q,
               max_seqlen_q, softmax_scale, window_left, window_right, softcap, alibi_slopes,
               k_scale, v_scale, kv_scales, sinks)


@fake(_varlen_paged)
def _(q, *rest):
    t, hq, d = q.shape
    return q.new_empty(t, hq, d), q.new_empty(hq, t, dtype=torch.float32)


def varlen_paged_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor,
                           seq_lens: Tensor, cu_seqlens_q: Tensor, max_seqlen_q: int | None = None,
                           *, softmax_scale: float | None = None,
                           window: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                           alibi_slopes: Tensor | None = None, sinks: Tensor | None = None,
                           return_lse: bool = False, k_scale: float | Tensor = 1.0,
                           v_scale: float | Tensor = 1.0, out: Tensor | None = None):
    """Packed variable-length queries over a paged KV cache: prefill, chunked prefill,
    prefix-cached prefill, speculative decode and decode rows in one call.

    q [total_q, heads_q, D]; sequence s owns rows cu_seqlens_q[s]:cu_seqlens_q[s + 1]
    (cu_seqlens_q int32 [num_seqs + 1], prefix sums of the query lengths, any length >= 0),
    which are its last q_len_s positions and attend causally to its seq_lens[s] cached tokens
    (seq_lens counts the new tokens too, so q_len_s <= seq_lens[s]; seq_lens[s] = 0 marks a
    padded slot whose rows give 0 and lse -inf). Caches, block_table, window, softcap, ALiBi
    ([heads_q] or [num_seqs, heads_q]) and fp8 scales are those of ``paged_attention``.
    max_seqlen_q bounds the query lengths (a GPU kernel sizes its grid from it; None reads it
    from cu_seqlens_q, a host sync). Returns out [total_q, heads_q, D] and, with return_lse,
    lse fp32 [heads_q, total_q] (varlen_attention's layouts). ``out=``: a preallocated result
    (q's shape and dtype, any strides) written in place and returned.
    """
    args = varlen_paged_attention_args(
        q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q,
        softmax_scale=softmax_scale, window=window, softcap=softcap, alibi_slopes=alibi_slopes,
        sinks=sinks, k_scale=k_scale, v_scale=v_scale)
    if out is None:
        out, lse = _varlen_paged(*args)
    else:
        total_q, hq, _ = q.shape
        named = {**_named(args), "cu_seqlens_q": cu_seqlens_q}
        out, lse = paged_out.buffers(out, named, q.shape, (hq, total_q), return_lse)
        paged_out.varlen_paged_attention_out(*args, out, lse)
    return (out, lse) if return_lse else out


def varlen_paged_attention_args(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q,
                                max_seqlen_q=None, *, softmax_scale=None, window=(-1, -1),
                                softcap=0.0, alibi_slopes=None, sinks=None, return_lse=False,
                                k_scale=1.0, v_scale=1.0) -> tuple:
    """Validate public arguments; return the op's internal arguments."""
    if max_seqlen_q is None:  # read from cu_seqlens_q (a host sync on a GPU; pass it to avoid one)
        checks.tensor(cu_seqlens_q, "cu_seqlens_q", ndim=1, dtypes=(torch.int32,))
        checks.same_device(q, "q", cu_seqlens_q=cu_seqlens_q)
        if torch.compiler.is_compiling() or cu_seqlens_q.device.type == "meta":
            raise ValueError("max_seqlen_q: required where cu_seqlens_q cannot be read "
                             "(torch.compile, meta tensors)")
        max_seqlen_q = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max()) if cu_seqlens_q.numel() > 1 else 0
    checks.varlen_paged(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q)
    return (q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q
            ) + _attention_args(q, k_cache, seq_lens.shape[0], q.shape[1], softmax_scale, window,
                                softcap, alibi_slopes, sinks, k_scale, v_scale)


@define("write_kv_cache", mutates_args=("k_cache", "v_cache"))
def _write_kv(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor,
              k_scale: float, v_scale: float, kv_scales: Optional[Tensor] = None) -> None:
    # again here, at run time: a compiled graph's public call could not compare memory
    checks.no_aliasing(dict(k_cache=k_cache, v_cache=v_cache), dict(k=k, v=v, slot_mapping=slot_mapping))
    run("write_kv_cache", k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale, kv_scales)


@fake(_write_kv)
def _(*args):
    return None


def write_kv_cache(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor,
                   *, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """Scatter new tokens into the paged caches, in place.

    k/v [num_tokens, heads_kv, D]; k_cache/v_cache [num_blocks, block_size, heads_kv, D];
    slot_mapping int32/int64 [num_tokens], slot = block * block_size + offset, -1 = padding
    (skipped). fp8 caches store value / scale; k_scale / v_scale are floats, one-element
    tensors or per-KV-head tensors [heads_kv].
    """
    _write_kv(*write_kv_cache_args(k, v, k_cache, v_cache, slot_mapping, k_scale=k_scale,
                                   v_scale=v_scale))


def write_kv_cache_args(k, v, k_cache, v_cache, slot_mapping, *, k_scale=1.0, v_scale=1.0):
    checks.kv_write(k, v, k_cache, v_cache, slot_mapping)
    k_scale, v_scale, kv_scales = checks.kv_cache_scales(k_scale, v_scale, k_cache)
    return k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale, kv_scales


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
