"""Registers the C++ CPU attention kernels (impl "cpp", backend "cpu", priority 100):
``attention``, ``varlen_attention``, ``paged_attention``, ``varlen_paged_attention`` and
``write_kv_cache`` (forward only;
the backward ops stay on the reference).

The kernels (kernels/cpu/attention*.cpp, paged_attention.cpp, kv_cache.cpp) pick their ISA
path at run time (scalar / AVX2 / AVX-512 / AVX512_BF16, see cpu_isa.h) and accept any
strides, GQA, causal/window/softcap/ALiBi, fp32/bf16/fp16 (fp8 e4m3fn caches for paged).

Index tensors: the C++ ops read ``block_table`` and ``slot_mapping`` through their strides
but want ``seq_lens`` and ``cu_seqlens_q/k`` contiguous, so those (a few ints) are made
contiguous here: any valid view is accepted.
"""
from __future__ import annotations

import torch

from .. import _extension
from ..dispatch import register_impl

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
_FP8 = torch.float8_e4m3fn


def _ops():
    return torch.ops.polykernels_C


def _contiguous(t):
    return None if t is None else t.contiguous()


def attention(q, k, v, causal, softmax_scale, window_left, window_right, softcap, alibi_slopes,
              sinks=None):
    return _ops().cpu_attention_fwd(q, k, v, bool(causal), float(softmax_scale), int(window_left),
                                    int(window_right), float(softcap), alibi_slopes,
                                    sinks=_contiguous(sinks))


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                     softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks=None):
    return _ops().cpu_varlen_attention_fwd(q, k, v, cu_seqlens_q.contiguous(),
                                           cu_seqlens_k.contiguous(), int(max_seqlen_q),
                                           int(max_seqlen_k), bool(causal), float(softmax_scale),
                                           int(window_left), int(window_right), float(softcap),
                                           alibi_slopes, sinks=_contiguous(sinks))


def paged_attention(q, k_cache, v_cache, block_table, seq_lens, softmax_scale, window_left,
                    window_right, softcap, alibi_slopes, k_scale, v_scale, kv_scales=None,
                    sinks=None):
    return _ops().cpu_paged_attention(q, k_cache, v_cache, block_table, seq_lens.contiguous(),
                                      float(softmax_scale), int(window_left), int(window_right),
                                      float(softcap), alibi_slopes, float(k_scale), float(v_scale),
                                      kv_scales, sinks=_contiguous(sinks))


def varlen_paged_attention(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q,
                           softmax_scale, window_left, window_right, softcap, alibi_slopes, k_scale,
                           v_scale, kv_scales=None, sinks=None):
    return _ops().cpu_varlen_paged_attention(q, k_cache, v_cache, block_table, seq_lens.contiguous(),
                                             cu_seqlens_q.contiguous(), int(max_seqlen_q),
                                             float(softmax_scale), int(window_left),
                                             int(window_right), float(softcap), alibi_slopes,
                                             float(k_scale), float(v_scale), kv_scales,
                                             sinks=_contiguous(sinks))


def paged_attention_out(*args):
    """Writes into the caller's out (any strides) and lse (or a scratch lse)."""
    *fargs, out, lse = args
    q, kc, vc, bt, sl, scale, wl, wr, softcap, alibi, k_scale, v_scale, kv_scales, sinks = fargs
    _ops().cpu_paged_attention(q, kc, vc, bt, sl.contiguous(), float(scale), int(wl), int(wr),
                               float(softcap), alibi, float(k_scale), float(v_scale), kv_scales,
                               out=out, lse=lse, sinks=_contiguous(sinks))


def varlen_paged_attention_out(*args):
    *fargs, out, lse = args
    (q, kc, vc, bt, sl, cu_q, max_q, scale, wl, wr, softcap, alibi, k_scale, v_scale, kv_scales,
     sinks) = fargs
    _ops().cpu_varlen_paged_attention(q, kc, vc, bt, sl.contiguous(), cu_q.contiguous(), int(max_q),
                                      float(scale), int(wl), int(wr), float(softcap), alibi,
                                      float(k_scale), float(v_scale), kv_scales, out=out, lse=lse,
                                      sinks=_contiguous(sinks))


def write_kv_cache(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale, kv_scales=None):
    _ops().cpu_write_kv_cache(k, v, k_cache, v_cache, slot_mapping, float(k_scale), float(v_scale),
                              kv_scales)


def _extension_reason(op_name: str):
    """Why the C++ op cannot run here (no extension, or one built before this op existed)."""
    reason = _extension.unavailable_reason()
    if reason:
        return reason
    if not hasattr(torch.ops.polykernels_C, op_name):
        return f"C++ extension lacks polykernels_C.{op_name} (stale build: reinstall the package)"
    return None


def _common(tensors, q, v_dim, alibi_slopes, op_name, sinks=None):
    reason = _extension_reason(op_name)
    if reason:
        return reason
    if any(t.device.type != "cpu" for t in tensors):
        return "tensors are not on the CPU"
    if q.dtype not in _FLOATS:
        return f"dtype {q.dtype} not supported (float32, bfloat16, float16)"
    if v_dim != q.shape[-1]:
        return f"value head_dim {v_dim} != query head_dim {q.shape[-1]}"
    if alibi_slopes is not None and alibi_slopes.dtype != torch.float32:
        return f"alibi_slopes dtype {alibi_slopes.dtype} (float32 expected)"
    if sinks is not None and (sinks.dtype != torch.float32 or sinks.device.type != "cpu"):
        return f"sinks must be float32 on the CPU (got {sinks.dtype} on {sinks.device})"
    return None


def _attention_supports(q, k, v, causal, softmax_scale, window_left, window_right, softcap,
                        alibi_slopes, sinks=None):
    reason = _common((q, k, v), q, v.shape[-1], alibi_slopes, "cpu_attention_fwd", sinks)
    if reason is None and (k.dtype != q.dtype or v.dtype != q.dtype):
        reason = f"mixed dtypes q {q.dtype}, k {k.dtype}, v {v.dtype}"
    return reason


def _varlen_supports(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                     softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks=None):
    reason = _attention_supports(q, k, v, causal, softmax_scale, window_left, window_right,
                                 softcap, alibi_slopes, sinks)
    if reason is None and (cu_seqlens_q.dtype != torch.int32 or cu_seqlens_k.dtype != torch.int32):
        reason = "cu_seqlens must be int32"
    return reason


def _paged_supports(q, k_cache, v_cache, block_table, seq_lens, softmax_scale, window_left,
                    window_right, softcap, alibi_slopes, k_scale, v_scale, kv_scales=None,
                    sinks=None, op_name="cpu_paged_attention"):
    reason = _common(tuple(t for t in (q, k_cache, v_cache, block_table, seq_lens, kv_scales)
                           if t is not None), q, v_cache.shape[-1], alibi_slopes, op_name, sinks)
    if reason:
        return reason
    if k_cache.dtype not in (q.dtype, _FP8) or v_cache.dtype != k_cache.dtype:
        return f"cache dtype {k_cache.dtype}/{v_cache.dtype} (expected {q.dtype} or float8_e4m3fn)"
    if block_table.dtype != torch.int32 or seq_lens.dtype != torch.int32:
        return "block_table and seq_lens must be int32"
    return None


def _varlen_paged_supports(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q,
                           *rest):
    reason = _paged_supports(q, k_cache, v_cache, block_table, seq_lens, *rest,
                             op_name="cpu_varlen_paged_attention")
    if reason is None and cu_seqlens_q.device.type != "cpu":
        reason = "cu_seqlens_q is not on the CPU"
    return reason


def _write_supports(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale, kv_scales=None):
    reason = _extension_reason("cpu_write_kv_cache")
    if reason:
        return reason
    if any(t is not None and t.device.type != "cpu"
           for t in (k, v, k_cache, v_cache, slot_mapping, kv_scales)):
        return "tensors are not on the CPU"
    if k.dtype not in _FLOATS or v.dtype != k.dtype:
        return f"k/v dtype {k.dtype}/{v.dtype} not supported (float32, bfloat16, float16)"
    if k_cache.dtype not in _FLOATS + (_FP8,) or v_cache.dtype != k_cache.dtype:
        return f"cache dtype {k_cache.dtype}/{v_cache.dtype} not supported"
    if slot_mapping.dtype not in (torch.int32, torch.int64):
        return f"slot_mapping dtype {slot_mapping.dtype} (int32 or int64 expected)"
    return None


def register() -> None:
    register_impl("attention", "cpp", backends="cpu", fn=attention, supports=_attention_supports,
                  priority=100)
    register_impl("varlen_attention", "cpp", backends="cpu", fn=varlen_attention,
                  supports=_varlen_supports, priority=100)
    register_impl("paged_attention", "cpp", backends="cpu", fn=paged_attention,
                  supports=_paged_supports, priority=100)
    register_impl("varlen_paged_attention", "cpp", backends="cpu", fn=varlen_paged_attention,
                  supports=_varlen_paged_supports, priority=100)
    register_impl("paged_attention_out", "cpp", backends="cpu", fn=paged_attention_out,
                  supports=lambda *a: _paged_supports(*a[:-2]), priority=100)
    register_impl("varlen_paged_attention_out", "cpp", backends="cpu", fn=varlen_paged_attention_out,
                  supports=lambda *a: _varlen_paged_supports(*a[:-2]), priority=100)
    register_impl("write_kv_cache", "cpp", backends="cpu", fn=write_kv_cache,
                  supports=_write_supports, priority=100)
