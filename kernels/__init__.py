"""polykernels: attention and matmul kernels for LLM inference, picked at run time for the
accelerator at hand (Triton on NVIDIA/AMD, C++ on CPU, CUDA C++, plugins), with failover.

Importing this package defines the ops and registers the built-in backends; it imports no
Triton, compiles nothing and touches no device. Kernels load on first use.
"""
from .dispatch import InvalidInputError, NoImplError, accelerator, backends, register_backend, register_impl
from .dispatch import registry as _registry
from .dispatch import use as _use
from .ops import (attention, grouped_matmul, linear, matmul, merge_attention_states,
                  paged_attention, quantized_linear, scaled_matmul, varlen_attention,
                  varlen_paged_attention, write_kv_cache)
from .compat.sdpa import sdpa
from .reference.quant import (dequantize_weight, quantize_fp8, quantize_int8,
                              quantize_weight)

__version__ = "0.1.0"


def use(**choices: str):
    """Explicit choice: ``with pk.use(attention="triton", matmul="cpp"):`` runs those impls or
    raises ``NoImplError`` listing why each candidate was refused (never fails over).
    An unknown op name (``pk.use(atention=...)``) raises ValueError at once, naming the known
    ops; an unknown impl name raises on the first call of that op, naming the registered ones.
    Inner ``use`` blocks override outer ones; both override ``POLYKERNELS_IMPL``."""
    _registry.check_op_names(choices, "pk.use")
    return _use(**choices)


def explain(op: str, *args, **kwargs):
    """Which implementation ``op`` would run for these arguments, and why each other was
    refused. Takes the public function's arguments, e.g.
    ``pk.explain("attention", q, k, v, causal=True)``; returns a Decision (print it)."""
    from .ops.explain import internal_args
    return _registry.explain(op, internal_args(op, *args, **kwargs))


__all__ = [
    "InvalidInputError", "NoImplError", "accelerator", "attention", "backends", "dequantize_weight", "explain",
    "grouped_matmul", "linear", "matmul", "merge_attention_states", "paged_attention",
    "quantize_fp8", "quantize_int8", "quantize_weight", "quantized_linear", "register_backend",
    "register_impl", "scaled_matmul", "sdpa", "use", "varlen_attention", "varlen_paged_attention",
    "write_kv_cache",
]
