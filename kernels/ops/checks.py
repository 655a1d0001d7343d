"""Argument validation for the public ops.

Every error names the argument and the expected value. Checks run before any kernel, so bad
input never writes to outputs or caches. Checks that read tensor *values* (block ids, seq_lens,
cu_seqlens, slots, group sizes) need the data on the host: they run for CPU tensors, and for
accelerator tensors only with POLYKERNELS_CHECK_VALUES=1 (each costs a device sync); never
while torch.compile traces.
"""
from __future__ import annotations

import math
import numbers
import os

import torch

from ..dispatch.registry import InvalidInputError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
INDEX_DTYPES = (torch.int32, torch.int64)
MAX_HEAD_DIM = 256


def tensor(x, name: str, *, ndim: int | tuple | None = None, dtypes=None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = ndim if isinstance(ndim, tuple) else (ndim,)
        if x.dim() not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name}: expected {want} dimensions, got shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in ({', '.join(str(d) for d in dtypes)}), got {x.dtype}")
    return x


def same_device(ref: torch.Tensor, ref_name: str, **others) -> None:
    for name, t in others.items():
        if t is not None:
            tensor(t, name)   # a list or number here gets a TypeError naming it
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name}: expected device {ref.device} (that of {ref_name}), got {t.device}")


def same_dtype(ref: torch.Tensor, ref_name: str, **others) -> None:
    for name, t in others.items():
        if t is not None and t.dtype != ref.dtype:
            raise TypeError(f"{name}: expected dtype {ref.dtype} (that of {ref_name}), got {t.dtype}")


def dim_equal(actual: int, expected: int, what: str) -> None:
    if actual != expected:
        raise ValueError(f"{what}: expected {expected}, got {actual}")


def check_values(*tensors: torch.Tensor | None) -> bool:
    """Whether to run checks that read the data of these tensors (see module doc)."""
    if torch.compiler.is_compiling():
        return False
    ts = [t for t in tensors if t is not None]
    if any(t.device.type == "meta" or type(t).__name__ == "FakeTensor" for t in ts):
        return False
    if all(t.device.type == "cpu" for t in ts):
        return True
    return os.environ.get("POLYKERNELS_CHECK_VALUES", "0") not in ("", "0")


# -- scalars -----------------------------------------------------------------------------------
def real(value, name: str, what: str = "a finite number") -> float:
    """value as a finite Python float: a Python / NumPy real (not bool, not str) or a
    one-element floating tensor; anything else is a TypeError naming ``name``. NaN and
    infinities are a ValueError (``what`` describes the expectation)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not (value.is_floating_point() or value.dtype in INDEX_DTYPES):
            raise TypeError(f"{name}: expected {what}, got a tensor of shape {tuple(value.shape)} "
                            f"and dtype {value.dtype}")
    elif isinstance(value, (bool, str, bytes)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name}: expected {what}, got {out}")
    return out


def integer(value, name: str) -> int:
    """value as a Python int: an int or NumPy integer (not bool, not a float such as 1.7,
    which would be truncated silently)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    return int(value)


# -- attention ---------------------------------------------------------------------------------
def window_pair(window) -> tuple[int, int]:
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"window: expected a pair (left, right), got {window!r}")
    left, right = (integer(w, f"window[{i}]") for i, w in enumerate(window))
    if left < -1 or right < -1:
        raise ValueError(f"window: expected each side >= -1 (-1 = unbounded), got {window!r}")
    return left, right


def scalar_args(softmax_scale, softcap, head_dim: int) -> tuple[float, float]:
    if softmax_scale is None:
        softmax_scale = head_dim ** -0.5
    softmax_scale = real(softmax_scale, "softmax_scale", "a finite float")
    softcap = real(softcap, "softcap", "a finite value >= 0 (0 disables it)")
    if softcap < 0.0:
        raise ValueError(f"softcap: expected a finite value >= 0 (0 disables it), got {softcap}")
    return softmax_scale, softcap


def cache_scale(value, name: str) -> float:
    """k_scale / v_scale of an fp8 cache: a finite float > 0 (one per tensor)."""
    out = real(value, name, "a finite float > 0")
    if out <= 0:
        raise ValueError(f"{name}: expected a finite float > 0, got {out}")
    return out


def kv_cache_scales(k_scale, v_scale, k_cache: torch.Tensor) -> tuple[float, float, torch.Tensor | None]:
    """k_scale / v_scale of the paged ops and write_kv_cache: each a float, a one-element
    tensor, or a tensor of one scale per KV head [heads_kv] (vLLM passes tensors). Returns the
    op's (k_scale, v_scale, kv_scales): floats stay floats (kv_scales None); with any tensor,
    kv_scales is fp32 [2, heads_kv] (row 0 keys, row 1 values) on the cache's device and the
    floats are 1.0, so a GPU scale is never read on the host (no sync). Only fp8 caches use
    scales; for others they are checked, then dropped. Values are checked (finite, > 0)
    where check_values() allows."""
    if not isinstance(k_scale, torch.Tensor) and not isinstance(v_scale, torch.Tensor):
        return cache_scale(k_scale, "k_scale"), cache_scale(v_scale, "v_scale"), None
    heads_kv = k_cache.shape[2]
    rows = []
    for name, x in (("k_scale", k_scale), ("v_scale", v_scale)):
        if not isinstance(x, torch.Tensor):
            rows.append(torch.full((heads_kv,), cache_scale(x, name), dtype=torch.float32,
                                   device=k_cache.device))
            continue
        if not x.is_floating_point() or x.dtype in FP8_DTYPES:
            raise TypeError(f"{name}: expected a floating tensor, got dtype {x.dtype}")
        if x.dim() > 1 or x.numel() not in (1, heads_kv):
            raise ValueError(f"{name}: expected a float, a one-element tensor or one scale per KV "
                             f"head [{heads_kv}], got a tensor of shape {tuple(x.shape)}")
        if x.device != k_cache.device:
            raise ValueError(f"{name}: expected device {k_cache.device} (that of k_cache), got {x.device}")
        if check_values(x):
            bad = ~(torch.isfinite(x) & (x > 0))
            if bool(bad.any()):
                raise InvalidInputError(f"{name}: expected finite scales > 0, got {x.tolist()}")
        rows.append(x.reshape(-1).to(torch.float32).expand(heads_kv))
    if k_cache.dtype not in FP8_DTYPES:
        return 1.0, 1.0, None
    return 1.0, 1.0, torch.stack(rows)


def qkv(q, k, v, *, seq_dims: int) -> None:
    """q [..., Sq, Hq, D], k/v [..., Sk, Hkv, D]; seq_dims = 4 (batched) or 3 (varlen)."""
    layout = "[batch, seqlen, heads, head_dim]" if seq_dims == 4 else "[total_tokens, heads, head_dim]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        tensor(t, name, ndim=seq_dims)
    tensor(q, "q", dtypes=FLOAT_DTYPES)
    same_dtype(q, "q", k=k, v=v)
    same_device(q, "q", k=k, v=v)
    if seq_dims == 4:
        dim_equal(k.shape[0], q.shape[0], f"k: batch size (layout {layout})")
        dim_equal(v.shape[0], q.shape[0], f"v: batch size (layout {layout})")
    dim_equal(v.shape[-3], k.shape[-3], "v: seqlen (must match k)")
    dim_equal(k.shape[-1], q.shape[-1], "k: head_dim (must match q)")
    dim_equal(v.shape[-2], k.shape[-2], "v: heads (must match k)")
    heads(q.shape[-2], k.shape[-2], q.shape[-1])
    # V's head dim may differ from Q/K's (MLA-style 192 / 128, as FlashAttention-3 allows)
    if not 1 <= v.shape[-1] <= MAX_HEAD_DIM:
        raise ValueError(f"v: head_dim must be in [1, {MAX_HEAD_DIM}], got {v.shape[-1]}")


def heads(hq: int, hkv: int, d: int) -> None:
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"k: heads_kv ({hkv}) must divide heads_q ({hq}) (GQA/MQA: heads_q % heads_kv == 0)")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"q: head_dim must be in [1, {MAX_HEAD_DIM}], got {d}")


def sinks(sinks, q: torch.Tensor, hq: int):
    """Attention sinks: a floating tensor [heads_q] on q's device (one logit per query head);
    returned as float32 (a differentiable conversion), or None."""
    if sinks is None:
        return None
    tensor(sinks, "sinks", ndim=1, dtypes=(torch.float32, torch.bfloat16, torch.float16, torch.float64))
    same_device(q, "q", sinks=sinks)
    if sinks.shape[0] != hq:
        raise ValueError(f"sinks: expected shape [{hq}] (one logit per query head), got {tuple(sinks.shape)}")
    if check_values(sinks) and not bool(torch.isfinite(sinks).all()):
        raise InvalidInputError(f"sinks: expected finite values, got {sinks.tolist()}")
    return sinks if sinks.dtype == torch.float32 else sinks.to(torch.float32)


def alibi(alibi_slopes, q: torch.Tensor, batch: int, hq: int) -> None:
    if alibi_slopes is None:
        return
    tensor(alibi_slopes, "alibi_slopes", ndim=(1, 2), dtypes=(torch.float32,))
    same_device(q, "q", alibi_slopes=alibi_slopes)
    allowed = [(hq,), (batch, hq)]
    if tuple(alibi_slopes.shape) not in allowed:
        raise ValueError(f"alibi_slopes: expected shape [{hq}] or [{batch}, {hq}], got {tuple(alibi_slopes.shape)}")


def cu_seqlens(cu_q, cu_k, total_q: int, total_k: int, max_q: int, max_k: int, device) -> int:
    for name, t in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        tensor(t, name, ndim=1, dtypes=(torch.int32,))
        if t.device != device:
            raise ValueError(f"{name}: expected device {device} (that of q), got {t.device}")
        if t.shape[0] < 2:
            raise ValueError(f"{name}: expected [batch + 1] >= 2 entries, got {t.shape[0]}")
    dim_equal(cu_k.shape[0], cu_q.shape[0], "cu_seqlens_k: length (must match cu_seqlens_q)")
    for name, m in (("max_seqlen_q", max_q), ("max_seqlen_k", max_k)):
        if not isinstance(m, int) or m < 0:
            raise ValueError(f"{name}: expected an int >= 0, got {m!r}")
    if check_values(cu_q, cu_k):
        cu_seqlens_values(cu_q, cu_k, total_q, total_k, max_q, max_k)
    return cu_q.shape[0] - 1


# -- index values ------------------------------------------------------------------------------
# What the index tensors hold. The public functions run these where check_values() allows;
# the reference impl runs them always (kernels/reference/register.py), so an index that no
# check could read (under torch.compile, on a GPU) never yields a plausible answer from it.
def cu_seqlens_values(cu_q, cu_k, total_q: int, total_k: int, max_q: int, max_k: int) -> None:
    for name, t, total, m in (("cu_seqlens_q", cu_q, total_q, max_q),
                              ("cu_seqlens_k", cu_k, total_k, max_k)):
        vals = t.tolist()
        if vals[0] != 0 or vals[-1] != total:
            raise InvalidInputError(f"{name}: expected to start at 0 and end at {total} (total tokens), got {vals[0]}..{vals[-1]}")
        lens = [b - a for a, b in zip(vals, vals[1:])]
        if min(lens) < 0:
            raise InvalidInputError(f"{name}: expected non-decreasing offsets, got {vals}")
        if max(lens) > m:
            mname = "max_seqlen_q" if name.endswith("q") else "max_seqlen_k"
            raise InvalidInputError(f"{mname}: expected >= the longest sequence ({max(lens)}), got {m}")


def paged_values(block_table, seq_lens, q_lens, num_blocks: int, block_size: int) -> None:
    """seq_lens within the table and >= each sequence's q_len (or 0: a padded slot, whose
    queries see no key), block ids in range. ``q_lens``: one int for all, or a list."""
    lens = seq_lens.tolist()
    q_lens = q_lens if isinstance(q_lens, list) else [q_lens] * len(lens)
    cap = block_table.shape[1] * block_size
    for i, (n, ql) in enumerate(zip(lens, q_lens)):
        if n > cap or n < 0 or 0 < n < ql:
            raise InvalidInputError(f"seq_lens: entry {i} is {n}; expected q_len ({ql}) <= seq_len <= "
                                    f"max_blocks * block_size ({cap}), or 0 (padding)")
        used = block_table[i, : (n + block_size - 1) // block_size]
        if used.numel() and (int(used.min()) < 0 or int(used.max()) >= num_blocks):
            raise InvalidInputError(f"block_table: row {i} uses block ids outside [0, {num_blocks}) "
                             f"(min {int(used.min())}, max {int(used.max())})")


def cu_seqlens_q_values(cu_q, total_q: int, max_q: int) -> list[int]:
    """cu_seqlens_q: 0 .. total_q, non-decreasing, no length above max_seqlen_q; returns the
    per-sequence query lengths."""
    vals = cu_q.tolist()
    if vals[0] != 0 or vals[-1] != total_q:
        raise InvalidInputError(f"cu_seqlens_q: expected to start at 0 and end at {total_q} (total tokens), got {vals[0]}..{vals[-1]}")
    lens = [b - a for a, b in zip(vals, vals[1:])]
    if min(lens, default=0) < 0:
        raise InvalidInputError(f"cu_seqlens_q: expected non-decreasing offsets, got {vals}")
    if max(lens, default=0) > max_q:
        raise InvalidInputError(f"max_seqlen_q: expected >= the longest query run ({max(lens)}), got {max_q}")
    return lens


def varlen_paged_values(block_table, seq_lens, cu_q, total_q: int, max_q: int, num_blocks: int,
                        block_size: int) -> None:
    paged_values(block_table, seq_lens, cu_seqlens_q_values(cu_q, total_q, max_q), num_blocks,
                 block_size)


def slot_values(slot_mapping, num_slots: int) -> None:
    """Slots in [-1, num_slots), and no slot twice: two tokens written to one row would race
    (an fp8 cache could keep half of each), so duplicates are refused by every impl that can
    read the slots (GPU kernels cannot see duplicates: docs/dispatch.md). Decode-sized mappings are
    checked on a Python list (a few us); long ones with torch ops."""
    n = slot_mapping.numel()
    if not n:
        return
    if n <= 1024:
        vals = slot_mapping.tolist()
        lo, hi = min(vals), max(vals)
        used = [x for x in vals if x >= 0]
        duplicated = len(set(used)) != len(used)
    else:
        lo, hi = (int(x) for x in torch.aminmax(slot_mapping))
        used_t = slot_mapping[slot_mapping >= 0]
        duplicated = torch.unique(used_t).numel() != used_t.numel()
    if lo < -1 or hi >= num_slots:
        raise InvalidInputError(f"slot_mapping: expected values in [-1, {num_slots}) (-1 = padding), got min {lo}, max {hi}")
    if duplicated:
        unique, counts = torch.unique(slot_mapping[slot_mapping >= 0], return_counts=True)
        raise InvalidInputError(f"slot_mapping: slot {int(unique[counts > 1][0])} appears more than "
                                f"once (each token needs a slot of its own)")


def group_size_values(group_sizes, rows: int) -> None:
    sizes = group_sizes.tolist()
    if min(sizes, default=0) < 0 or sum(sizes) != rows:
        raise InvalidInputError(f"group_sizes: expected non-negative sizes summing to x's rows ({rows}), "
                         f"got sum {sum(sizes)} (min {min(sizes, default=0)})")


# -- paged decode ------------------------------------------------------------------------------
def paged(q, k_cache, v_cache, block_table, seq_lens) -> None:
    tensor(q, "q", ndim=4, dtypes=(torch.float16, torch.bfloat16, torch.float32))
    num_seqs, q_len = q.shape[:2]
    num_blocks, block_size = paged_cache(q, k_cache, v_cache, block_table, seq_lens, num_seqs)
    if check_values(block_table, seq_lens):
        paged_values(block_table, seq_lens, q_len, num_blocks, block_size)


def varlen_paged(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q) -> None:
    """q [total_q, heads_q, D] packed by cu_seqlens_q int32 [num_seqs + 1]."""
    tensor(q, "q", ndim=3, dtypes=(torch.float16, torch.bfloat16, torch.float32))
    tensor(cu_seqlens_q, "cu_seqlens_q", ndim=1, dtypes=(torch.int32,))
    same_device(q, "q", cu_seqlens_q=cu_seqlens_q)
    if cu_seqlens_q.shape[0] < 1:
        raise ValueError("cu_seqlens_q: expected [num_seqs + 1] entries, got 0")
    num_seqs = cu_seqlens_q.shape[0] - 1
    if not isinstance(max_seqlen_q, int) or isinstance(max_seqlen_q, bool) or max_seqlen_q < 0:
        raise ValueError(f"max_seqlen_q: expected an int >= 0, got {max_seqlen_q!r}")
    num_blocks, block_size = paged_cache(q, k_cache, v_cache, block_table, seq_lens, num_seqs,
                                         "cu_seqlens_q")
    if check_values(block_table, seq_lens, cu_seqlens_q):
        varlen_paged_values(block_table, seq_lens, cu_seqlens_q, q.shape[0], max_seqlen_q,
                            num_blocks, block_size)


def paged_cache(q, k_cache, v_cache, block_table, seq_lens, num_seqs: int,
                seqs_from: str = "q") -> tuple[int, int]:
    """The cache, block table and seq_lens arguments of the paged ops; q [..., heads_q, D]
    gives dtype, heads and head_dim. Returns (num_blocks, block_size)."""
    tensor(k_cache, "k_cache", ndim=4)
    tensor(v_cache, "v_cache", ndim=4)
    if k_cache.dtype not in (q.dtype,) + FP8_DTYPES:
        raise TypeError(f"k_cache: expected dtype {q.dtype} (that of q) or an fp8 e4m3 dtype, got {k_cache.dtype}")
    same_dtype(k_cache, "k_cache", v_cache=v_cache)
    if tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError(f"v_cache: expected shape {tuple(k_cache.shape)} (that of k_cache), got {tuple(v_cache.shape)}")
    tensor(block_table, "block_table", ndim=2, dtypes=(torch.int32,))
    tensor(seq_lens, "seq_lens", ndim=1, dtypes=(torch.int32,))
    same_device(q, "q", k_cache=k_cache, v_cache=v_cache, block_table=block_table, seq_lens=seq_lens)
    hq, d = q.shape[-2:]
    num_blocks, block_size, hkv, dk = k_cache.shape
    dim_equal(dk, d, "k_cache: head_dim (must match q)")
    heads(hq, hkv, d)
    if not 1 <= block_size <= 256:
        raise ValueError(f"k_cache: block_size (dim 1) must be in [1, 256], got {block_size}")
    dim_equal(block_table.shape[0], num_seqs, f"block_table: rows (num_seqs, from {seqs_from})")
    dim_equal(seq_lens.shape[0], num_seqs, f"seq_lens: length (num_seqs, from {seqs_from})")
    return num_blocks, block_size


def kv_write(k, v, k_cache, v_cache, slot_mapping) -> None:
    tensor(k, "k", ndim=3, dtypes=(torch.float16, torch.bfloat16, torch.float32))
    tensor(v, "v", ndim=3)
    same_dtype(k, "k", v=v)
    tensor(k_cache, "k_cache", ndim=4)
    tensor(v_cache, "v_cache", ndim=4)
    if k_cache.dtype not in (k.dtype,) + FP8_DTYPES:
        raise TypeError(f"k_cache: expected dtype {k.dtype} (that of k) or an fp8 e4m3 dtype, got {k_cache.dtype}")
    same_dtype(k_cache, "k_cache", v_cache=v_cache)
    tensor(slot_mapping, "slot_mapping", ndim=1, dtypes=INDEX_DTYPES)
    same_device(k, "k", v=v, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v: expected shape {tuple(k.shape)} (that of k), got {tuple(v.shape)}")
    if tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError(f"v_cache: expected shape {tuple(k_cache.shape)} (that of k_cache), got {tuple(v_cache.shape)}")
    if tuple(k_cache.shape[2:]) != tuple(k.shape[1:]):
        raise ValueError(f"k_cache: expected [num_blocks, block_size, {k.shape[1]}, {k.shape[2]}] "
                         f"(heads and head_dim of k), got {tuple(k_cache.shape)}")
    dim_equal(slot_mapping.shape[0], k.shape[0], "slot_mapping: length (num_tokens, from k)")
    no_aliasing(dict(k_cache=k_cache, v_cache=v_cache), dict(k=k, v=v, slot_mapping=slot_mapping))
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if any(st == 0 and n > 1 for st, n in zip(c.stride(), c.shape)):
            raise ValueError(f"{name}: expected a tensor with its own memory per element (a "
                             f"written cache cannot have a stride-0 dim), got strides {c.stride()}")
    if check_values(slot_mapping):
        slot_values(slot_mapping, k_cache.shape[0] * k_cache.shape[1])


def no_aliasing(written: dict, read: dict) -> None:
    """ValueError if a tensor the op writes (``written``, name -> tensor) shares memory with
    another argument: what the op reads would change under it, and impls would disagree.
    Exact for tensors whose elements fill a byte range (any dim order, as torch's own overlap
    check); layouts that interleave (e.g. k and v caches split from one [blocks, 2, ...]
    tensor) are left alone, as torch leaves them. Cheap when nothing is shared (every call of
    write_kv_cache runs it): only tensors on one storage are compared element-range-wise."""
    if torch.compiler.is_compiling():
        return   # no memory to compare while tracing: the op's kernel checks at run time
    by_storage: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
    for name, t in (*written.items(), *read.items()):
        if t is None:
            continue
        if type(t) is not torch.Tensor or t.device.type == "meta":
            return   # traced / fake tensors: no memory to compare
        if t.numel():
            by_storage.setdefault((t.device, t.untyped_storage().data_ptr()), []).append((name, t))
    for group in by_storage.values():
        for i, (a, ta) in enumerate(group):
            for b, tb in group[i + 1:]:
                if a not in written and b not in written:
                    continue
                sa, sb = _dense_span(ta), _dense_span(tb)
                same = ta.data_ptr() == tb.data_ptr() and ta.stride() == tb.stride()
                overlap = sa is not None and sb is not None and sa[0] < sb[1] and sb[0] < sa[1]
                if same or overlap:
                    raise ValueError(f"{b}: expected memory of its own, but it shares memory with "
                                     f"{a} (the op writes into {a if a in written else b})")


def _dense_span(t: torch.Tensor) -> tuple[int, int] | None:
    """(first byte, end byte) when t's elements fill exactly that range, else None."""
    expected = 1
    for stride, size in sorted((st, n) for st, n in zip(t.stride(), t.shape) if n != 1):
        if stride != expected:
            return None
        expected *= size
    return t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()


def merge_states(out_a, lse_a, out_b, lse_b) -> None:
    tensor(out_a, "out_a", ndim=(3, 4), dtypes=FLOAT_DTYPES)
    tensor(out_b, "out_b", ndim=(3, 4))
    same_dtype(out_a, "out_a", out_b=out_b)
    tensor(lse_a, "lse_a", dtypes=(torch.float32,))
    tensor(lse_b, "lse_b", dtypes=(torch.float32,))
    same_device(out_a, "out_a", out_b=out_b, lse_a=lse_a, lse_b=lse_b)
    if tuple(out_b.shape) != tuple(out_a.shape):
        raise ValueError(f"out_b: expected shape {tuple(out_a.shape)} (that of out_a), got {tuple(out_b.shape)}")
    s, h = out_a.shape[-3], out_a.shape[-2]
    want = tuple(out_a.shape[:-3]) + (h, s)
    for name, t in (("lse_a", lse_a), ("lse_b", lse_b)):
        if tuple(t.shape) != want:
            raise ValueError(f"{name}: expected shape {list(want)} ([..., heads, seqlen] for out {list(out_a.shape)}), got {list(t.shape)}")


# -- matmul family -----------------------------------------------------------------------------
ACTIVATIONS = (None, "relu", "gelu", "gelu_tanh", "silu")


def activation(act) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {act!r}")


def bias(b, n: int, ref: torch.Tensor) -> None:
    if b is None:
        return
    tensor(b, "bias", ndim=1, dtypes=FLOAT_DTYPES)
    same_device(ref, "the input", bias=b)
    dim_equal(b.shape[0], n, "bias: length (N)")


def matmul(a, b, bias_, act, out_dtype) -> None:
    tensor(a, "a", dtypes=FLOAT_DTYPES)
    if a.dim() < 2:
        raise ValueError(f"a: expected [..., M, K] with at least 2 dimensions, got shape {tuple(a.shape)}")
    tensor(b, "b", ndim=2)
    same_dtype(a, "a", b=b)
    same_device(a, "a", b=b)
    dim_equal(b.shape[0], a.shape[-1], "b: rows (K, must match a's last dimension)")
    bias(bias_, b.shape[1], a)
    activation(act)
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype: expected None or one of {FLOAT_DTYPES}, got {out_dtype}")


def linear(x, weight, bias_, act) -> None:
    tensor(x, "x", dtypes=FLOAT_DTYPES)
    if x.dim() < 1:
        raise ValueError("x: expected at least 1 dimension [..., K]")
    tensor(weight, "weight", ndim=2)
    same_dtype(x, "x", weight=weight)
    same_device(x, "x", weight=weight)
    dim_equal(weight.shape[1], x.shape[-1], "weight: columns (K, must match x's last dimension)")
    bias(bias_, weight.shape[0], x)
    activation(act)


def scale(s, name: str, n: int, what: str, ref) -> None:
    tensor(s, name, dtypes=(torch.float32,))
    same_device(ref, "a", **{name: s})
    if s.numel() not in (1, n):
        raise ValueError(f"{name}: expected 1 element (per tensor) or {n} ({what}), got shape {tuple(s.shape)}")


def scaled_matmul(a, b, scale_a, scale_b, bias_, out_dtype) -> None:
    tensor(a, "a", ndim=2, dtypes=FP8_DTYPES + (torch.int8,))
    tensor(b, "b", ndim=2)
    same_dtype(a, "a", b=b)
    same_device(a, "a", b=b)
    dim_equal(b.shape[0], a.shape[1], "b: rows (K, must match a's columns)")
    scale(scale_a, "scale_a", a.shape[0], "per row of a", a)
    scale(scale_b, "scale_b", b.shape[1], "per column of b", a)
    bias(bias_, b.shape[1], a)
    if out_dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"out_dtype: expected torch.bfloat16, torch.float16 or torch.float32, got {out_dtype}")


def quantized_linear(x, qweight, scales, zeros, bits, group_size, bias_) -> None:
    tensor(x, "x", dtypes=(torch.float16, torch.bfloat16, torch.float32))
    if x.dim() < 1:
        raise ValueError("x: expected at least 1 dimension [..., K]")
    if bits not in (4, 8):
        raise ValueError(f"bits: expected 4 or 8, got {bits!r}")
    tensor(qweight, "qweight", ndim=2, dtypes=(torch.uint8,))
    same_device(x, "x", qweight=qweight, scales=scales, zeros=zeros)
    k = x.shape[-1]
    n, packed_k = qweight.shape
    want_k = packed_k * 2 if bits == 4 else packed_k
    if want_k != k:
        raise ValueError(f"qweight: expected [N, {k // 2 if bits == 4 else k}] for K={k} and bits={bits} "
                         f"({'two codes per byte' if bits == 4 else 'one code per byte'}), got {tuple(qweight.shape)}")
    if group_size == -1:
        groups = 1
    elif isinstance(group_size, int) and group_size > 0 and k % group_size == 0:
        groups = k // group_size
    else:
        raise ValueError(f"group_size: expected a positive divisor of K={k} or -1, got {group_size!r}")
    tensor(scales, "scales", ndim=2, dtypes=(torch.float16, torch.bfloat16, torch.float32))
    if tuple(scales.shape) != (n, groups):
        raise ValueError(f"scales: expected shape [{n}, {groups}] ([N, K / group_size]), got {tuple(scales.shape)}")
    if zeros is not None:
        tensor(zeros, "zeros", ndim=2)
        same_dtype(scales, "scales", zeros=zeros)
        if tuple(zeros.shape) != (n, groups):
            raise ValueError(f"zeros: expected shape [{n}, {groups}] (that of scales), got {tuple(zeros.shape)}")
    bias(bias_, n, x)


def grouped_matmul(x, weights, group_sizes) -> None:
    tensor(x, "x", ndim=2, dtypes=FLOAT_DTYPES)
    tensor(weights, "weights", ndim=3)
    same_dtype(x, "x", weights=weights)
    tensor(group_sizes, "group_sizes", ndim=1, dtypes=INDEX_DTYPES)
    same_device(x, "x", weights=weights, group_sizes=group_sizes)
    dim_equal(weights.shape[1], x.shape[1], "weights: dim 1 (K, must match x's columns; layout [E, K, N])")
    dim_equal(group_sizes.shape[0], weights.shape[0], "group_sizes: length (number of experts E)")
    if check_values(group_sizes):
        group_size_values(group_sizes, x.shape[0])
