"""Registers the Triton paged-decode impls: name "triton", NVIDIA and AMD backends,
priority 100, for paged_attention, varlen_paged_attention, write_kv_cache and merge_attention_states.

The launcher (and so triton) is imported on the first call or supports() check, not by
register(): a machine without triton still loads the registry.
"""
from __future__ import annotations

PRIORITY = 100


def _launcher():
    from . import launcher
    return launcher


def paged_attention(*args):
    return _launcher().paged_attention(*args)


def paged_attention_supports(*args):
    return _launcher().paged_attention_supports(*args)


def varlen_paged_attention(*args):
    return _launcher().varlen_paged_attention(*args)


def varlen_paged_attention_supports(*args):
    return _launcher().varlen_paged_attention_supports(*args)


def paged_attention_out(*args):
    *fargs, out, lse = args
    _launcher().paged_attention(*fargs, out=out, lse=lse)


def paged_attention_out_supports(*args):
    return _launcher().paged_attention_supports(*args[:-2])


def varlen_paged_attention_out(*args):
    *fargs, out, lse = args
    _launcher().varlen_paged_attention(*fargs, out=out, lse=lse)


def varlen_paged_attention_out_supports(*args):
    return _launcher().varlen_paged_attention_supports(*args[:-2])


def write_kv_cache(*args):
    return _launcher().write_kv_cache(*args)


def write_kv_cache_supports(*args):
    return _launcher().write_kv_cache_supports(*args)


def merge_attention_states(*args):
    return _launcher().merge_attention_states(*args)


def merge_attention_states_supports(*args):
    return _launcher().merge_supports(*args)


_OPS = {
    "paged_attention": (paged_attention, paged_attention_supports),
    "varlen_paged_attention": (varlen_paged_attention, varlen_paged_attention_supports),
    "paged_attention_out": (paged_attention_out, paged_attention_out_supports),
    "varlen_paged_attention_out": (varlen_paged_attention_out, varlen_paged_attention_out_supports),
    "write_kv_cache": (write_kv_cache, write_kv_cache_supports),
    "merge_attention_states": (merge_attention_states, merge_attention_states_supports),
}


def register() -> None:
    from polykernels.dispatch import register_impl

    for op, (fn, supports) in _OPS.items():
        register_impl(op, "triton", backends=("nvidia", "amd"), fn=fn, supports=supports,
                      priority=PRIORITY)
