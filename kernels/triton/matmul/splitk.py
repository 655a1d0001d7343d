"""Split-K: fp32 partial tiles written by the GEMM kernels, summed here with the epilogue.

A skinny GEMM (M <= 64, large K) has too few output tiles to fill the GPU; cutting K into
``S`` slices multiplies the programs by S. Each slice writes its fp32 partial tile to a
workspace ``ws[S, Z, M, N]`` (contiguous); this kernel sums the slices in a fixed order
(deterministic, unlike atomics) and applies bias, activation and the output cast.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .epilogue import store_tile

BLOCK = 64


@triton.jit
def _splitk_reduce_kernel(ws_ptr, c_ptr, bias_ptr, M, N, SPLITS, stride_wk, stride_wz,
                          stride_cz, stride_cm, stride_cn,
                          HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    ptrs = ws_ptr + pid_z * stride_wz + offs_m[:, None] * N + offs_n[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in range(0, SPLITS):
        acc += tl.load(ptrs + s * stride_wk, mask=mask, other=0.0)
    store_tile(acc, c_ptr + pid_z * stride_cz, bias_ptr, offs_m, offs_n, M, N,
               stride_cm, stride_cn, HAS_BIAS, ACT)


def workspace(splits: int, Z: int, M: int, N: int, device) -> torch.Tensor:
    """fp32 partials ``[splits, Z, M, N]``; every element is written by the GEMM kernel."""
    return torch.empty((splits, Z, M, N), dtype=torch.float32, device=device)


def reduce_splits(ws: torch.Tensor, out3: torch.Tensor, bias, act: int) -> None:
    """Sum ``ws[S, Z, M, N]`` over S into ``out3[Z, M, N]`` (any strides) with the epilogue."""
    S, Z, M, N = ws.shape
    grid = (triton.cdiv(M, BLOCK), triton.cdiv(N, BLOCK), Z)
    _splitk_reduce_kernel[grid](
        ws, out3, bias if bias is not None else ws, M, N, S, ws.stride(0), ws.stride(1),
        out3.stride(0), out3.stride(1), out3.stride(2),
        HAS_BIAS=bias is not None, ACT=act, BLOCK_M=BLOCK, BLOCK_N=BLOCK, num_warps=4)
