"""grouped_matmul: the MoE expert GEMM, every expert in one launch.

Contract: x [T, K] with rows sorted by expert, weights [E, K, N], group_sizes [E] (int32 or
int64, summing to T; empty groups allowed): rows [off_e, off_e + size_e) of the output are
x[those rows] @ weights[e]; out [T, N] in x.dtype (fp16, bf16 or fp32), fp32 accumulation.
Any strides (e.g. weights stored [E, N, K] and passed as ``.transpose(1, 2)``).

The group sizes stay on the device (no host sync): the grid is sized for the worst case,
sum_e cdiv(size_e, BM) <= cdiv(T, BM) + E row-tiles, and each program finds its expert by
walking the E sizes; programs past the last tile exit at once.

Invalid sizes (any negative, or a sum other than T) are never trusted to address memory
(issue 14): the same walk detects them, and then every output row is written NaN, with all
reads kept inside x and weights. No host sync, no extra launch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import dot_in_fp32
from . import configs
from .epilogue import grouped_tile, store_tile
from .gemm import precision_for


@triton.jit
def _grouped_gemm_kernel(x_ptr, w_ptr, c_ptr, sizes_ptr, T, N, K, E, TILES_M, stride_s,
                         stride_xt, stride_xk, stride_we, stride_wk, stride_wn,
                         stride_ct, stride_cn,
                         EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
                         DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), TILES_M * BLOCK_M, N, BLOCK_M, BLOCK_N,
                                GROUP_M)
    # Which expert owns global row-tile pid_m, and which rows that tile covers. The same walk
    # checks the sizes (never trusted to address memory, issue 14): each in [0, T] and their
    # sum == T. The sum is taken in int64 over sizes clamped to [0, T], so it cannot wrap
    # (E * T < 2**63) even for int64 sizes; the walk itself uses sizes also clamped to the
    # rows left, so its row ranges stay inside [0, T) whatever the sizes are.
    expert = -1
    row_lo = 0
    row_hi = 0
    tiles = 0
    rows = 0
    total = tl.zeros((), dtype=tl.int64)
    bad = False
    for e in range(0, E):
        size64 = tl.load(sizes_ptr + e * stride_s).to(tl.int64)
        bad = bad | (size64 < 0) | (size64 > T)
        size64 = tl.minimum(tl.maximum(size64, 0), T)
        total += size64
        size = tl.minimum(size64, T - rows).to(tl.int32)
        n_tiles = tl.cdiv(size, BLOCK_M)
        hit = (pid_m >= tiles) & (pid_m < tiles + n_tiles)
        expert = tl.where(hit, e, expert)
        row_lo = tl.where(hit, rows + (pid_m - tiles) * BLOCK_M, row_lo)
        row_hi = tl.where(hit, rows + size, row_hi)
        tiles += n_tiles
        rows += size
    bad = bad | (total != T)
    # Invalid sizes: no row has a defined expert, so every row of the output is NaN.
    # Programs then cover the plain partition of [0, T) into row-tiles (the grid has at least
    # cdiv(T, BLOCK_M) of them) and run expert 0 on in-bounds rows; the result is replaced
    # by NaN before the store.
    expert = tl.where(bad, tl.where(pid_m < tl.cdiv(T, BLOCK_M), 0, -1), expert)
    row_lo = tl.where(bad, pid_m * BLOCK_M, row_lo)
    row_hi = tl.where(bad, T, row_hi)
    if expert >= 0:
        offs_m = row_lo + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        # Rows past this expert's group read the tile's first row (results not stored).
        rm = tl.where(offs_m < row_hi, offs_m, row_lo)
        rn = offs_n % N
        rk = tl.arange(0, BLOCK_K)
        x_ptrs = x_ptr + rm[:, None] * stride_xt + rk[None, :] * stride_xk
        w_ptrs = (w_ptr + expert.to(tl.int64) * stride_we + rk[:, None] * stride_wk
                  + rn[None, :] * stride_wn)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            if EVEN_K:
                a = tl.load(x_ptrs)
                b = tl.load(w_ptrs)
            else:
                a = tl.load(x_ptrs, mask=(k + rk)[None, :] < K, other=0.0)
                b = tl.load(w_ptrs, mask=(k + rk)[:, None] < K, other=0.0)
            if DOT_FP32:  # interpreter-only bf16 work-around (common.dot_in_fp32)
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk
        acc = tl.where(bad, float("nan"), acc)
        store_tile(acc, c_ptr, c_ptr, offs_m, offs_n, row_hi, N, stride_ct, stride_cn,
                   False, 0)


def launch_grouped(x, weights, sizes, out, cfg) -> None:
    T, K = x.shape
    E, _, N = weights.shape
    tiles_m = triton.cdiv(T, cfg.block_m) + min(E, T)
    grid = (tiles_m * triton.cdiv(N, cfg.block_n),)
    _grouped_gemm_kernel[grid](
        x, weights, out, sizes, T, N, K, E, tiles_m, sizes.stride(0),
        x.stride(0), x.stride(1), weights.stride(0), weights.stride(1), weights.stride(2),
        out.stride(0), out.stride(1),
        EVEN_K=K % cfg.block_k == 0, PRECISION=precision_for(x.dtype),
        DOT_FP32=dot_in_fp32(x.dtype), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, GROUP_M=configs.GROUP_M, **cfg.launch_options())


def grouped_matmul(x, weights, group_sizes, *, config=None, out=None):
    """See the module docstring; ``out`` (optional, [T, N] in x.dtype) receives the result."""
    T, K = x.shape
    E, _, N = weights.shape
    if out is None:
        out = torch.empty((T, N), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    if E == 0:  # no sizes sum to 0 != T: every row's expert is undefined (issue 14)
        return out.fill_(float("nan"))

    def run(cfg):
        launch_grouped(x, weights, group_sizes, out, cfg)

    if config is None:
        cands = configs.grouped_configs(x.device, T, N, K, E, x.dtype)
        key = (str(x.dtype), E) + configs.shape_bucket(T, N, K)
        config = configs.choose("grouped_matmul", _grouped_gemm_kernel, key, cands,
                                lambda cfg: _bench(run, cfg))
    run(config)
    return out


def _bench(run, cfg):
    from triton.testing import do_bench
    return do_bench(lambda: run(cfg))
