"""Small helpers shared by the torch provider's modules."""
from __future__ import annotations

import torch

# Device types whose torch build ships vendor GEMM libraries. Out-of-tree devices (plugins,
# e.g. the simulated MAIA chip) keep their own impls or the reference: torch's boxed CPU
# fallback on such a device is not a vendor kernel.
GEMM_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps")


def device_type(*tensors) -> str:
    return next(t.device.type for t in tensors if t is not None)


def gemm_device_reason(op: str, *tensors) -> str | None:
    dev = device_type(*tensors)
    if dev not in GEMM_DEVICE_TYPES:
        return (f"torch provider: {op} on device type {dev!r}: torch has vendor GEMM kernels only "
                f"for {', '.join(GEMM_DEVICE_TYPES)}")
    return None


def cpu_only_reason(op: str, *tensors, why: str = "GPU path pending") -> str | None:
    dev = device_type(*tensors)
    if dev != "cpu":
        return f"torch provider: {op} validated on CPU only ({why})"
    return None


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The epilogue's precision: fp64 for fp64 data, fp32 otherwise (as the reference)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
