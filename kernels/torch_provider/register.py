"""Registers torch's own kernels as impl "torch" of backend "torch" (every device type; each
``supports()`` says where a kernel really runs), priority 50: above the reference (0), below
our kernels (100 / 110). Backend "torch" itself is built in (dispatch/builtin.py)."""
from __future__ import annotations

from ..dispatch import register_impl
from . import attention, matmul, paged, quantized

PRIORITY = 50

IMPLS = {
    "attention": (attention.attention, attention.attention_supports),
    "attention_backward": (attention.attention_backward, attention.attention_backward_supports),
    "varlen_attention": (attention.varlen_attention, attention.varlen_attention_supports),
    "paged_attention": (paged.paged_attention, paged.paged_attention_supports),
    "varlen_paged_attention": (paged.varlen_paged_attention, paged.varlen_paged_attention_supports),
    "matmul": (matmul.matmul, matmul.matmul_supports),
    "linear": (matmul.linear, matmul.linear_supports),
    "scaled_matmul": (matmul.scaled_matmul, matmul.scaled_matmul_supports),
    "grouped_matmul": (matmul.grouped_matmul, matmul.grouped_matmul_supports),
    "quantized_linear": (quantized.quantized_linear, quantized.quantized_linear_supports),
}


def register() -> None:
    for op, (fn, supports) in IMPLS.items():
        register_impl(op, "torch", backends="torch", fn=fn, supports=supports, priority=PRIORITY)
