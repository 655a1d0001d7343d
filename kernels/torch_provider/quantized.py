"""``quantized_linear`` (weight-only int4 / int8) through torch's CPU kernels, with the
converted weight cached.

Kernels (torch 2.13, CPU):
  * int4: ``aten._convert_weight_to_int4pack_for_cpu(codes int32 [N, K], 1)`` packs the
    weight; ``aten._weight_int4pack_mm_for_cpu(x [M, K], packed, group_size,
    scales_and_zeros [K / group_size, N, 2])`` dequantises as ``(q - 8) * scale + zero`` per
    group (measured). Our format (reference/quant.py) is ``W = (u - z) * s``, so
    ``scale = s`` and ``zero = (8 - z) * s`` (0 for symmetric weights, where z = 8); the pair
    is computed in fp32 and stored in x's dtype, as the kernel requires. It takes
    group_size 32, 64, 128 or 256 only and N a multiple of 16: N is padded to 16 in the
    packed copy (pad rows: code 8, scale 0, zero 0) and the output sliced back.
  * int8: ``aten._weight_int8pack_mm(x [M, K], w int8 [N, K], scales [N])`` = x @ (w * s).T,
    one scale per output channel and no zero point: our symmetric codes u map to
    w = u - 128; grouped or asymmetric int8 is refused. Its bf16 path gives wrong results
    (NaN / garbage) or crashes for K % 8 != 0 (measured on an AVX2 CPU), so bf16 pads K to a
    multiple of 8 with zero weights (and x with zero columns: one copy of x per call). It
    also crashes (SIGSEGV) on bf16 x whose data is not 16-byte aligned (a view at an odd
    offset): such an x is copied first.
  * Both want x 2-D and contiguous and scales in x's dtype: a wider scale dtype than x's would
    be rounded, so it is refused.

Packed-weight cache. A server calls the same weight millions of times, so converting it on
every call (unpack, pack, transpose scales) is not acceptable. The prepared tensors are cached
in a ``WeakIdKeyDictionary`` keyed on the qweight tensor itself (an entry dies with its
qweight), per (bits, group_size, x dtype), and are valid while the *same* scales / zeros
objects are passed and none of the three tensors changed since: their version counters
(``_version``, bumped by every in-place op, also through views) are compared on each call and
a mismatch repacks. Memory cost: one extra packed copy of each weight (int4: N*K/2 bytes +
scales/zeros; int8: N*K bytes) per x dtype it is used with. Limits: changes that bypass the
version counter (``.data``, numpy views, inference-mode tensors, which have none) are not
seen; replace the tensor instead. ``conversions()`` counts packings (tests, diagnostics).
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from ..reference.quant import unpack_int4
from .common import cpu_only_reason

INT4_GROUP_SIZES = (32, 64, 128, 256)

_cache = WeakIdKeyDictionary()   # qweight -> {(bits, group_size, x dtype): _Prepared}
_lock = threading.Lock()
_conversions = 0


def conversions() -> int:
    """How many times a weight was converted to torch's format (cache misses)."""
    return _conversions


def _version(t: torch.Tensor | None):
    if t is None:
        return None
    return None if t.is_inference() else t._version   # inference tensors have no counter


@dataclass
class _Prepared:
    stamp: tuple          # versions of qweight, scales, zeros at packing time
    scales: weakref.ref
    zeros: weakref.ref | None
    weight: torch.Tensor  # int4: torch's packed uint8; int8: int8 [N, K (padded)]
    scales_t: torch.Tensor  # int4: scales_and_zeros [K / gs, N (padded), 2]; int8: [N]

    def valid_for(self, stamp, scales, zeros) -> bool:
        return (self.stamp == stamp and self.scales() is scales
                and (self.zeros() if self.zeros is not None else None) is zeros)


def _pack_int4(qweight, scales, zeros, group_size, dtype):
    n, k = qweight.shape[0], qweight.shape[1] * 2
    pad = -n % 16
    codes = unpack_int4(qweight).to(torch.int32)
    s = scales.to(torch.float32)
    z = torch.zeros_like(s) if zeros is None else (8 - zeros.to(torch.float32)) * s
    if pad:
        codes = torch.cat([codes, codes.new_full((pad, k), 8)])
        s, z = F.pad(s, (0, 0, 0, pad)), F.pad(z, (0, 0, 0, pad))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    return packed, torch.stack([s, z], dim=-1).transpose(0, 1).to(dtype).contiguous()


def _pack_int8(qweight, scales, dtype):
    k = qweight.shape[1]
    w = (qweight.to(torch.int16) - 128).to(torch.int8)
    if dtype == torch.bfloat16 and k % 8:
        w = F.pad(w, (0, -k % 8))
    return w.contiguous(), scales.reshape(-1).to(dtype).contiguous()


def _prepared(x, qweight, scales, zeros, bits, group_size) -> _Prepared:
    global _conversions
    key = (bits, group_size, x.dtype)
    stamp = (_version(qweight), _version(scales), _version(zeros))
    with _lock:
        entries = _cache.get(qweight)
        hit = entries.get(key) if entries is not None else None
        if hit is not None and hit.valid_for(stamp, scales, zeros):
            return hit
        if bits == 4:
            weight, scales_t = _pack_int4(qweight, scales, zeros, group_size, x.dtype)
        else:
            weight, scales_t = _pack_int8(qweight, scales, x.dtype)
        _conversions += 1
        prep = _Prepared(stamp, weakref.ref(scales),
                         None if zeros is None else weakref.ref(zeros), weight, scales_t)
        if entries is None:
            entries = _cache[qweight] = {}
        entries[key] = prep
        return prep


def quantized_linear(x, qweight, scales, zeros, bits, group_size, bias):
    n, k = qweight.shape[0], x.shape[-1]
    gs = k if group_size == -1 else group_size
    prep = _prepared(x, qweight, scales, zeros, bits, gs)
    x2 = x.reshape(x.shape[:-1].numel(), k).contiguous()   # (-1 is ambiguous when K = 0)
    if bits == 4:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, prep.weight, gs, prep.scales_t)
        if y.shape[1] != n:
            y = y[:, :n].contiguous()
    else:
        if prep.weight.shape[1] != k:
            x2 = F.pad(x2, (0, prep.weight.shape[1] - k))
        elif x2.dtype == torch.bfloat16 and x2.data_ptr() % 16:
            # the kernel crashes the process (SIGSEGV) on bf16 activations not 16-byte aligned
            # (a view at an odd offset; found by tests/test_properties.py): a fresh copy is
            x2 = x2.clone()
        y = torch.ops.aten._weight_int8pack_mm(x2, prep.weight, prep.scales_t)
    if bias is not None:
        y = (y.to(torch.float32) + bias).to(x.dtype)
    return y.reshape(*x.shape[:-1], n)


def quantized_linear_supports(x, qweight, scales, zeros, bits, group_size, bias):
    reason = cpu_only_reason("quantized_linear", x,
                             why="torch's int4pack / int8pack kernels used here are CPU ones")
    if reason:
        return reason
    k = x.shape[-1]
    gs = k if group_size == -1 else group_size
    if scales.dtype != x.dtype and x.dtype != torch.float32:
        return (f"scales dtype {scales.dtype} differs from x dtype {x.dtype}: torch's kernels "
                "take scales in x's dtype and rounding them would change the weights")
    if bits == 4:
        if gs not in INT4_GROUP_SIZES:
            return (f"int4 group_size {gs}: torch's int4pack kernel takes "
                    f"{', '.join(map(str, INT4_GROUP_SIZES))}")
        return None
    if zeros is not None:
        return "int8 with zero points: torch's _weight_int8pack_mm is symmetric (no zero point)"
    if gs != k:
        return (f"int8 group_size {gs} < K={k}: torch's _weight_int8pack_mm has one scale per "
                "output channel")
    return None
