"""The one call from a custom op's body into the dispatcher.

Outputs are made contiguous here (a no-op for the usual case) because the fake kernels
declare contiguous outputs and torch.compile relies on fakes and real outputs agreeing in
strides; impls are free to return any layout (e.g. an einsum's permuted one).
"""
from __future__ import annotations

import torch

from ..dispatch import dispatch


def run(op: str, *args):
    result = dispatch(op, *args)
    if isinstance(result, torch.Tensor):
        return result.contiguous()
    if isinstance(result, tuple):
        return tuple(r.contiguous() if isinstance(r, torch.Tensor) else r for r in result)
    return result


def empty_like_contiguous(*tensors: torch.Tensor):
    """Fakes: contiguous tensors shaped like the given ones (torch.empty_like would copy a
    permuted input's strides)."""
    out = tuple(t.new_empty(t.shape) for t in tensors)
    return out[0] if len(out) == 1 else out
