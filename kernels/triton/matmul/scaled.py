"""scaled_matmul: fp8 (e4m3fn, or e4m3fnuz for AMD gfx942) or int8 GEMM with dequantising
scales fused into the epilogue.

Contract: a [M, K] @ b [K, N], both float8_e4m3fn, both float8_e4m3fnuz or both int8;
scale_a fp32 with numel 1 (per tensor) or M (per row: [M] or [M, 1]); scale_b fp32 with
numel 1 or N (per column: [N] or [1, N]); bias [N] | None (any float dtype);
``out = (a @ b) * scale_a[:, None] * scale_b[None, :] + bias`` in out_dtype (bf16, fp16 or
fp32). fp8 products accumulate in fp32; int8 products accumulate exactly in int32 and are
converted to fp32 once, before the scales. Any strides.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from .epilogue import grouped_tile, store_tile

FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)


@triton.jit
def _scaled_gemm_kernel(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, M, N, K,
                        stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                        ROW_SCALE_A: tl.constexpr, COL_SCALE_B: tl.constexpr,
                        HAS_BIAS: tl.constexpr, IS_INT: tl.constexpr, EVEN_K: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        GROUP_M: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = offs_m % M
    rn = offs_n % N
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + rk[:, None] * stride_bk + rn[None, :] * stride_bn
    if IS_INT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        elif IS_INT:
            a = tl.load(a_ptrs, mask=(k + rk)[None, :] < K, other=0)
            b = tl.load(b_ptrs, mask=(k + rk)[:, None] < K, other=0)
        else:
            # fp8 masked loads need a float `other` (an int 0 fails to compile; docs/testing.md).
            a = tl.load(a_ptrs, mask=(k + rk)[None, :] < K, other=0.0)
            b = tl.load(b_ptrs, mask=(k + rk)[:, None] < K, other=0.0)
        if IS_INT:
            # Triton 3.6 insists on out_dtype matching an int32 accumulator.
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    acc = acc.to(tl.float32)
    if ROW_SCALE_A:
        acc = acc * tl.load(sa_ptr + rm)[:, None]
    else:
        acc = acc * tl.load(sa_ptr)
    if COL_SCALE_B:
        acc = acc * tl.load(sb_ptr + rn)[None, :]
    else:
        acc = acc * tl.load(sb_ptr)
    store_tile(acc, c_ptr, bias_ptr, offs_m, offs_n, M, N, stride_cm, stride_cn, HAS_BIAS, 0)


def launch_scaled(a, b, out, scale_a, scale_b, bias, cfg) -> None:
    M, K = a.shape
    N = b.shape[1]
    sa = scale_a.reshape(-1).to(torch.float32)
    sb = scale_b.reshape(-1).to(torch.float32)
    grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n),)
    _scaled_gemm_kernel[grid](
        a, b, out, sa, sb, bias if bias is not None else out, M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        ROW_SCALE_A=sa.numel() != 1, COL_SCALE_B=sb.numel() != 1, HAS_BIAS=bias is not None,
        IS_INT=a.dtype == torch.int8, EVEN_K=K % cfg.block_k == 0,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        GROUP_M=configs.GROUP_M, **cfg.launch_options())


def scaled_matmul(a, b, scale_a, scale_b, bias=None, out_dtype=torch.bfloat16, *, config=None,
                  out=None):
    """See the module docstring; ``out`` (optional, [M, N] out_dtype) receives the result."""
    M, K = a.shape
    N = b.shape[1]
    if out is None:
        out = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if out.numel() == 0:
        return out
    if K == 0:  # no products: only the bias survives
        out.copy_(bias.expand(M, N) if bias is not None else torch.zeros_like(out))
        return out

    def run(cfg):
        launch_scaled(a, b, out, scale_a, scale_b, bias, cfg)

    if config is None:
        cands = configs.scaled_configs(a.device, M, N, K, a.dtype)
        key = (str(a.dtype), scale_a.numel() != 1, scale_b.numel() != 1) + \
            configs.shape_bucket(M, N, K)
        config = configs.choose("scaled_matmul", _scaled_gemm_kernel, key, cands,
                                lambda cfg: _bench(run, cfg))
    run(config)
    return out


def _bench(run, cfg):
    from triton.testing import do_bench
    return do_bench(lambda: run(cfg))
