"""quantized_linear: weight-only int4 / int8 GEMM (and GEMV for decode) dequantising the
weight tile in registers, right before the matrix instruction.

Contract: x [..., K] (fp16, bf16 or fp32) @ W.T (+ bias [N]) -> [..., N] in x.dtype, where
W [N, K] is given in the format of ``polykernels.reference.quant``: qweight uint8 [N, K]
(bits 8) or [N, K / 2] (bits 4, element 2j in the low nibble, 2j+1 in the high one);
scales [N, G] and zeros [N, G] | None (None means z = 2**(bits-1)), G = K / group_size
(group_size -1: one group per row); W[n, k] = (u[n, k] - z[n, k // gs]) * s[n, k // gs].
The dequantised tile is computed in fp32, rounded to x.dtype (what a torch
"dequantise then matmul" in x.dtype does) and multiplied with fp32 accumulation.

M <= 16 runs the GEMV form: BLOCK_M 16 and split-K over the fp32 workspace so a decode
step streams the packed weight with every SM busy; larger M is a plain tiled GEMM.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import dot_in_fp32
from . import configs
from .epilogue import grouped_tile, store_tile
from .gemm import k_slices, precision_for
from .splitk import reduce_splits, workspace


@triton.jit
def _weight_only_kernel(x_ptr, q_ptr, s_ptr, z_ptr, c_ptr, bias_ptr, ws_ptr,
                        M, N, K, K_SPLIT, GS,
                        stride_xm, stride_xk, stride_qn, stride_qk, stride_sn, stride_sg,
                        stride_zn, stride_zg, stride_cm, stride_cn,
                        BITS: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
                        SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr, TILE_SCALE: tl.constexpr,
                        PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        GROUP_M: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = offs_m % M
    rn = offs_n % N
    rk = tl.arange(0, BLOCK_K)
    k_lo = pid_k * K_SPLIT
    k_hi = tl.minimum(K, k_lo + K_SPLIT)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_lo, k_hi, BLOCK_K):
        offs_k = k + rk
        kmask = offs_k < k_hi
        x_ptrs = x_ptr + rm[:, None] * stride_xm + offs_k[None, :] * stride_xk
        if EVEN_K:
            x = tl.load(x_ptrs)
        else:
            x = tl.load(x_ptrs, mask=kmask[None, :], other=0.0)
        if BITS == 4:
            # Byte j of the K-block holds k = 2j (low nibble) and 2j+1 (high); k is even
            # here (blocks start at multiples of BLOCK_K) and so is K. Load the packed
            # [BLOCK_K/2, BLOCK_N] bytes once and interleave the nibbles back to k order.
            offs_h = k // 2 + tl.arange(0, BLOCK_K // 2)
            q_ptrs = q_ptr + rn[None, :] * stride_qn + offs_h[:, None] * stride_qk
            if EVEN_K:
                p = tl.load(q_ptrs)
            else:
                p = tl.load(q_ptrs, mask=(2 * offs_h < k_hi)[:, None], other=0)
            q = tl.join(p & 0xF, p >> 4)  # [BLOCK_K/2, BLOCK_N, 2]: (j, n, k - 2j)
            q = tl.reshape(tl.permute(q, (0, 2, 1)), (BLOCK_K, BLOCK_N))
        else:
            q_ptrs = q_ptr + rn[None, :] * stride_qn + offs_k[:, None] * stride_qk
            if EVEN_K:
                q = tl.load(q_ptrs)
            else:
                q = tl.load(q_ptrs, mask=kmask[:, None], other=0)
        u = q.to(tl.float32)  # [BLOCK_K, BLOCK_N] codes
        if TILE_SCALE:
            # BLOCK_K divides the group size: the whole K-block shares one group.
            g = k // GS
            s = tl.load(s_ptr + rn * stride_sn + g * stride_sg).to(tl.float32)[None, :]
            if HAS_ZEROS:
                z = tl.load(z_ptr + rn * stride_zn + g * stride_zg).to(tl.float32)[None, :]
        else:
            g = tl.where(kmask, offs_k // GS, 0)
            s = tl.load(s_ptr + rn[None, :] * stride_sn + g[:, None] * stride_sg).to(tl.float32)
            if HAS_ZEROS:
                z = tl.load(z_ptr + rn[None, :] * stride_zn + g[:, None] * stride_zg).to(tl.float32)
        if not HAS_ZEROS:
            z = 2.0 ** (BITS - 1)
        w = ((u - z) * s).to(x_ptr.dtype.element_ty)
        if DOT_FP32:  # interpreter-only bf16 work-around (common.dot_in_fp32)
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
    if SPLIT_K == 1:
        store_tile(acc, c_ptr, bias_ptr, offs_m, offs_n, M, N, stride_cm, stride_cn,
                   HAS_BIAS, 0)
    else:
        ws = ws_ptr + pid_k * M * N
        mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        tl.store(ws + offs_m[:, None] * N + offs_n[None, :], acc, mask=mask)


def _block_k(block_k: int, gs: int) -> tuple[int, bool]:
    """(BLOCK_K, TILE_SCALE): shrink BLOCK_K to divide the group size when it can stay a
    legal dot size (>= 16); otherwise keep it and gather scales per k."""
    if gs % block_k == 0:
        return block_k, True
    pow2 = gs & -gs  # largest power of two dividing gs
    if 16 <= pow2 < block_k:
        return pow2, True
    return block_k, False


def launch_weight_only(x2, qweight, scales, zeros, bits, bias, out2, cfg, splits) -> None:
    M, K = x2.shape
    N = qweight.shape[0]
    gs = K // scales.shape[1]
    bk, tile_scale = _block_k(cfg.block_k, gs)
    splits, per = k_slices(K, bk, splits)
    ws = workspace(splits, 1, M, N, x2.device) if splits > 1 else out2
    zs = zeros if zeros is not None else scales
    grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n), splits)
    _weight_only_kernel[grid](
        x2, qweight, scales, zs, out2, bias if bias is not None else out2, ws,
        M, N, K, per, gs,
        x2.stride(0), x2.stride(1), qweight.stride(0), qweight.stride(1),
        scales.stride(0), scales.stride(1), zs.stride(0), zs.stride(1),
        out2.stride(0), out2.stride(1),
        BITS=bits, HAS_ZEROS=zeros is not None, HAS_BIAS=bias is not None and splits == 1,
        SPLIT_K=splits, EVEN_K=K % bk == 0, TILE_SCALE=tile_scale,
        PRECISION=precision_for(x2.dtype), DOT_FP32=dot_in_fp32(x2.dtype),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=bk, GROUP_M=configs.GROUP_M,
        **cfg.launch_options())
    if splits > 1:
        reduce_splits(ws, out2[None], bias, 0)


def quantized_linear(x, qweight, scales, zeros, bits, group_size, bias=None, *,
                     split_k=None, config=None, out=None):
    """See the module docstring. ``group_size`` is implied by scales.shape[1] (it is
    validated by the public op); ``split_k`` / ``config`` override the heuristics; ``out``
    (optional, contiguous [..., N] in x.dtype) receives the result."""
    K = x.shape[-1]
    N = qweight.shape[0]
    if out is None:
        out = torch.empty((*x.shape[:-1], N), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    x2 = x.reshape(-1, K)
    out2 = out.view(-1, N)
    M = x2.shape[0]
    gs = K // scales.shape[1]

    def run(cfg):
        s = split_k if split_k is not None else \
            configs.split_k(x.device, M, N, K, cfg, max_m=64)
        launch_weight_only(x2, qweight, scales, zeros, bits, bias, out2, cfg, s)

    if config is None:
        cands = configs.weight_only_configs(x.device, M, N, K, bits, gs)
        key = (str(x.dtype), bits, gs, zeros is not None) + configs.shape_bucket(M, N, K)
        config = configs.choose("quantized_linear", _weight_only_kernel, key, cands,
                                lambda cfg: _bench(run, cfg))
    run(config)
    return out


def _bench(run, cfg):
    from triton.testing import do_bench
    return do_bench(lambda: run(cfg))
