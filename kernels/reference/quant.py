"""Quantised formats used by polykernels, defined once here (quantisers + dequantisers).

Weight-only (``quantized_linear``), for a weight W [N, K] (F.linear layout):
  * codes are unsigned integers u in [0, 2**bits); per group of ``group_size`` consecutive
    elements along K there is a scale s[n, g] and a zero point z[n, g], g = k // group_size:
        W[n, k] = (u[n, k] - z[n, g]) * s[n, g]
  * symmetric quantisation stores no zeros (``zeros=None``): z = 2**(bits - 1) (8 for int4,
    128 for int8), codes u = q + z with q in [-(2**(bits-1) - 1), 2**(bits-1) - 1];
  * asymmetric quantisation stores ``zeros`` [N, K / group_size] (same dtype as scales,
    integer-valued) with codes over the full range;
  * int8: ``qweight`` uint8 [N, K], one code per byte;
    int4: ``qweight`` uint8 [N, K / 2], two codes per byte: element 2j in the low nibble,
    element 2j + 1 in the high nibble;
  * ``scales`` (and ``zeros``) [N, K / group_size], dtype of the weight given to the quantiser
    (fp16, bf16 or fp32). ``group_size`` must divide K; -1 means one group per row (K).
  Example: int4, K = 4, group_size = 4, row codes u = [3, 8, 15, 0] -> bytes [0x83, 0x0F].

Activations / fp8 and int8 GEMM (``scaled_matmul``):
  * ``quantize_fp8(x, per)`` -> (q, scale) with x ~= q.float() * scale; e4m3 (NVIDIA's
    float8_e4m3fn, max 448, or AMD gfx942's float8_e4m3fnuz, max 240, via ``dtype``);
  * ``quantize_int8(x, per)`` -> (q int8 in [-127, 127], scale), x ~= q * scale;
  * per="tensor": scale is an fp32 0-dim tensor; per="row": scale fp32 [rows, 1] (one per row
    of a 2-D x). For B [K, N] with per-column scales quantise B.T per row and transpose back.
"""
from __future__ import annotations

import torch


def _groups(k: int, group_size: int) -> int:
    if group_size == -1:
        return 1
    if group_size <= 0 or k % group_size != 0:
        raise ValueError(f"group_size: expected a positive divisor of K={k} (or -1), got {group_size}")
    return k // group_size


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [N, K] in [0, 16) -> uint8 [N, K / 2] (low nibble = even element)."""
    if codes.shape[-1] % 2:
        raise ValueError(f"codes: int4 packing needs an even K, got K={codes.shape[-1]}")
    c = codes.to(torch.uint8)
    return (c[..., 0::2] | (c[..., 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K / 2] -> uint8 codes [N, K]."""
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def _stored_scale_not_below(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The scale as stored in ``dtype`` (returned in fp32), rounded *up* where rounding to
    nearest would shrink it: a smaller stored scale would clamp the group's extreme values
    and miss them by more than half a step."""
    stored = scale.to(dtype)
    if dtype in (torch.float16, torch.bfloat16):
        # The next representable value above a positive 16-bit float is its bit pattern + 1.
        bumped = (stored.view(torch.int16) + 1).view(dtype)
        stored = torch.where(stored.to(torch.float32) < scale, bumped, stored)
    return stored.to(torch.float32)


def quantize_weight(w: torch.Tensor, bits: int = 4, group_size: int = 128,
                    symmetric: bool = True):
    """Quantise a weight W [N, K] -> (qweight, scales, zeros or None); format in the module doc."""
    if bits not in (4, 8):
        raise ValueError(f"bits: expected 4 or 8, got {bits}")
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"w: expected a 2-D floating-point [N, K] weight, got {tuple(w.shape)} {w.dtype}")
    n, k = w.shape
    g = _groups(k, group_size)
    gs = k // g
    wf = w.to(torch.float32).reshape(n, g, gs)
    top = 2 ** bits - 1
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = wf.abs().amax(dim=-1, keepdim=True) / qmax
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        scale = _stored_scale_not_below(scale, w.dtype)  # quantise against the stored scale
        q = torch.clamp(torch.round(wf / scale), -qmax, qmax)
        codes = (q + 2 ** (bits - 1)).to(torch.uint8)
        zeros = None
    else:
        lo = wf.amin(dim=-1, keepdim=True).clamp(max=0)
        hi = wf.amax(dim=-1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / top
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        scale = _stored_scale_not_below(scale, w.dtype)
        z = torch.clamp(torch.round(-lo / scale), 0, top)
        codes = torch.clamp(torch.round(wf / scale) + z, 0, top).to(torch.uint8)
        zeros = z.reshape(n, g).to(w.dtype)
    codes = codes.reshape(n, k)
    qweight = pack_int4(codes) if bits == 4 else codes.contiguous()
    return qweight, scale.reshape(n, g).to(w.dtype), zeros


def dequantize_weight(qweight: torch.Tensor, scales: torch.Tensor, zeros, bits: int,
                      group_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(qweight, scales, zeros) -> W [N, K] in ``dtype`` (math in fp32)."""
    codes = unpack_int4(qweight) if bits == 4 else qweight
    n, k = codes.shape
    g = scales.shape[1]
    gs = k // g
    z = zeros.to(torch.float32) if zeros is not None else torch.full_like(scales, 2 ** (bits - 1), dtype=torch.float32)
    w = (codes.to(torch.float32).reshape(n, g, gs) - z[..., None]) * scales.to(torch.float32)[..., None]
    return w.reshape(n, k).to(dtype)


def _absmax(x: torch.Tensor, per: str) -> torch.Tensor:
    xf = x.to(torch.float32)
    if per == "tensor":
        return xf.abs().amax()
    if per == "row":
        if x.dim() != 2:
            raise ValueError(f"x: per='row' needs a 2-D tensor, got shape {tuple(x.shape)}")
        return xf.abs().amax(dim=1, keepdim=True)
    raise ValueError(f"per: expected 'tensor' or 'row', got {per!r}")


def quantize_fp8(x: torch.Tensor, per: str = "tensor", dtype: torch.dtype = torch.float8_e4m3fn):
    """x -> (q fp8, scale fp32) with x ~= q.float() * scale (scale 0-dim or [rows, 1])."""
    if dtype not in (torch.float8_e4m3fn, torch.float8_e4m3fnuz):
        raise ValueError(f"dtype: expected torch.float8_e4m3fn or torch.float8_e4m3fnuz, got {dtype}")
    fmax = torch.finfo(dtype).max
    amax = _absmax(x, per)
    scale = torch.where(amax == 0, torch.ones_like(amax), amax / fmax)
    q = (x.to(torch.float32) / scale).clamp(-fmax, fmax).to(dtype)
    return q, scale


def quantize_int8(x: torch.Tensor, per: str = "tensor"):
    """x -> (q int8 in [-127, 127], scale fp32) with x ~= q * scale (scale 0-dim or [rows, 1])."""
    amax = _absmax(x, per)
    scale = torch.where(amax == 0, torch.ones_like(amax), amax / 127.0)
    q = torch.clamp(torch.round(x.to(torch.float32) / scale), -127, 127).to(torch.int8)
    return q, scale
