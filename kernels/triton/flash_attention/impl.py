"""The four attention ops with their internal signatures (CONTRIBUTING.md), plus ``supports``.

Inputs arrive validated by the public layer (shapes, GQA divisibility, softmax_scale a
float, window -1 = unbounded). ``supports`` refuses, with a reason, what these kernels do not
do. Triton is imported only when a kernel actually runs.
"""
from __future__ import annotations

import importlib.util

import torch

from ..common import interpreting

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
# Batch and heads ride on grid axes 1 and 2 (at most 65535). The limit sits on a power of two
# because dispatch caches decisions per power-of-two size class: 2**15 is the largest such
# bound below 65535 (sizes are checked on the tensors' own dimensions, cu_seqlens' length
# for varlen).
_MAX_GRID_YZ = 1 << 15


def _supports(q, k, v, alibi_slopes, batch_dim, backward=False) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    dev = q.device.type
    if dev == "cpu":
        if not interpreting():
            return "CPU tensors need TRITON_INTERPRET=1 (the Triton interpreter)"
    elif dev != "cuda":
        return f"device type {dev!r} is not a CUDA/ROCm GPU"
    elif not torch.version.hip and torch.cuda.get_device_capability(q.device) < (8, 0):
        return f"NVIDIA capability {torch.cuda.get_device_capability(q.device)} < (8, 0)"
    if q.dtype not in _DTYPES:
        return f"dtype {q.dtype} not in fp16/bf16/fp32"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return f"mixed dtypes q {q.dtype}, k {k.dtype}, v {v.dtype}"
    d = q.shape[-1]
    if d > MAX_HEAD_DIM:
        return f"head_dim {d} > {MAX_HEAD_DIM}"
    if k.shape[-1] != d:
        return f"head dims differ: q {d}, k {k.shape[-1]}"
    if v.shape[-1] > MAX_HEAD_DIM:
        return f"value head_dim {v.shape[-1]} > {MAX_HEAD_DIM}"
    if backward and v.shape[-1] != d:
        # the forward takes V's own head dim (MLA-style); the backward kernels keep one tile
        # width for q, k, v, dq, dk, dv: pending
        return f"value head_dim {v.shape[-1]} != query head_dim {d} (forward only)"
    if not (q.device == k.device == v.device):
        return "q, k, v on different devices"
    if alibi_slopes is not None and alibi_slopes.dtype != torch.float32:
        return f"alibi_slopes dtype {alibi_slopes.dtype} is not fp32"
    if batch_dim > _MAX_GRID_YZ or q.shape[-2] > _MAX_GRID_YZ:
        return f"batch ({batch_dim}) or heads ({q.shape[-2]}) dimension > {_MAX_GRID_YZ}"
    return None


def attention_supports(q, k, v, causal, softmax_scale, window_left, window_right, softcap,
                       alibi_slopes, sinks=None):
    return _supports(q, k, v, alibi_slopes, q.shape[0])


def attention_backward_supports(dout, q, k, v, out, lse, causal, softmax_scale, window_left,
                                window_right, softcap, alibi_slopes, dlse=None, sinks=None):
    return _supports(q, k, v, alibi_slopes, q.shape[0], backward=True)


def varlen_attention_supports(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                              causal, softmax_scale, window_left, window_right, softcap,
                              alibi_slopes, sinks=None):
    return _supports(q, k, v, alibi_slopes, cu_seqlens_q.numel())


def varlen_attention_backward_supports(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                       max_seqlen_q, max_seqlen_k, causal, softmax_scale,
                                       window_left, window_right, softcap, alibi_slopes,
                                       dlse=None, sinks=None):
    return _supports(q, k, v, alibi_slopes, cu_seqlens_q.numel(), backward=True)


def attention(q, k, v, causal, softmax_scale, window_left, window_right, softcap, alibi_slopes,
              sinks=None):
    """q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D] (any strides) -> (out [B, Sq, Hq, D], lse fp32 [B, Hq, Sq])."""
    from .launch import forward
    return forward(q, k, v, None, None, 0, 0, causal, softmax_scale, window_left, window_right,
                   softcap, alibi_slopes, sinks=sinks)


def attention_backward(dout, q, k, v, out, lse, causal, softmax_scale, window_left,
                       window_right, softcap, alibi_slopes, dlse=None, sinks=None):
    """-> (dq, dk, dv) shaped and typed like q, k, v; lse is the forward's fp32 [B, Hq, Sq];
    dlse (same shape, or None) is the gradient flowing into lse. sinks need no work here: P is
    recomputed from lse, which includes them."""
    from .launch import backward
    return backward(dout, q, k, v, out, lse, None, None, 0, 0, causal, softmax_scale,
                    window_left, window_right, softcap, alibi_slopes, dlse=dlse)


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                     softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks=None):
    """q [total_q, Hq, D], k/v [total_k, Hkv, D], cu_seqlens [B + 1]
    -> (out [total_q, Hq, D], lse fp32 [Hq, total_q])."""
    from .launch import forward
    return forward(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                   causal, softmax_scale, window_left, window_right, softcap, alibi_slopes,
                   sinks=sinks)


def varlen_attention_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                              max_seqlen_k, causal, softmax_scale, window_left, window_right,
                              softcap, alibi_slopes, dlse=None, sinks=None):
    """-> (dq, dk, dv) shaped and typed like q, k, v; lse (and dlse) fp32 [Hq, total_q]."""
    from .launch import backward
    return backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q),
                    int(max_seqlen_k), causal, softmax_scale, window_left, window_right, softcap,
                    alibi_slopes, dlse=dlse)
