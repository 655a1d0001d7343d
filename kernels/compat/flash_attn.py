"""flash-attn 2's Python API on polykernels' public ops: a drop-in.

    # from flash_attn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache
    from polykernels.compat.flash_attn import (flash_attn_func, flash_attn_varlen_func,
                                               flash_attn_with_kvcache)

Same function names, argument names, defaults and return conventions as flash-attn 2
(``flash_attn/flash_attn_interface.py``), including the packed variants
(``flash_attn_qkvpacked_func``, ``flash_attn_kvpacked_func``,
``flash_attn_varlen_qkvpacked_func``, ``flash_attn_varlen_kvpacked_func``). Semantics are
flash-attn 2's, which are this library's (docs/design.md): causal is bottom-right aligned when
seqlen_q != seqlen_k, ``window_size=(left, right)`` with -1 (any negative) unbounded,
``softcap > 0``, ALiBi slopes ``[nheads]`` or ``[batch, nheads]``, GQA/MQA; ``softmax_lse`` is
fp32 ``[batch, nheads, seqlen_q]`` (varlen: ``[nheads, total_q]``). flash-attn's own argument
normalisation is reproduced (a window side >= seqlen_k is unbounded; causal with one query row
and no ALiBi is plain attention; causal sets the right side to 0), so results match it also in
its corner cases. ``flash_attn_func`` / ``flash_attn_varlen_func`` (no ``block_table``) are
differentiable (``pk.attention`` / ``pk.varlen_attention``); ``flash_attn_with_kvcache`` is
inference only, as in flash-attn.

Deliberate differences:

- ``dropout_p`` must be 0.0 (ValueError otherwise): polykernels has no dropout.
- ``return_attn_probs=True`` returns ``(out, softmax_lse, None)``: the attention probabilities
  are never materialised (flash-attn returns an empty tensor there unless dropout_p > 0).
- A query row that sees no key gives out 0 and lse ``-inf`` (flash-attn writes ``+inf`` in
  some of its paths; ``pk.merge_attention_states`` treats both as empty).
- Wider input range: fp16, bf16 and fp32, any device polykernels runs on (CPU included), any
  strides, head dims 1..256 (not only multiples of 8), paged caches with any block size
  (flash-attn: multiples of 256; larger ones are viewed as blocks of <= 256 tokens, no copy).
- ``deterministic`` and ``num_splits`` are accepted and have no effect (the impls choose
  their own work split).
- ``rotary_cos`` / ``rotary_sin`` may be any float dtype (flash-attn: q's) and any
  rotary_dim <= d (flash-attn: a multiple of 16); the rotation runs in fp32.
- ``flash_attn_with_kvcache`` whose ``k``/``v`` would write two tokens to one cache slot
  (repeated ``cache_batch_idx`` entries) raises ``InvalidInputError`` instead of keeping an
  unspecified one.

Paths: a causal call (or one query row per sequence), the usual decode / chunked-prefill case,
runs the paged ops directly on the caches, without copying them (a contiguous
``[batch_cache, seqlen_cache, nheads_k, d]`` cache is viewed as blocks of at most 256 tokens).
Non-causal calls with several query rows over a cache, ``cache_leftpad``, ``seqused_k``
without ``block_table``, and (where index values are readable: CPU tensors, or
``POLYKERNELS_CHECK_VALUES=1``) a sequence holding fewer keys than query rows, gather that
call's keys into a packed batch and run ``pk.varlen_attention`` (reads the lengths on the host:
a device sync on GPUs). On GPUs without value checks, cache calls assume each non-empty
sequence has at least as many keys as query rows (true whenever ``k``/``v`` as long as q are
appended, the usual case).
"""
from __future__ import annotations

import math
import numbers
import re

import torch
from torch import Tensor

from ..dispatch.registry import InvalidInputError
from ..ops import checks as _checks
from ..ops.attention import attention, varlen_attention
from ..ops.paged import paged_attention, varlen_paged_attention, write_kv_cache

__all__ = [
    "flash_attn_func", "flash_attn_kvpacked_func", "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func", "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func", "flash_attn_with_kvcache",
]

_MAX_BLOCK = 256   # the paged ops' largest block_size


# -- argument handling ------------------------------------------------------------------------


def _no_dropout(dropout_p) -> None:
    ok = (not isinstance(dropout_p, bool) and isinstance(dropout_p, numbers.Real)
          and float(dropout_p) == 0.0)
    if not ok:
        raise ValueError(f"dropout_p: only 0.0 is supported (polykernels has no dropout; use it "
                         f"for inference or training without dropout), got {dropout_p!r}")


def _fa_mask(causal, window_size, seqlen_q: int, seqlen_k: int, has_alibi: bool):
    """flash-attn 2's own normalisation of (causal, window_size) (csrc/flash_attn/flash_api.cpp):
    a negative side is unbounded; a side >= seqlen_k is unbounded; causal with one query row
    and no ALiBi is plain attention (the same visible keys); causal sets the right side to 0.
    Returns (causal, (left, right)) for the polykernels ops."""
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected bool, got {type(causal).__name__}")
    left, right = _window_pair(window_size)
    if left >= seqlen_k:
        left = -1
    if right >= seqlen_k:
        right = -1
    if seqlen_q == 1 and not has_alibi:
        causal = False
    if causal:
        right = 0
    return causal, (left, right)


def _window_pair(window_size) -> tuple[int, int]:
    """``window_size`` checked by ``checks.window_pair``, any negative side read as -1
    (flash-attn's unbounded); its errors name ``window_size``."""
    pair = window_size
    if isinstance(pair, (tuple, list)) and len(pair) == 2:
        pair = tuple(-1 if isinstance(w, numbers.Integral) and w < 0 else w for w in pair)
    try:
        return _checks.window_pair(pair)
    except (TypeError, ValueError) as e:   # "window: ..." / "window[i]: ..."
        raise type(e)(re.sub(r"^window\b", "window_size", str(e))) from None


def _tensor(x, name: str, ndim: int) -> Tensor:
    return _checks.tensor(x, name, ndim=ndim)


def _int32_lengths(x, name: str, batch: int, device) -> Tensor:
    """cache_seqlens / seqused_k / cache_leftpad: an int32 (or int64) tensor [batch] on q's
    device, returned as int32."""
    _checks.tensor(x, name, ndim=1, dtypes=(torch.int32, torch.int64))
    if x.shape[0] != batch:
        raise ValueError(f"{name}: expected shape [{batch}] (one entry per sequence), got "
                         f"{tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name}: expected device {device} (that of q), got {x.device}")
    return x if x.dtype == torch.int32 else x.to(torch.int32)


# -- caches as blocks of <= 256 tokens (views, no copy) ---------------------------------------


def _as_blocks(cache: Tensor, block_size: int, row_stride: int):
    """View ``cache`` [rows, row_len, H, D] as [num_blocks, block_size, H, D] with block
    ``r * row_stride + j`` holding tokens ``j * block_size ...`` of row r. None if the strides
    do not allow it."""
    rows, row_len, h, d = cache.shape
    s0, s1, s2, s3 = cache.stride()
    if row_len <= _MAX_BLOCK and block_size == row_len:
        return cache
    if s1 <= 0 or (rows > 1 and s0 != row_stride * block_size * s1):
        return None
    num_blocks = (rows - 1) * row_stride + row_len // block_size
    return cache.as_strided((num_blocks, block_size, h, d), (block_size * s1, s1, s2, s3),
                            cache.storage_offset())


def _block_geometry(k_cache: Tensor, v_cache: Tensor):
    """(block_size, row_stride): a block size <= 256 dividing the caches' rows (dim 1) such that
    both caches can be viewed as such blocks; None if none can."""
    rows, row_len = k_cache.shape[:2]
    if rows == 0 or row_len == 0:
        return None
    if row_len <= _MAX_BLOCK:
        return row_len, 1
    for bs in range(_MAX_BLOCK, 0, -1):
        if row_len % bs:
            continue
        strides = set()
        for c in (k_cache, v_cache):
            s1 = c.stride(1)
            s0 = c.stride(0) if rows > 1 else row_len * s1   # one row: its stride is never used
            if s1 <= 0 or s0 % (bs * s1):
                break
            strides.add(s0 // (bs * s1))
        else:
            if len(strides) == 1:
                return bs, strides.pop()
    return None


def _blocked_caches(k_cache, v_cache, rows_table: Tensor):
    """The caches as blocks of <= 256 tokens and the block table over them.
    ``rows_table`` [batch, n]: the cache rows (dim 0) of each sequence, in order (a contiguous
    cache: [batch, 1] = its row; a paged cache: its block_table). Negative or out-of-range
    entries stay out of range (-1), so the ops' checks still see them. None if the strides
    do not allow a view."""
    geo = _block_geometry(k_cache, v_cache)
    if geo is None:
        return None
    bs, row_stride = geo
    rows, row_len = k_cache.shape[:2]
    per_row = row_len // bs
    kb = _as_blocks(k_cache, bs, row_stride)
    vb = _as_blocks(v_cache, bs, row_stride)
    if kb is None or vb is None:
        return None
    if per_row == 1 and row_stride == 1:
        table = rows_table
    else:
        t = rows_table.long()
        sub = torch.arange(per_row, device=t.device)
        blocks = t[:, :, None] * row_stride + sub
        blocks = torch.where(((t < 0) | (t >= rows))[:, :, None], -1, blocks)
        table = blocks.reshape(t.shape[0], -1)
    return kb, vb, table.to(torch.int32), bs


# -- gathered fallback ---------------------------------------------------------------------------


def _cache_rows(rows_table: Tensor, row_len: int, seq_idx: Tensor, pos: Tensor, num_rows: int,
                table_name: str) -> Tensor:
    """The cache rows (dim 0) holding tokens (seq_idx[t], pos[t]) when each sequence's tokens
    lie in the rows ``rows_table`` [batch, n] lists, ``row_len`` tokens each; checked where
    values are readable (InvalidInputError naming ``table_name``)."""
    rows = rows_table.long()[seq_idx, pos // row_len]
    if rows.numel() and _checks.check_values(rows):
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= num_rows:
            raise InvalidInputError(f"{table_name}: the sequences use cache rows outside "
                                    f"[0, {num_rows}) (min {lo}, max {hi})")
    return rows


def _token_index(starts: list[int], ends: list[int], device):
    seq_idx = torch.repeat_interleave(torch.arange(len(starts), device=device),
                                      torch.tensor([e - s for s, e in zip(starts, ends)],
                                                   device=device, dtype=torch.long))
    pos = torch.cat([torch.arange(s, e, device=device) for s, e in zip(starts, ends)]
                    ) if starts else torch.zeros(0, dtype=torch.long, device=device)
    return seq_idx, pos


def _gathered_varlen(q, cu_seqlens_q, max_seqlen_q, k_cache, v_cache, rows_table, row_len,
                     table_name, starts, ends, causal, window, softmax_scale, softcap,
                     alibi_slopes):
    """Attention of packed queries over each sequence's cache tokens [starts[b], ends[b]),
    gathered into a packed batch: pk.varlen_attention (any causal / window)."""
    seq_idx, pos = _token_index(starts, ends, q.device)
    rows = _cache_rows(rows_table, row_len, seq_idx, pos, k_cache.shape[0], table_name)
    k = k_cache[rows, pos % row_len]
    v = v_cache[rows, pos % row_len]
    lens = [e - s for s, e in zip(starts, ends)]
    cu_k = torch.tensor([0] + list(_cumsum(lens)), dtype=torch.int32, device=q.device)
    return varlen_attention(q, k, v, cu_seqlens_q, cu_k, max_seqlen_q, max(lens, default=0),
                            causal=causal, softmax_scale=softmax_scale, window=window,
                            softcap=softcap, alibi_slopes=alibi_slopes, return_lse=True)


def _cumsum(xs):
    total = 0
    for x in xs:
        total += x
        yield total


# -- dense and varlen ---------------------------------------------------------------------------


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                    return_attn_probs=False):
    """flash-attn 2's ``flash_attn_func`` on ``pk.attention`` (differentiable).

    q [batch, seqlen_q, nheads, d], k/v [batch, seqlen_k, nheads_k, d]. Returns out
    [batch, seqlen_q, nheads, d]; with ``return_attn_probs=True`` ``(out, softmax_lse, None)``,
    softmax_lse fp32 [batch, nheads, seqlen_q]. ``dropout_p`` must be 0.0.
    """
    _no_dropout(dropout_p)
    _tensor(q, "q", 4)
    _tensor(k, "k", 4)
    causal, window = _fa_mask(causal, window_size, q.shape[1], k.shape[1], alibi_slopes is not None)
    out, lse = attention(q, k, v, causal=causal, softmax_scale=softmax_scale, window=window,
                         softcap=softcap, alibi_slopes=alibi_slopes, return_lse=True)
    return (out, lse, None) if return_attn_probs else out


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False,
                              window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                              deterministic=False, return_attn_probs=False):
    """flash-attn 2's ``flash_attn_qkvpacked_func``: qkv [batch, seqlen, 3, nheads, d]."""
    _checks.tensor(qkv, "qkv", ndim=5)
    if qkv.shape[2] != 3:
        raise ValueError(f"qkv: expected [batch, seqlen, 3, nheads, d], got {tuple(qkv.shape)}")
    q, k, v = qkv.unbind(2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False,
                             window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                             deterministic=False, return_attn_probs=False):
    """flash-attn 2's ``flash_attn_kvpacked_func``: kv [batch, seqlen_k, 2, nheads_k, d]."""
    _checks.tensor(kv, "kv", ndim=5)
    if kv.shape[2] != 2:
        raise ValueError(f"kv: expected [batch, seqlen_k, 2, nheads_k, d], got {tuple(kv.shape)}")
    k, v = kv.unbind(2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                           softcap=0.0, alibi_slopes=None, deterministic=False,
                           return_attn_probs=False, block_table=None, seqused_k=None):
    """flash-attn 2's ``flash_attn_varlen_func``.

    q [total_q, nheads, d] packed by cu_seqlens_q int32 [batch + 1]. Without ``block_table``:
    k/v [total_k, nheads_k, d] packed by cu_seqlens_k (``pk.varlen_attention``,
    differentiable); ``seqused_k`` int32 [batch], if given, keeps only the first seqused_k[b]
    keys of sequence b. With ``block_table`` int32 [batch, max_blocks]: k/v are paged caches
    [num_blocks, page_block_size, nheads_k, d] and sequence b holds seqused_k[b] tokens if
    given, else cu_seqlens_k[b + 1] - cu_seqlens_k[b]; its queries are its last positions
    (``pk.varlen_paged_attention`` when causal or max_seqlen_q == 1; inference only).
    Returns out [total_q, nheads, d]; with ``return_attn_probs=True``
    ``(out, softmax_lse, None)``, softmax_lse fp32 [nheads, total_q].
    """
    _no_dropout(dropout_p)
    _tensor(q, "q", 3)
    _checks.tensor(cu_seqlens_q, "cu_seqlens_q", ndim=1, dtypes=(torch.int32,))
    _checks.tensor(cu_seqlens_k, "cu_seqlens_k", ndim=1, dtypes=(torch.int32,))
    for name, m in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        _checks.integer(m, name)
    batch = cu_seqlens_q.shape[0] - 1
    causal, window = _fa_mask(causal, window_size, max_seqlen_q, max_seqlen_k,
                              alibi_slopes is not None)
    kw = dict(softmax_scale=softmax_scale, softcap=softcap, alibi_slopes=alibi_slopes)
    if block_table is None:
        _tensor(k, "k", 3)
        if seqused_k is not None:
            seqused_k = _int32_lengths(seqused_k, "seqused_k", batch, q.device)
            starts = cu_seqlens_k[:-1].tolist()
            ends_all = cu_seqlens_k[1:].tolist()
            used = seqused_k.tolist()
            for b, (s, e, u) in enumerate(zip(starts, ends_all, used)):
                if not 0 <= u <= e - s:
                    raise InvalidInputError(f"seqused_k: entry {b} is {u}; expected 0 <= seqused_k "
                                            f"<= that sequence's keys ({e - s})")
            seq_idx, pos = _token_index(starts, [s + u for s, u in zip(starts, used)], q.device)
            k, v = k[pos], v[pos]
            cu_seqlens_k = torch.tensor([0] + list(_cumsum(used)), dtype=torch.int32,
                                        device=q.device)
        out, lse = varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                    max_seqlen_k, causal=causal, window=window, return_lse=True,
                                    **kw)
        return (out, lse, None) if return_attn_probs else out

    # paged K/V
    _tensor(k, "k", 4)
    _tensor(v, "v", 4)
    _checks.tensor(block_table, "block_table", ndim=2, dtypes=(torch.int32,))
    if block_table.shape[0] != batch:
        raise ValueError(f"block_table: expected {batch} rows (batch, from cu_seqlens_q), got "
                         f"{block_table.shape[0]}")
    if cu_seqlens_k.shape[0] != batch + 1:
        raise ValueError(f"cu_seqlens_k: expected {batch + 1} entries (that of cu_seqlens_q), "
                         f"got {cu_seqlens_k.shape[0]}")
    if seqused_k is not None:
        seq_lens = _int32_lengths(seqused_k, "seqused_k", batch, q.device)
    else:
        seq_lens = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).to(torch.int32)
    page = k.shape[1]
    fast = causal or window[1] == 0 or max_seqlen_q <= 1   # what the paged op computes
    q_lens = lens = None
    if _checks.check_values(cu_seqlens_q, seq_lens):
        q_lens = _checks.cu_seqlens_q_values(cu_seqlens_q, q.shape[0], max_seqlen_q)
        lens = seq_lens.tolist()
        cap = block_table.shape[1] * page
        for b, n in enumerate(lens):
            if not 0 <= n <= cap:
                what = "seqused_k" if seqused_k is not None else "cu_seqlens_k"
                raise InvalidInputError(f"{what}: sequence {b} has {n} keys; expected 0 <= keys "
                                        f"<= block_table columns x page_block_size ({cap})")
        fast = fast and all(n == 0 or n >= ql for n, ql in zip(lens, q_lens))
    blocked = _blocked_caches(k, v, block_table) if fast else None
    if blocked is not None:
        kb, vb, table, _ = blocked
        out, lse = varlen_paged_attention(
            q, kb, vb, table, seq_lens, cu_seqlens_q, max_seqlen_q, window=window,
            return_lse=True, **kw)
    else:
        if lens is None:
            lens = seq_lens.tolist()
        out, lse = _gathered_varlen(q, cu_seqlens_q, max_seqlen_q, k, v, block_table, page,
                                    "block_table", [0] * batch, lens, causal, window, **kw)
    return (out, lse, None) if return_attn_probs else out


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0,
                                     softmax_scale=None, causal=False, window_size=(-1, -1),
                                     softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    """flash-attn 2's ``flash_attn_varlen_qkvpacked_func``: qkv [total, 3, nheads, d]."""
    _checks.tensor(qkv, "qkv", ndim=4)
    if qkv.shape[1] != 3:
        raise ValueError(f"qkv: expected [total, 3, nheads, d], got {tuple(qkv.shape)}")
    q, k, v = qkv.unbind(1)
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  dropout_p, softmax_scale, causal, window_size, softcap,
                                  alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                    max_seqlen_k, dropout_p=0.0, softmax_scale=None,
                                    causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False,
                                    return_attn_probs=False):
    """flash-attn 2's ``flash_attn_varlen_kvpacked_func``: kv [total_k, 2, nheads_k, d]."""
    _checks.tensor(kv, "kv", ndim=4)
    if kv.shape[1] != 2:
        raise ValueError(f"kv: expected [total_k, 2, nheads_k, d], got {tuple(kv.shape)}")
    k, v = kv.unbind(1)
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                  max_seqlen_k, dropout_p, softmax_scale, causal, window_size,
                                  softcap, alibi_slopes, deterministic, return_attn_probs)


# -- KV cache -----------------------------------------------------------------------------------


def _rotary(x: Tensor, cos: Tensor, sin: Tensor, pos: Tensor, interleaved: bool) -> Tensor:
    """flash-attn's rotary embedding of x [B, S, H, D] at positions pos [B, S] (fp32 math, cast
    back): the first rotary_dim = 2 * cos.shape[1] dims rotate, the rest pass through.
    interleaved: pairs (0, 1), (2, 3), ...; else halves (GPT-NeoX)."""
    rd = 2 * cos.shape[1]
    c = cos.float()[pos][:, :, None, :]   # [B, S, 1, rd / 2]
    s = sin.float()[pos][:, :, None, :]
    xr = x[..., :rd].float()
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        rot = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    else:
        x1, x2 = xr[..., : rd // 2], xr[..., rd // 2:]
        rot = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    return torch.cat((rot.to(x.dtype), x[..., rd:]), dim=-1)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None,
                            block_table=None, softmax_scale=None, causal=False,
                            window_size=(-1, -1), softcap=0.0, rotary_interleaved=True,
                            alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """flash-attn 2's ``flash_attn_with_kvcache`` on ``pk.paged_attention`` /
    ``pk.write_kv_cache`` (inference only).

    q [batch, seqlen_q, nheads, d]. Caches: contiguous [batch_cache, seqlen_cache, nheads_k, d]
    (sequence b uses row ``cache_batch_idx[b]``, default b), or paged
    [num_blocks, page_block_size, nheads_k, d] with ``block_table`` int32 [batch, max_blocks].
    ``cache_seqlens`` (int or int32 [batch]): tokens already cached per sequence (default: the
    whole cache). ``k``/``v`` [batch, seqlen_new, nheads_k, d], if given, are written into the
    caches in place at positions cache_seqlens[b] ... (bit-exact copies; rotated first when
    ``rotary_cos``/``rotary_sin`` [seqlen_ro, rotary_dim / 2] are given, as is q: at positions
    cache_seqlens[b] + i when causal or local, else cache_seqlens[b]), and attention runs over
    the cache_seqlens[b] + seqlen_new tokens. ``cache_leftpad`` int32 [batch]: sequence b's
    cache starts at that position (contiguous caches only). Returns out
    [batch, seqlen_q, nheads, d], and with ``return_softmax_lse`` also softmax_lse fp32
    [batch, nheads, seqlen_q].
    """
    _tensor(q, "q", 4)
    _tensor(k_cache, "k_cache", 4)
    _tensor(v_cache, "v_cache", 4)
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.dtype != q.dtype:
            raise TypeError(f"{name}: expected dtype {q.dtype} (that of q), got {c.dtype}")
        if c.device != q.device:
            raise ValueError(f"{name}: expected device {q.device} (that of q), got {c.device}")
    if tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError(f"v_cache: expected shape {tuple(k_cache.shape)} (that of k_cache), got "
                         f"{tuple(v_cache.shape)}")
    batch, seqlen_q, hq, d = q.shape
    paged = block_table is not None
    _checks.integer(num_splits, "num_splits")
    # everything the attention call checks, before anything is written into the caches
    _checks.tensor(q, "q", dtypes=(torch.float16, torch.bfloat16, torch.float32))
    _checks.dim_equal(k_cache.shape[3], d, "k_cache: head_dim (must match q)")
    _checks.heads(hq, k_cache.shape[2], d)
    _checks.scalar_args(softmax_scale, softcap, d)
    _checks.alibi(alibi_slopes, q, batch, hq)
    if paged:
        _checks.tensor(block_table, "block_table", ndim=2, dtypes=(torch.int32,))
        if block_table.shape[0] != batch:
            raise ValueError(f"block_table: expected {batch} rows (batch, from q), got "
                             f"{block_table.shape[0]}")
        if cache_batch_idx is not None:
            raise ValueError("cache_batch_idx: not supported with block_table (a paged cache "
                             "is indexed by its block table), as in flash-attn")
        if cache_leftpad is not None:
            raise ValueError("cache_leftpad: not supported with block_table (paged cache), as "
                             "in flash-attn")
        row_len = k_cache.shape[1]
        capacity = block_table.shape[1] * row_len
        rows_table, table_name = block_table, "block_table"
    else:
        row_len = capacity = k_cache.shape[1]
        if cache_batch_idx is not None:
            idx = _int32_lengths(cache_batch_idx, "cache_batch_idx", batch, q.device)
            if _checks.check_values(idx):
                vals = idx.tolist()
                if vals and (min(vals) < 0 or max(vals) >= k_cache.shape[0]):
                    raise InvalidInputError(f"cache_batch_idx: expected values in "
                                            f"[0, {k_cache.shape[0]}) (rows of k_cache), got "
                                            f"min {min(vals)}, max {max(vals)}")
        else:
            if k_cache.shape[0] < batch:
                raise ValueError(f"k_cache: expected at least {batch} rows (batch, from q) "
                                 f"without cache_batch_idx, got {k_cache.shape[0]}")
            idx = torch.arange(batch, dtype=torch.int32, device=q.device)
        rows_table, table_name = idx[:, None], "cache_batch_idx"

    # lengths
    if cache_seqlens is None:
        if k is not None:
            raise ValueError("cache_seqlens: required when k and v are given (where to append)")
        cache_seqlens = torch.full((batch,), capacity, dtype=torch.int32, device=q.device)
    elif isinstance(cache_seqlens, numbers.Integral) and not isinstance(cache_seqlens, bool):
        cache_seqlens = torch.full((batch,), int(cache_seqlens), dtype=torch.int32,
                                   device=q.device)
    else:
        cache_seqlens = _int32_lengths(cache_seqlens, "cache_seqlens", batch, q.device)
    if cache_leftpad is not None:
        cache_leftpad = _int32_lengths(cache_leftpad, "cache_leftpad", batch, q.device)
    if (k is None) != (v is None):
        raise ValueError("k, v: give both (the new keys and values) or neither")
    seqlen_new = 0
    if k is not None:
        _tensor(k, "k", 4)
        _tensor(v, "v", 4)
        want = (batch, k.shape[1]) + tuple(k_cache.shape[2:])
        for name, t in (("k", k), ("v", v)):
            if tuple(t.shape) != want:
                raise ValueError(f"{name}: expected shape [batch, seqlen_new, nheads_k, d] = "
                                 f"{list(want)} (batch of q, heads and d of the cache), got "
                                 f"{tuple(t.shape)}")
            if t.dtype != q.dtype:
                raise TypeError(f"{name}: expected dtype {q.dtype} (that of q), got {t.dtype}")
        seqlen_new = k.shape[1]
    readable = _checks.check_values(cache_seqlens, cache_leftpad)
    if readable:
        cached = cache_seqlens.tolist()
        pads = cache_leftpad.tolist() if cache_leftpad is not None else [0] * batch
        for b, (n, p) in enumerate(zip(cached, pads)):
            if not 0 <= n <= capacity - seqlen_new:
                room = f" - seqlen_new ({seqlen_new})" if seqlen_new else ""
                raise InvalidInputError(f"cache_seqlens: entry {b} is {n}; expected 0 <= "
                                        f"cache_seqlens <= cache capacity ({capacity}){room}")
            if not 0 <= p <= n:
                raise InvalidInputError(f"cache_leftpad: entry {b} is {p}; expected 0 <= "
                                        f"cache_leftpad <= cache_seqlens ({n})")
        if paged:   # the blocks each sequence uses, before anything is written
            nblk = (cache_seqlens.long() + seqlen_new + row_len - 1) // row_len
            used = block_table[torch.arange(block_table.shape[1]) < nblk[:, None]]
            if used.numel() and (int(used.min()) < 0 or int(used.max()) >= k_cache.shape[0]):
                raise InvalidInputError(f"block_table: the sequences use block ids outside "
                                        f"[0, {k_cache.shape[0]}) (min {int(used.min())}, "
                                        f"max {int(used.max())})")
    causal, window = _fa_mask(causal, window_size, seqlen_q, capacity, alibi_slopes is not None)

    # rotary embedding of q and the new k
    if rotary_cos is not None or rotary_sin is not None:
        if rotary_cos is None or rotary_sin is None:
            raise ValueError("rotary_cos, rotary_sin: give both or neither")
        if k is None:
            raise ValueError("rotary_cos: needs k and v (flash-attn rotates the appended keys "
                             "and q only when new keys are given)")
        for name, t in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)):
            _checks.tensor(t, name, ndim=2, dtypes=(torch.float16, torch.bfloat16, torch.float32))
            if t.device != q.device:
                raise ValueError(f"{name}: expected device {q.device} (that of q), got {t.device}")
        if tuple(rotary_sin.shape) != tuple(rotary_cos.shape):
            raise ValueError(f"rotary_sin: expected shape {tuple(rotary_cos.shape)} (that of "
                             f"rotary_cos), got {tuple(rotary_sin.shape)}")
        if not 0 < 2 * rotary_cos.shape[1] <= d:
            raise ValueError(f"rotary_cos: expected [seqlen_ro, rotary_dim / 2] with 0 < "
                             f"rotary_dim <= head_dim ({d}), got {tuple(rotary_cos.shape)}")
        if rotary_cos.shape[0] < capacity:
            raise ValueError(f"rotary_cos: expected at least {capacity} rows (the cache's "
                             f"capacity), got {rotary_cos.shape[0]}")
        base = cache_seqlens.long()[:, None]
        k_pos = base + torch.arange(seqlen_new, device=q.device)
        local = window[0] >= 0 or window[1] >= 0
        q_pos = base + (torch.arange(seqlen_q, device=q.device) if causal or local
                        else torch.zeros(seqlen_q, dtype=torch.long, device=q.device))
        q = _rotary(q, rotary_cos, rotary_sin, q_pos, bool(rotary_interleaved))
        k = _rotary(k, rotary_cos, rotary_sin, k_pos, bool(rotary_interleaved))

    blocked = _blocked_caches(k_cache, v_cache, rows_table)

    # append the new tokens, in place
    if seqlen_new:
        pos = cache_seqlens.long()[:, None] + torch.arange(seqlen_new, device=q.device)
        if readable and cache_batch_idx is not None:
            cells = (idx.long()[:, None] * capacity + pos).flatten()
            if torch.unique(cells).numel() != cells.numel():
                raise InvalidInputError("cache_batch_idx: two sequences write the same cache "
                                        "slot (repeated rows with overlapping positions)")
        if blocked is not None:
            kb, vb, table, bs = blocked
            fits = pos < capacity
            posc = torch.where(fits, pos, 0)
            slots = table.long().gather(1, posc // bs) * bs + posc % bs
            slots = torch.where(fits & (slots >= 0), slots, -1)
            write_kv_cache(k.reshape(-1, *k.shape[2:]), v.reshape(-1, *v.shape[2:]), kb, vb,
                           slots.reshape(-1))
        else:   # strides that allow no block view: plain indexing (still in place)
            rows = rows_table.long()[torch.arange(batch, device=q.device)[:, None], pos // row_len]
            k_cache[rows, pos % row_len] = k
            v_cache[rows, pos % row_len] = v
    seq_lens = cache_seqlens + seqlen_new if seqlen_new else cache_seqlens
    seq_lens = seq_lens.to(torch.int32)
    if q.numel() == 0:
        out = q.new_zeros(batch, seqlen_q, hq, d)
        lse = torch.full((batch, hq, seqlen_q), -math.inf, dtype=torch.float32, device=q.device)
        return (out, lse) if return_softmax_lse else out

    kw = dict(softmax_scale=softmax_scale, softcap=softcap, alibi_slopes=alibi_slopes)
    # the paged op computes causal attention of the last seqlen_q positions
    fast = ((causal or window[1] == 0 or seqlen_q <= 1) and cache_leftpad is None
            and blocked is not None)
    if fast and readable:
        fast = all(n == 0 or n >= seqlen_q for n in seq_lens.tolist())
    if fast:
        kb, vb, table, _ = blocked
        out, lse = paged_attention(q, kb, vb, table, seq_lens, window=window, return_lse=True,
                                   **kw)
    else:
        ends = seq_lens.tolist()
        starts = cache_leftpad.tolist() if cache_leftpad is not None else [0] * batch
        cu_q = torch.arange(0, (batch + 1) * seqlen_q, seqlen_q, dtype=torch.int32,
                            device=q.device) if seqlen_q else torch.zeros(
                                batch + 1, dtype=torch.int32, device=q.device)
        out, lse = _gathered_varlen(q.reshape(batch * seqlen_q, hq, d), cu_q, seqlen_q, k_cache,
                                    v_cache, rows_table, row_len, table_name, starts, ends,
                                    causal, window, **kw)
        out = out.reshape(batch, seqlen_q, hq, d)
        lse = lse.reshape(hq, batch, seqlen_q).permute(1, 0, 2).contiguous()
    return (out, lse) if return_softmax_lse else out
