"""Registers the CUDA C++ paged decode kernel: impl "cuda", backend "nvidia", priority 110.

The kernel (kernels/cuda/paged_decode.cu) does less than the Triton one; supports() names
every refusal so dispatch falls back to Triton: fp16/bf16 caches in q's dtype only (no fp8),
head_dim 64/128/256 with unit stride and 16-byte aligned rows, q_len * heads_q / heads_kv
<= 16, int32 block_table (unit column stride) and seq_lens.
"""
from __future__ import annotations

import torch

OP = "polykernels_C::cuda_paged_attention"
MAX_ROWS = 16  # pk::cuda::kMaxRows
TILE = 128     # keys per iteration of the kernel (kTile)


def _row_aligned(t: torch.Tensor) -> bool:
    return (t.stride(-1) == 1 and t.data_ptr() % 16 == 0
            and all(s % 8 == 0 or n == 1 for s, n in zip(t.stride()[:-1], t.shape[:-1])))


def paged_attention_supports(q, k_cache, v_cache, block_table, seq_lens, softmax_scale,
                             window_left, window_right, softcap, alibi_slopes, k_scale, v_scale,
                             kv_scales=None):
    """None when the CUDA kernel handles these arguments, else why not. (kv_scales only
    exist for fp8 caches, which it refuses.)"""
    from .. import _extension

    reason = _extension.unavailable_reason()
    if reason:
        return reason
    if q.device.type != "cuda" or torch.version.hip:
        return "needs an NVIDIA CUDA device"
    if not torch._C._dispatch_has_kernel_for_dispatch_key(OP, "CUDA"):
        return "extension built without the CUDA kernels (CPU-only torch or no nvcc at build time)"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"q dtype {q.dtype} (float16 or bfloat16 only)"
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        return f"cache dtype {k_cache.dtype} (the CUDA kernel takes caches in q's dtype; no fp8)"
    if q.shape[-1] not in (64, 128, 256):
        return f"head_dim {q.shape[-1]} (64, 128 or 256 only)"
    rows = q.shape[1] * (q.shape[2] // k_cache.shape[2])
    if rows > MAX_ROWS:
        return f"q_len * heads_q / heads_kv = {rows} > {MAX_ROWS}"
    if not all(_row_aligned(t) for t in (q, k_cache, v_cache)):
        return "q/k_cache/v_cache rows not 16-byte aligned (unit head-dim stride, other strides multiples of 8)"
    if block_table.dtype != torch.int32 or block_table.stride(1) != 1:
        return "block_table must be int32 with a unit column stride"
    if seq_lens.dtype != torch.int32 or not seq_lens.is_contiguous():
        return "seq_lens must be contiguous int32"
    if alibi_slopes is not None and alibi_slopes.dtype != torch.float32:
        return "alibi_slopes must be float32"
    return None


def paged_attention(q, k_cache, v_cache, block_table, seq_lens, softmax_scale, window_left,
                    window_right, softcap, alibi_slopes, k_scale, v_scale, kv_scales=None, *,
                    num_splits=None):
    """Internal paged_attention signature; ``num_splits`` forces the KV split count (tests).
    k_scale / v_scale only apply to fp8 caches, which this kernel refuses."""
    if num_splits is None:
        from ..triton.paged_attention import heuristics  # pure python: no triton import

        context = block_table.shape[1] * k_cache.shape[1]
        if window_left is not None and window_left >= 0:
            context = min(context, window_left + q.shape[1])
        num_splits = heuristics.num_splits(q.shape[0], k_cache.shape[2], context,
                                           heuristics.multiprocessor_count(q.device), TILE)
    wl = int(window_left) if window_left is not None and window_left >= 0 else -1
    return torch.ops.polykernels_C.cuda_paged_attention(
        q, k_cache, v_cache, block_table, seq_lens, float(softmax_scale), wl,
        float(softcap or 0.0), alibi_slopes, int(num_splits))


def register() -> None:
    from polykernels.dispatch import register_impl

    register_impl("paged_attention", "cuda", backends=("nvidia",), fn=paged_attention,
                  supports=paged_attention_supports, priority=110)
