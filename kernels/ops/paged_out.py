"""``out=`` for the paged attention ops: ``paged_attention_out`` / ``varlen_paged_attention_out``.

A server preallocates its attention output (and CUDA graphs replay kernels on fixed
addresses), so ``pk.paged_attention(..., out=buf)`` must write into ``buf`` itself. A
functional op cannot return memory it was given (its schema promises fresh outputs), so each
paged op has a twin that mutates ``out`` (and ``lse`` when given) and returns nothing. Their
internal arguments are the functional op's followed by ``out, lse``; the impls write directly
(C++: any strides; Triton: contiguous buffers, others through a scratch copy; the reference
computes and copies). Semantics: the functional ops' (reference/paged_ref.py).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._library import define, fake
from ._run import run
from . import checks


@define("paged_attention_out", mutates_args=("out", "lse"))
def paged_attention_out(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor,
                        seq_lens: Tensor, softmax_scale: float, window_left: int,
                        window_right: int, softcap: float, alibi_slopes: Optional[Tensor],
                        k_scale: float, v_scale: float, kv_scales: Optional[Tensor],
                        sinks: Optional[Tensor], out: Tensor, lse: Optional[Tensor]) -> None:
    run("paged_attention_out", q, k_cache, v_cache, block_table, seq_lens, softmax_scale,
        window_left, window_right, softcap, alibi_slopes, k_scale, v_scale, kv_scales, sinks,
        out, lse)


@fake(paged_attention_out)
def _(*args):
    return None


@define("varlen_paged_attention_out", mutates_args=("out", "lse"))
def varlen_paged_attention_out(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor,
                               seq_lens: Tensor, cu_seqlens_q: Tensor, max_seqlen_q: int,
                               softmax_scale: float, window_left: int, window_right: int,
                               softcap: float, alibi_slopes: Optional[Tensor], k_scale: float,
                               v_scale: float, kv_scales: Optional[Tensor],
                               sinks: Optional[Tensor], out: Tensor,
                               lse: Optional[Tensor]) -> None:
    run("varlen_paged_attention_out", q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q,
        max_seqlen_q, softmax_scale, window_left, window_right, softcap, alibi_slopes, k_scale,
        v_scale, kv_scales, sinks, out, lse)


@fake(varlen_paged_attention_out)
def _(*args):
    return None


def buffers(out, inputs: dict, out_shape: tuple, lse_shape: tuple, return_lse: bool):
    """Check a caller's ``out`` (shape, dtype and device of the result; no memory shared with
    any of ``inputs``, name -> tensor, q first) and make the lse buffer (None unless
    return_lse). Returns (out, lse)."""
    q = inputs["q"]
    checks.tensor(out, "out")
    if tuple(out.shape) != tuple(out_shape) or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out: expected a {q.dtype} tensor of shape {tuple(out_shape)} on "
                         f"{q.device}, got {out.dtype} {tuple(out.shape)} on {out.device}")
    if any(st == 0 and n > 1 for st, n in zip(out.stride(), out.shape)):
        raise ValueError(f"out: expected a tensor with its own memory per element, got strides "
                         f"{out.stride()}")
    checks.no_aliasing({"out": out}, {k: t for k, t in inputs.items() if t is not None})
    lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device) if return_lse else None
    return out, lse


def compute_and_copy(fn):
    """The ``_out`` impl of a functional impl that cannot write into a given buffer: it
    computes, then copies (the reference's way)."""
    def out_impl(*args):
        *fargs, out, lse = args
        o, l = fn(*fargs)
        out.copy_(o)
        if lse is not None:
            lse.copy_(l)
    return out_impl
