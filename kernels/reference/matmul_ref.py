"""Pure-torch oracle for the matmul family: fp32 math (fp64 for fp64 inputs and for the
scaled fp8/int8 GEMM, where it is exact), epilogue bias then activation, cast at the end."""
from __future__ import annotations

import math

import torch

from .quant import dequantize_weight

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")


def apply_activation(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    """relu; gelu = exact erf form (F.gelu's default); gelu_tanh = tanh approximation; silu."""
    if activation is None:
        return x
    if activation == "relu":
        return torch.clamp_min(x, 0)
    if activation == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if activation == "gelu_tanh":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if activation == "silu":
        return x * torch.sigmoid(x)
    raise ValueError(f"activation: expected None or one of {ACTIVATIONS}, got {activation!r}")


def _ct(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def matmul(a, b, bias, activation, out_dtype):
    """a [..., M, K] @ b [K, N] (+ bias [N]), activation -> [..., M, N] in out_dtype (default a.dtype)."""
    ct = _ct(a)
    out = torch.matmul(a.to(ct), b.to(ct))
    if bias is not None:
        out = out + bias.to(ct)
    out = apply_activation(out, activation)
    return out.to(out_dtype or a.dtype)


def linear(x, weight, bias, activation):
    """F.linear semantics: x [..., K], weight [N, K] -> [..., N] in x.dtype."""
    return matmul(x, weight.t(), bias, activation, None)


def broadcast_scale(scale: torch.Tensor, n: int, shape: tuple[int, int],
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``scale`` in ``dtype``, broadcastable against [M, N]: ``shape`` ([M, 1] or [1, N]) when it
    has one element per row / column (n > 1 of them), else 0-dim (one per tensor)."""
    s = scale.to(dtype)
    return s.reshape(shape) if scale.numel() == n and n != 1 else s.reshape(())


def apply_scales(acc: torch.Tensor, scale_a, scale_b, bias, out_dtype) -> torch.Tensor:
    """scaled_matmul's epilogue on the product ``acc`` [M, N] (fp32 or fp64, in place): times
    scale_a per row and scale_b per column, plus bias, in acc's dtype; rounded once to
    out_dtype. Shared by the reference (fp64) and the impls (fp32)."""
    m, n = acc.shape
    acc.mul_(broadcast_scale(scale_a, m, (m, 1), acc.dtype))
    acc.mul_(broadcast_scale(scale_b, n, (1, n), acc.dtype))
    if bias is not None:
        acc.add_(bias)
    return acc.to(out_dtype)


def scaled_matmul(a, b, scale_a, scale_b, bias, out_dtype):
    """fp8 or int8 a [M, K] @ b [K, N], dequantised by scale_a (numel 1 or M) and scale_b
    (numel 1 or N), plus bias [N] -> [M, N] in out_dtype. Math in fp64 (exact products)."""
    return apply_scales(a.to(torch.float64) @ b.to(torch.float64), scale_a, scale_b, bias, out_dtype)


def quantized_linear(x, qweight, scales, zeros, bits, group_size, bias):
    """x [..., K] @ dequantised(qweight).T (+ bias) -> [..., N] in x.dtype (format: quant.py)."""
    w = dequantize_weight(qweight, scales, zeros, bits, group_size, torch.float32)
    out = x.to(torch.float32) @ w.t()
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(x.dtype)


def grouped_matmul(x, weights, group_sizes):
    """MoE experts: rows of x [T, K] sorted by expert; rows of group e use weights[e] [K, N].
    group_sizes [E] (sums to T; empty groups allowed) -> [T, N] in x.dtype."""
    ct = _ct(x)
    out = torch.empty(x.shape[0], weights.shape[2], dtype=x.dtype, device=x.device)
    start = 0
    for e, size in enumerate(group_sizes.tolist()):
        if size:
            out[start:start + size] = (x[start:start + size].to(ct) @ weights[e].to(ct)).to(x.dtype)
        start += size
    return out
