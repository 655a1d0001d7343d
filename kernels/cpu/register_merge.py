"""Registers the C++ CPU merge_attention_states kernel (impl "cpp", backend "cpu")."""
import torch

from .. import _extension
from ..dispatch import register_impl


def merge_attention_states(out_a, lse_a, out_b, lse_b):
    return torch.ops.polykernels_C.merge_attention_states(out_a, lse_a, out_b, lse_b)


def _supports(out_a, lse_a, out_b, lse_b):
    reason = _extension.unavailable_reason()
    if reason:
        return reason
    if out_a.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"dtype {out_a.dtype} not supported (float32, bfloat16, float16)"
    return None


def register() -> None:
    register_impl("merge_attention_states", "cpp", backends="cpu", fn=merge_attention_states,
                  supports=_supports, priority=100)
