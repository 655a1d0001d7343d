"""Registers the Triton matmul family (impl "triton", NVIDIA and AMD backends, priority 100)
and says, for each op, what it refuses and why.

The kernels themselves are imported inside the impl functions, so registration imports no
triton and compiles nothing.
"""
from __future__ import annotations

import math

import torch

PRIORITY = 100
FLOATS = (torch.float16, torch.bfloat16, torch.float32)
OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
I32_MAX = 2 ** 31 - 1
FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
ACTIVATIONS = (None, "relu", "gelu", "gelu_tanh", "silu")  # epilogue.ACTIVATIONS' keys
GRID_Z_MAX = 65535  # CUDA's limit on grid dims y/z (batch and split-K axes)


def _too_big(*tensors) -> str | None:
    # Offsets are computed in int32 inside the kernels (faster address math).
    for t in tensors:
        if t is not None and t.numel() > I32_MAX:
            return f"tensor of {t.numel()} elements needs 64-bit offsets (int32 kernels)"
    return None


def _gpu(device: torch.device):
    """(vendor, arch) of a GPU tensor's device; (None, None) on CPU / under the interpreter."""
    from .configs import _vendor
    vendor, arch, _ = _vendor(device)
    return vendor, arch


def matmul_supports(a, b, bias, activation, out_dtype):
    if a.dtype not in FLOATS:
        return f"a.dtype {a.dtype} not in fp16/bf16/fp32"
    if b.dtype != a.dtype:
        return f"b.dtype {b.dtype} != a.dtype {a.dtype}"
    if activation not in ACTIVATIONS:
        return f"activation {activation!r} not supported"
    if out_dtype is not None and out_dtype not in OUT_DTYPES:
        return f"out_dtype {out_dtype} not in fp16/bf16/fp32"
    if bias is not None and not bias.is_floating_point():
        return f"bias.dtype {bias.dtype} is not floating point"
    if a.dim() > 2:
        batch = math.prod(a.shape[:-2])
        if batch > GRID_Z_MAX and not a.is_contiguous():
            return f"{batch} strided batches exceed the grid's z limit {GRID_Z_MAX}"
    n_out = math.prod(a.shape[:-1]) * b.shape[1]
    if n_out > I32_MAX:
        return f"output of {n_out} elements needs 64-bit offsets (int32 kernels)"
    return _too_big(a, b)


def linear_supports(x, weight, bias, activation):
    return matmul_supports(x, weight.t(), bias, activation, None)


def scaled_matmul_supports(a, b, scale_a, scale_b, bias, out_dtype):
    if not ((a.dtype in FP8 and b.dtype == a.dtype) or (a.dtype == b.dtype == torch.int8)):
        return f"a/b dtypes {a.dtype}/{b.dtype}: need both int8 or both the same fp8 e4m3"
    if out_dtype not in OUT_DTYPES:
        return f"out_dtype {out_dtype} not in bf16/fp16/fp32"
    if a.dtype in FP8:
        vendor, arch = _gpu(a.device)
        if vendor == "nvidia":
            if a.dtype != torch.float8_e4m3fn:
                return "float8_e4m3fnuz is an AMD format; NVIDIA Triton has no fnuz dot"
            if arch < (8, 9):
                return f"sm{arch[0]}{arch[1]} has no fp8 tensor cores (Triton needs sm89+)"
        elif vendor == "amd":
            if arch == "gfx942" and a.dtype != torch.float8_e4m3fnuz:
                return "gfx942's fp8 MFMA takes float8_e4m3fnuz (e4m3fn would be emulated)"
            if arch not in ("gfx942", "gfx950"):
                return f"{arch} has no fp8 MFMA"
            if arch == "gfx950" and a.dtype != torch.float8_e4m3fn:
                return "gfx950's fp8 MFMA takes float8_e4m3fn"
    if a.shape[0] * b.shape[1] > I32_MAX:
        return "output needs 64-bit offsets (int32 kernels)"
    return _too_big(a, b)


def quantized_linear_supports(x, qweight, scales, zeros, bits, group_size, bias):
    if x.dtype not in FLOATS:
        return f"x.dtype {x.dtype} not in fp16/bf16/fp32"
    if bits not in (4, 8):
        return f"bits {bits} not in (4, 8)"
    if qweight.dtype != torch.uint8:
        return f"qweight.dtype {qweight.dtype} is not uint8"
    n_out = math.prod(x.shape[:-1]) * qweight.shape[0]
    if n_out > I32_MAX:
        return f"output of {n_out} elements needs 64-bit offsets (int32 kernels)"
    return _too_big(x, qweight)


def grouped_matmul_supports(x, weights, group_sizes):
    if x.dtype not in FLOATS:
        return f"x.dtype {x.dtype} not in fp16/bf16/fp32"
    if weights.dtype != x.dtype:
        return f"weights.dtype {weights.dtype} != x.dtype {x.dtype}"
    if group_sizes.dtype not in (torch.int32, torch.int64):
        return f"group_sizes.dtype {group_sizes.dtype} not int32/int64"
    if x.shape[0] * weights.shape[2] > I32_MAX:
        return "output needs 64-bit offsets (int32 kernels)"
    return _too_big(x) or (None if weights[0].numel() <= I32_MAX else
                           "one expert's weight needs 64-bit offsets")


def matmul(a, b, bias, activation, out_dtype):
    from .gemm import matmul as run
    return run(a, b, bias, activation, out_dtype)


def linear(x, weight, bias, activation):
    from .gemm import linear as run
    return run(x, weight, bias, activation)


def scaled_matmul(a, b, scale_a, scale_b, bias, out_dtype):
    from .scaled import scaled_matmul as run
    return run(a, b, scale_a, scale_b, bias, out_dtype)


def quantized_linear(x, qweight, scales, zeros, bits, group_size, bias):
    from .weight_only import quantized_linear as run
    return run(x, qweight, scales, zeros, bits, group_size, bias)


def grouped_matmul(x, weights, group_sizes):
    from .grouped import grouped_matmul as run
    return run(x, weights, group_sizes)


OPS = {
    "matmul": (matmul, matmul_supports),
    "linear": (linear, linear_supports),
    "scaled_matmul": (scaled_matmul, scaled_matmul_supports),
    "quantized_linear": (quantized_linear, quantized_linear_supports),
    "grouped_matmul": (grouped_matmul, grouped_matmul_supports),
}


def register() -> None:
    from polykernels.dispatch import register_impl

    for op, (fn, supports) in OPS.items():
        register_impl(op, "triton", backends=("nvidia", "amd"), fn=fn, supports=supports,
                      priority=PRIORITY)
