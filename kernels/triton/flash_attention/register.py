"""Registers the Triton flash attention impls (name "triton", NVIDIA and AMD backends)."""
from __future__ import annotations

from . import impl

PRIORITY = 100

_OPS = {
    "attention": (impl.attention, impl.attention_supports),
    "attention_backward": (impl.attention_backward, impl.attention_backward_supports),
    "varlen_attention": (impl.varlen_attention, impl.varlen_attention_supports),
    "varlen_attention_backward": (impl.varlen_attention_backward,
                                  impl.varlen_attention_backward_supports),
}


def register() -> None:
    from polykernels.dispatch import register_impl

    for op, (fn, supports) in _OPS.items():
        register_impl(op, "triton", backends=("nvidia", "amd"), fn=fn, supports=supports,
                      priority=PRIORITY)
