"""pk.matmul, pk.linear, pk.scaled_matmul, pk.quantized_linear, pk.grouped_matmul.

Inference ops (no autograd). Quantised formats: reference/quant.py. Each is also
``torch.ops.polykernels.<name>``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._library import define, fake
from ._run import run
from . import checks


@define("matmul")
def _matmul(a: Tensor, b: Tensor, bias: Optional[Tensor], activation: Optional[str],
            out_dtype: Optional[torch.dtype]) -> Tensor:
    return run("matmul", a, b, bias, activation, out_dtype)


@fake(_matmul)
def _(a, b, bias, activation, out_dtype):
    return a.new_empty(*a.shape[:-1], b.shape[1], dtype=out_dtype or a.dtype)


def matmul(a: Tensor, b: Tensor, *, bias: Tensor | None = None, activation: str | None = None,
           out_dtype: torch.dtype | None = None) -> Tensor:
    """a [..., M, K] @ b [K, N] with a fused epilogue: + bias [N], then activation
    (None, "relu", "gelu" (erf), "gelu_tanh", "silu"). fp32 accumulation; result in out_dtype
    (default a's dtype). Any strides (a transposed b is read in place)."""
    return _matmul(*matmul_args(a, b, bias=bias, activation=activation, out_dtype=out_dtype))


def matmul_args(a, b, *, bias=None, activation=None, out_dtype=None):
    checks.matmul(a, b, bias, activation, out_dtype)
    return a, b, bias, activation, out_dtype


@define("linear")
def _linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: Optional[str]) -> Tensor:
    return run("linear", x, weight, bias, activation)


@fake(_linear)
def _(x, weight, bias, activation):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *,
           activation: str | None = None) -> Tensor:
    """torch.nn.functional.linear semantics (x [..., K], weight [N, K]) plus an activation."""
    return _linear(*linear_args(x, weight, bias, activation=activation))


def linear_args(x, weight, bias=None, *, activation=None):
    checks.linear(x, weight, bias, activation)
    return x, weight, bias, activation


@define("scaled_matmul")
def _scaled(a: Tensor, b: Tensor, scale_a: Tensor, scale_b: Tensor, bias: Optional[Tensor],
            out_dtype: torch.dtype) -> Tensor:
    return run("scaled_matmul", a, b, scale_a, scale_b, bias, out_dtype)


@fake(_scaled)
def _(a, b, scale_a, scale_b, bias, out_dtype):
    return a.new_empty(a.shape[0], b.shape[1], dtype=out_dtype)


def scaled_matmul(a: Tensor, b: Tensor, scale_a: Tensor, scale_b: Tensor, *,
                  bias: Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Quantised GEMM: a [M, K] @ b [K, N], both fp8 e4m3 (float8_e4m3fn, or float8_e4m3fnuz
    on AMD gfx942) or both int8, dequantised as (a @ b) * scale_a * scale_b (+ bias).
    scale_a fp32: 1 element (per tensor) or M (per row); scale_b: 1 or N (per column)."""
    return _scaled(*scaled_matmul_args(a, b, scale_a, scale_b, bias=bias, out_dtype=out_dtype))


def scaled_matmul_args(a, b, scale_a, scale_b, *, bias=None, out_dtype=torch.bfloat16):
    checks.scaled_matmul(a, b, scale_a, scale_b, bias, out_dtype)
    return a, b, scale_a, scale_b, bias, out_dtype


@define("quantized_linear")
def _qlinear(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor], bits: int,
             group_size: int, bias: Optional[Tensor]) -> Tensor:
    return run("quantized_linear", x, qweight, scales, zeros, bits, group_size, bias)


@fake(_qlinear)
def _(x, qweight, scales, zeros, bits, group_size, bias):
    return x.new_empty(*x.shape[:-1], qweight.shape[0])


def quantized_linear(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor | None = None, *,
                     bits: int = 4, group_size: int = 128, bias: Tensor | None = None) -> Tensor:
    """Weight-only quantised linear: x [..., K] @ W.T (+ bias), W [N, K] stored as int4/int8
    codes with per-group scales (and optional zeros) — the format of pk.quantize_weight."""
    return _qlinear(*quantized_linear_args(x, qweight, scales, zeros, bits=bits,
                                           group_size=group_size, bias=bias))


def quantized_linear_args(x, qweight, scales, zeros=None, *, bits=4, group_size=128, bias=None):
    checks.quantized_linear(x, qweight, scales, zeros, bits, group_size, bias)
    return x, qweight, scales, zeros, bits, group_size, bias


@define("grouped_matmul")
def _grouped(x: Tensor, weights: Tensor, group_sizes: Tensor) -> Tensor:
    return run("grouped_matmul", x, weights, group_sizes)


@fake(_grouped)
def _(x, weights, group_sizes):
    return x.new_empty(x.shape[0], weights.shape[2])


def grouped_matmul(x: Tensor, weights: Tensor, group_sizes: Tensor) -> Tensor:
    """MoE expert GEMM: x [T, K] with rows sorted by expert, weights [E, K, N], group_sizes
    int32/int64 [E] (non-negative, summing to T; empty groups allowed) -> [T, N]."""
    return _grouped(*grouped_matmul_args(x, weights, group_sizes))


def grouped_matmul_args(x, weights, group_sizes):
    checks.grouped_matmul(x, weights, group_sizes)
    return x, weights, group_sizes
