"""Registers the C++ CPU matmul kernels (impl "cpp", backend "cpu", priority 100):
``matmul``, ``linear`` (packed GEMM with the bias + activation epilogue fused),
``quantized_linear`` (weight-only int4/int8: GEMV for <= 16 rows, dequantise + GEMM above)
``grouped_matmul`` (MoE experts: the same GEMM once per non-empty group, each writing its
rows of the output in place) and ``scaled_matmul`` (int8 / fp8 through the bf16 GEMM, exact
for int8).

The kernels (kernels/cpu/gemm.cpp, quantized_linear.cpp) pick their ISA path at run time
(scalar / AVX2 / AVX-512 / AVX512-BF16, see cpu_isa.h), take fp32/bf16/fp16 with any
strides (weights are read in place), and use torch's thread count (torch.set_num_threads).
"""
from __future__ import annotations

import torch

from .. import _extension
from ..dispatch import register_impl
from ..ops import checks
from ..reference.matmul_ref import apply_scales

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _ops():
    return torch.ops.polykernels_C


def matmul(a, b, bias, activation, out_dtype):
    return _ops().matmul(a, b, bias, activation, out_dtype)


def linear(x, weight, bias, activation):
    return _ops().linear(x, weight, bias, activation)


def quantized_linear(x, qweight, scales, zeros, bits, group_size, bias):
    return _ops().quantized_linear(x, qweight, scales, zeros, int(bits), int(group_size), bias)


def _empty(shape, dtype) -> torch.Tensor:
    """Outputs allocated here (not by the C++ ops) come from this hook, so tests can poison them."""
    return torch.empty(shape, dtype=dtype)


def grouped_matmul(x, weights, group_sizes):
    """One C++ GEMM per non-empty group, into its rows of the output (no copies; weights [E,
    K, N] with any strides, e.g. [E, N, K] storage transposed). The group sizes are read on
    the host (CPU tensors: no sync) and checked before any work, as this impl also runs where
    the public checks could not read them (a compiled graph)."""
    checks.group_size_values(group_sizes, x.shape[0])
    out = _empty((x.shape[0], weights.shape[2]), x.dtype)
    start = 0
    for e, size in enumerate(group_sizes.tolist()):
        if size:
            _ops().matmul_out(x[start:start + size], weights[e], None, None, out[start:start + size])
        start += size
    return out


def _grouped_matmul_supports(x, weights, group_sizes):
    return _common("matmul_out", (x, weights, group_sizes), (("x", x), ("weights", weights)))


# int8 products are exact in the GEMM's fp32 accumulators (|a b| <= 2**14), and so is every
# partial sum of up to 1024 of them (<= 2**24): K is cut into chunks of this many.
INT8_EXACT_K = 1024
_FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)


def scaled_matmul(a, b, scale_a, scale_b, bias, out_dtype):
    """fp8 / int8 GEMM on the packed bf16 GEMM: int8 and fp8 e4m3 values are exact in bf16
    and their products exact in the engine's fp32 accumulators. int8: the K chunks' fp32 sums
    are exact integers, added in int32 (int64 past K 65536): torch._int_mm's exact result.
    fp8: one fp32-accumulated GEMM, as torch._scaled_mm. Then the scales and the bias in fp32,
    rounded once to out_dtype. (Operands are widened per call, b included: a prepared-weight
    path and an int8 dot-product kernel (VNNI / AMX) are issue 11's next steps.)"""
    m, k = a.shape
    n = b.shape[1]
    a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
    if a.dtype != torch.int8 or k <= INT8_EXACT_K:
        y = _ops().matmul(a16, b16, None, None, torch.float32)
    else:
        acc = torch.zeros(m, n, dtype=torch.int32 if k <= 65536 else torch.int64)
        for k0 in range(0, k, INT8_EXACT_K):
            part = _ops().matmul(a16[:, k0:k0 + INT8_EXACT_K], b16[k0:k0 + INT8_EXACT_K], None,
                                 None, torch.float32)
            acc += part.to(acc.dtype)
        y = acc.to(torch.float32)
    return apply_scales(y, scale_a, scale_b, bias, out_dtype)


def _scaled_matmul_supports(a, b, scale_a, scale_b, bias, out_dtype):
    reason = _common("matmul", (a, b, scale_a, scale_b, bias), ())
    if reason is None and a.dtype not in _FP8 + (torch.int8,):
        reason = f"dtype {a.dtype} not supported (int8, float8_e4m3fn, float8_e4m3fnuz)"
    return reason


def _common(op_name, tensors, floats):
    reason = _extension.unavailable_reason()
    if reason:
        return reason
    if not hasattr(torch.ops.polykernels_C, op_name):
        return f"C++ extension lacks polykernels_C.{op_name} (stale build: reinstall the package)"
    present = [t for t in tensors if t is not None]
    if any(t.device.type != "cpu" for t in present):
        return "tensors are not on the CPU"
    for name, t in floats:
        if t is not None and t.dtype not in _FLOATS:
            return f"{name} dtype {t.dtype} not supported (float32, bfloat16, float16)"
    return None


def _matmul_supports(a, b, bias, activation, out_dtype):
    reason = _common("matmul", (a, b, bias), (("a", a), ("b", b), ("bias", bias)))
    if reason is None and out_dtype is not None and out_dtype not in _FLOATS:
        reason = f"out_dtype {out_dtype} not supported (float32, bfloat16, float16)"
    return reason


def _linear_supports(x, weight, bias, activation):
    return _common("linear", (x, weight, bias), (("x", x), ("weight", weight), ("bias", bias)))


def _quantized_linear_supports(x, qweight, scales, zeros, bits, group_size, bias):
    reason = _common("quantized_linear", (x, qweight, scales, zeros, bias),
                     (("x", x), ("scales", scales), ("zeros", zeros), ("bias", bias)))
    if reason:
        return reason
    k = x.shape[-1]
    gs = k if group_size == -1 else group_size
    if bits == 4 and gs % 2:
        return f"int4 with an odd group_size ({gs}): groups would split a byte"
    if qweight.shape[1] > 1 and qweight.stride(1) != 1:
        return "qweight rows are not contiguous (stride(1) != 1)"
    return None


def register() -> None:
    register_impl("matmul", "cpp", backends="cpu", fn=matmul, supports=_matmul_supports, priority=100)
    register_impl("linear", "cpp", backends="cpu", fn=linear, supports=_linear_supports, priority=100)
    register_impl("quantized_linear", "cpp", backends="cpu", fn=quantized_linear,
                  supports=_quantized_linear_supports, priority=100)
    register_impl("grouped_matmul", "cpp", backends="cpu", fn=grouped_matmul,
                  supports=_grouped_matmul_supports, priority=100)
    register_impl("scaled_matmul", "cpp", backends="cpu", fn=scaled_matmul,
                  supports=_scaled_matmul_supports, priority=100)
