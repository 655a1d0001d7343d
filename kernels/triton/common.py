"""Helpers shared by every Triton kernel family.

Nothing here imports triton at module import time beyond what the kernels themselves need,
and nothing touches a device.
"""
from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """Value for a kernel's ``DOT_FP32`` constexpr.

    Work-around for a Triton interpreter bug: bf16 ``tl.dot`` returns garbage (values near
    1e10; triton#11584). Kernels take ``DOT_FP32: tl.constexpr`` and, when it is set, cast
    their bf16 operands to fp32 right before ``tl.dot``. It is only ever set under the
    interpreter, so compiled GPU kernels always use the native bf16 matrix instructions.
    """
    return interpreting() and dtype == torch.bfloat16


TORCH_TO_TRITON_DTYPE = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.float8_e4m3fn: "fp8e4nv",
    torch.float8_e4m3fnuz: "fp8e4b8",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.int32: "i32",
    torch.int64: "i64",
}
