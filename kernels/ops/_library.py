"""How the public ops are defined in torch.library: ``define`` (a thin layer over
``torch.library.Library``).

Why not ``torch.library.custom_op``: its per-call Python layers (an autograd.Function, a
dynamo-disable frame, redispatch and aliasing checks) cost ~31 us per call on top of the
kernel, ~18 us under ``torch.inference_mode`` (measured: torch 2.13, 1 thread, AMD EPYC Zen 3),
more than a decode step's small ops take. The same op defined with ``Library.define`` and a
``CompositeExplicitAutograd`` kernel costs ~3 us (inference mode) / ~6 us (grad mode).

What custom_op did is kept, each in one place:
  * the schema is inferred from the function's annotations (``torch.library.infer_schema``),
    tagged pt2-compliant;
  * fake kernels: ``@fake(op)`` in the op modules (torch.library.register_fake, and the
    dispatcher checks each impl's first result per decision against it: a wrong shape or
    dtype is a failure, so failover runs the next impl);
  * autograd: differentiable ops call ``torch.library.register_autograd(op, ...)``; every other
    op gets the Autograd kernel below, whose outputs carry a grad_fn that raises on backward
    (a missing gradient is an error, never a silent zero);
  * mutated arguments get their version counters bumped (autograd's saved-tensor checks);
  * outputs never alias inputs: ``_run.run`` copies one that does.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

LIBRARY = torch.library.Library("polykernels", "DEF")
NAMESPACE = "polykernels"
FAKES: dict[str, Callable] = {}   # op name -> its fake kernel (also checks real results)


def define(name: str, *, mutates_args: Iterable[str] = (), differentiable: bool = False
           ) -> Callable[[Callable], torch._ops.OpOverload]:
    """Decorator: define ``polykernels::<name>`` from the function's annotations, with the
    function as its kernel for every device; returns the op overload to call.

    ``differentiable=True``: the caller registers a backward (torch.library.register_autograd);
    otherwise backward through the op raises."""
    mutates_args = tuple(mutates_args)

    def wrap(fn: Callable) -> torch._ops.OpOverload:
        schema = torch.library.infer_schema(fn, mutates_args=mutates_args)
        LIBRARY.define(name + schema, tags=(torch.Tag.pt2_compliant_tag,))
        LIBRARY.impl(name, fn, "CompositeExplicitAutograd")
        op = getattr(getattr(torch.ops, NAMESPACE), name).default
        if not differentiable:
            mutated = [i for i, a in enumerate(op._schema.arguments)
                       if a.alias_info is not None and a.alias_info.is_write]
            LIBRARY.impl(name, _no_backward_kernel(op, mutated), "Autograd")
        return op

    return wrap


def fake(op: torch._ops.OpOverload) -> Callable[[Callable], Callable]:
    """Decorator: ``fn`` is the op's fake kernel (torch.library.register_fake), and the
    dispatcher compares each impl's first result per decision with what it gives."""
    def wrap(fn: Callable) -> Callable:
        torch.library.register_fake(op)(fn)
        FAKES[op._schema.name.split("::")[-1]] = fn
        return fn
    return wrap


def result_mismatch(op: str, args: tuple, result) -> str | None:
    """None if ``result`` has the shapes, dtypes and devices the op's fake kernel gives for
    ``args`` (called on the real arguments: it allocates empty outputs), else what differs."""
    fake_fn = FAKES.get(op)
    if fake_fn is None:
        return None
    want = fake_fn(*args)
    wants = want if isinstance(want, tuple) else (want,)
    gots = result if isinstance(result, tuple) else (result,)
    if len(gots) != len(wants):
        return f"returned {len(gots)} outputs, expected {len(wants)}"
    for i, (g, w) in enumerate(zip(gots, wants)):
        if w is None or g is None:
            if g is not w:
                return f"output {i}: returned {type(g).__name__}, expected {type(w).__name__}"
            continue
        if not isinstance(g, torch.Tensor):
            return f"output {i}: returned {type(g).__name__}, expected a tensor"
        if (g.shape, g.dtype, g.device) != (w.shape, w.dtype, w.device):
            return (f"output {i}: returned shape {tuple(g.shape)} {g.dtype} on {g.device}, "
                    f"expected {tuple(w.shape)} {w.dtype} on {w.device}")
    return None


def _no_backward_kernel(op: torch._ops.OpOverload, mutated: list[int]) -> Callable:
    qualified = f"{NAMESPACE}.{op._schema.name.split('::')[-1]}"

    class NoBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            with torch._C._AutoDispatchBelowAutograd():
                return op(*args)

        @staticmethod
        def backward(ctx, *grads):
            raise RuntimeError(f"{qualified} has no backward: it is not differentiable "
                               f"(only attention and varlen_attention are)")

    def kernel(*args):
        for i in mutated:   # what ADInplaceOrView would do (outside inference mode only)
            t = args[i]
            if t is not None and not t.is_inference():   # an optional buffer may be absent
                torch.autograd.graph.increment_version(t)
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad
                                           for a in args):
            return NoBackward.apply(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    return kernel
