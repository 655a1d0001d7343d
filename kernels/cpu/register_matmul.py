"""Registers the C++ CPU matmul kernels (impl "cpp", backend "cpu", priority 100):
``matmul``, ``linear`` (packed GEMM with the bias + activation epilogue fused),
``quantized_linear`` (weight-only int4/int8: GEMV for <= 16 rows, dequantise + GEMM above)
and ``grouped_matmul`` (MoE experts: the same GEMM once per non-empty group, each writing its
rows of the output in place).

The kernels (kernels/cpu/gemm.cpp, quantized_linear.cpp) pick their ISA path at run time
(scalar / AVX2 / AVX-512 / AVX512-BF16, see cpu_isa.h), take fp32/bf16/fp16 with any
strides (weights are read in place), and use torch's thread count (torch.set_num_threads).
"""
from __future__ import annotations

import torch

from .. import _extension
from ..dispatch import register_impl
from ..ops import checks

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
