"""The one call from an op's kernel into the dispatcher.

Outputs are made contiguous here (a no-op for the usual case) because the fake kernels
declare contiguous outputs and torch.compile relies on fakes and real outputs agreeing in
strides; impls are free to return any layout (e.g. an einsum's permuted one). An output that
is an input, or a view of one's memory, is copied: the ops' schemas promise fresh outputs
(autograd and torch.compile rely on it), and impls are free to take shortcuts.
"""
from __future__ import annotations

import torch

from ..dispatch import dispatch, registry
from ._library import result_mismatch

# impls' first results per decision are checked against the ops' fakes (see _library.py)
registry.result_check = result_mismatch


def run(op: str, *args):
    result = dispatch(op, *args)
    if isinstance(result, torch.Tensor):
        return _fresh(result, args)
    if isinstance(result, tuple):
        return tuple(_fresh(r, args) if isinstance(r, torch.Tensor) else r for r in result)
    return result


def _fresh(r: torch.Tensor, args: tuple) -> torch.Tensor:
    # Cheap on the usual path: a new tensor that is not a view cannot share an input's memory.
    if r._base is not None or any(r is a for a in args):
        storage = r.untyped_storage().data_ptr()
        if any(isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() == storage
               for a in args):
            return r.clone(memory_format=torch.contiguous_format)
    return r.contiguous()


def empty_like_contiguous(*tensors: torch.Tensor):
    """Fakes: contiguous tensors shaped like the given ones (torch.empty_like would copy a
    permuted input's strides)."""
    out = tuple(t.new_empty(t.shape) for t in tensors)
    return out[0] if len(out) == 1 else out
