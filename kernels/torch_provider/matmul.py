"""``matmul``, ``linear``, ``scaled_matmul`` and ``grouped_matmul`` through torch's GEMMs.

Measured on torch 2.13 (CPU):
  * ``torch.matmul`` / ``F.linear`` in bf16/fp16 accumulate in fp32 and round once (results
    equal the correctly rounded fp32-accumulated product); CPU has no ``aten::mm.dtype``
    (a 16-bit GEMM with an fp32 result), so a 16-bit input with a different ``out_dtype`` is
    computed in fp32 (fp32 copies of a and b) to keep the contract's single rounding.
  * The epilogue (bias, then activation) runs in fp32 (fp64 for fp64) on the GEMM's result;
    a bias of a's dtype on a 2-D product is fused into ``addmm`` / ``F.linear``.
  * ``torch._int_mm`` (int8 x int8 -> int32) works on CPU for every shape and stride, exact;
    on CUDA it needs M > 16 and K, N multiples of 8 (torch's checks). int32 cannot overflow
    for K <= 65536 (|product| <= 2**14).
  * ``torch._scaled_mm`` works on CPU for e4m3fn and e4m3fnuz with fp32 scales that are
    either both single elements or rowwise [M, 1] / [1, N] contiguous (mixed granularity is
    rejected, so a single scale is expanded to rowwise here), any strides of a and b, any
    bias dtype, out fp32/bf16/fp16 rounded once.
  * ``torch._grouped_mm(x, w, offs)`` works on CPU for fp32/bf16/fp16 (not fp64), offs int32
    cumulative ends; each operand needs one of its last two dims contiguous and the other
    stride a multiple of 16 bytes. Other layouts run one ``torch.mm`` per expert (a decision
    cached per shape class cannot see strides or K, N modulo 4/8).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops import checks
from ..reference.matmul_ref import apply_scales, broadcast_scale
from .common import compute_dtype, cpu_only_reason, gemm_device_reason

_HALF = (torch.bfloat16, torch.float16)
_FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
INT_MM_MAX_K = 65536


def _activation_(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    """In place, the reference's activations (matmul_ref.apply_activation) by torch's ops."""
    if activation == "relu":
        y.clamp_min_(0)
    elif activation == "gelu":
        torch._C._nn.gelu_(y)
    elif activation == "gelu_tanh":
        torch._C._nn.gelu_(y, approximate="tanh")
    elif activation == "silu":
        F.silu(y, inplace=True)
    elif activation is not None:
        raise ValueError(f"activation: unknown {activation!r}")
    return y


def _epilogue(y, bias, activation, out_dtype):
    """bias then activation on ``y`` (a fresh GEMM result) in fp32/fp64, cast to out_dtype;
    contiguous, as the op's fake promises (a no-op for torch's usual GEMM outputs)."""
    if bias is not None or activation is not None:
        y = y.to(compute_dtype(y.dtype))
        if bias is not None:
            y.add_(bias)
        _activation_(y, activation)
    return y.to(out_dtype).contiguous()


def matmul(a, b, bias, activation, out_dtype):
    out_dtype = out_dtype or a.dtype
    if a.dtype in _HALF and out_dtype != a.dtype:
        a, b = a.float(), b.float()   # no 16-bit GEMM with a wider result on CPU (see doc)
    fused = bias is not None and bias.dtype == a.dtype and a.dim() == 2
    y = torch.addmm(bias, a, b) if fused else torch.matmul(a, b)
    return _epilogue(y, None if fused else bias, activation, out_dtype)


def matmul_supports(a, b, bias, activation, out_dtype):
    return gemm_device_reason("matmul", a, b)


def linear(x, weight, bias, activation):
    fused = bias is not None and bias.dtype == x.dtype
    y = F.linear(x, weight, bias if fused else None)
    return _epilogue(y, None if fused else bias, activation, x.dtype)


def linear_supports(x, weight, bias, activation):
    return gemm_device_reason("linear", x, weight)


def _cpu_kernel_reason(op: str, t, fn_name: str, why: str) -> str | None:
    """Refuse non-CPU tensors (``why``) and a torch without ``torch.<fn_name>``."""
    reason = cpu_only_reason(op, t, why=why)
    if reason is None and not hasattr(torch, fn_name):
        reason = f"this torch has no torch.{fn_name}"
    return reason


# -- scaled (fp8 / int8) -----------------------------------------------------------------------
def _pad(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return F.pad(t, (0, cols - t.shape[1], 0, rows - t.shape[0])) if (rows, cols) != t.shape else t


def _int8(a, b, scale_a, scale_b, bias, out_dtype):
    m, k = a.shape
    n = b.shape[1]
    if a.device.type == "cuda" and (k % 8 or n % 8):   # cuBLAS int8: K, N multiples of 8
        kp, np_ = -(-k // 8) * 8, -(-n // 8) * 8         # zero padding is exact (copies a, b)
        acc = torch._int_mm(_pad(a, m, kp), _pad(b, kp, np_))[:, :n]
    else:
        acc = torch._int_mm(a, b)
    return apply_scales(acc.to(torch.float32), scale_a, scale_b, bias, out_dtype).contiguous()


def _fp8(a, b, scale_a, scale_b, bias, out_dtype):
    m, n = a.shape[0], b.shape[1]
    sa, sb = broadcast_scale(scale_a, m, (m, 1)), broadcast_scale(scale_b, n, (1, n))
    if sa.dim() != sb.dim() or sa.dim():   # rowwise (torch takes only matching granularities):
        sa = sa.reshape(-1).expand(m).contiguous().view(m, 1)   # fresh [M, 1], strides (1, 1)
        sb = sb.reshape(-1).expand(n).contiguous().view(1, n)   # fresh [1, N], strides (N, 1)
    return torch._scaled_mm(a, b, sa, sb, bias=bias, out_dtype=out_dtype)


def scaled_matmul(a, b, scale_a, scale_b, bias, out_dtype):
    if a.dtype == torch.int8:
        return _int8(a, b, scale_a, scale_b, bias, out_dtype)
    return _fp8(a, b, scale_a, scale_b, bias, out_dtype)


def scaled_matmul_supports(a, b, scale_a, scale_b, bias, out_dtype):
    dev = a.device.type
    if a.dtype == torch.int8:
        if dev not in ("cpu", "cuda"):
            return f"torch provider: int8 scaled_matmul on {dev!r}: torch._int_mm runs on cpu and cuda"
        if not hasattr(torch, "_int_mm"):
            return "this torch has no torch._int_mm"
        if a.shape[1] > INT_MM_MAX_K:
            return (f"K={a.shape[1]} > {INT_MM_MAX_K}: torch._int_mm's int32 accumulator "
                    "could overflow")
        if dev == "cuda" and a.shape[0] <= 16:
            return f"torch._int_mm on CUDA needs M > 16, got M={a.shape[0]}"
        return None
    if a.dtype not in _FP8:
        return f"dtype {a.dtype} not supported (int8, float8_e4m3fn, float8_e4m3fnuz)"
    return _cpu_kernel_reason("fp8 scaled_matmul", a, "_scaled_mm", "GPU path pending: "
                              "torch._scaled_mm there needs sm89+, 16-aligned sizes and a "
                              "column-major b")


# -- grouped (MoE) -----------------------------------------------------------------------------
def _grouped_mm_layout_ok(t: torch.Tensor) -> bool:
    """torch._grouped_mm's operand rule: 16-byte aligned data, one of the last two dims
    contiguous, the other's stride a multiple of 16 bytes and at least that dim's size."""
    if t.data_ptr() % 16:
        return False
    s_m, s_n = t.stride(-2), t.stride(-1)
    size_m, size_n = t.shape[-2], t.shape[-1]
    align = 16 // t.element_size()
    if s_n == 1 and s_m >= max(1, size_n):
        return s_m % align == 0
    if s_m == 1 and s_n >= max(1, size_m):
        return s_n % align == 0
    return False


def grouped_matmul(x, weights, group_sizes):
    # sizes that do not sum to the rows would leave rows unwritten: checked here, as this impl
    # also runs where the public checks could not read them (a compiled graph)
    checks.group_size_values(group_sizes, x.shape[0])
    if _grouped_mm_layout_ok(x) and _grouped_mm_layout_ok(weights):
        offs = torch.cumsum(group_sizes, 0).to(torch.int32)
        return torch._grouped_mm(x, weights, offs)
    out = torch.empty(x.shape[0], weights.shape[2], dtype=x.dtype, device=x.device)
    start = 0
    for e, size in enumerate(group_sizes.tolist()):
        if size:
            torch.mm(x[start:start + size], weights[e], out=out[start:start + size])
        start += size
    return out


def grouped_matmul_supports(x, weights, group_sizes):
    reason = _cpu_kernel_reason("grouped_matmul", x, "_grouped_mm",
                                "GPU path pending: torch._grouped_mm there needs sm90+")
    if reason:
        return reason
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"dtype {x.dtype} not supported by torch._grouped_mm (float32, bfloat16, float16)"
    if x.shape[0] >= 2 ** 31:
        return "more than 2**31 - 1 rows: torch._grouped_mm's offsets are int32"
    return None

