"""matmul / linear: one GEMM kernel with a fused epilogue (bias, activation, cast) and an
optional split-K over the fp32 workspace of splitk.py.

Contract (CONTRIBUTING.md internal signatures):
  matmul(a [..., M, K], b [K, N], bias [N] | None, activation, out_dtype) -> [..., M, N]
  linear(x [..., K], weight [N, K], bias [N] | None, activation) -> [..., N]
fp16 / bf16 / fp32 inputs (a and b the same dtype), fp32 accumulation, epilogue
``act(a @ b + bias)`` computed in fp32 and cast to ``out_dtype`` (default a.dtype).
Activations: None, "relu", "gelu" (exact erf, F.gelu's default), "gelu_tanh", "silu".
fp32 inputs use IEEE fp32 products (FMA units) unless ``torch.backends.cuda.matmul.allow_tf32``
is set, in which case they use tf32 tensor cores like torch.matmul does (same switch, same
meaning; NVIDIA only, ROCm always uses ieee, see precision_for).
Any strides are accepted: linear passes ``weight.T`` as a strided view, never a copy, and
batched ``a`` whose batch dims cannot fold into M runs with a batch grid axis.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import dot_in_fp32
from . import configs
from .epilogue import ACTIVATIONS, grouped_tile, store_tile
from .splitk import reduce_splits, workspace


@triton.jit
def _gemm_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, ws_ptr,
                 M, N, K, K_SPLIT,
                 stride_az, stride_am, stride_ak, stride_bk, stride_bn,
                 stride_cz, stride_cm, stride_cn,
                 HAS_BIAS: tl.constexpr, ACT: tl.constexpr, SPLIT_K: tl.constexpr,
                 EVEN_K: tl.constexpr, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    pid_z = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Out-of-range rows/cols wrap to rows/cols < M/N instead of being masked: their results
    # are dropped at the store, and unmasked loads stay vectorised. No max_contiguous hint:
    # the wrap breaks contiguity at M/N, so claiming BLOCK-wide runs would vectorise reads
    # past the end of the tensor; Triton derives runs of 16 itself when N % 16 == 0.
    rm = offs_m % M
    rn = offs_n % N
    rk = tl.arange(0, BLOCK_K)
    k_lo = pid_k * K_SPLIT
    k_hi = tl.minimum(K, k_lo + K_SPLIT)
    a_ptrs = a_ptr + pid_z * stride_az + rm[:, None] * stride_am + (k_lo + rk)[None, :] * stride_ak
    b_ptrs = b_ptr + (k_lo + rk)[:, None] * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_lo, k_hi, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            a = tl.load(a_ptrs, mask=(k + rk)[None, :] < k_hi, other=0.0)
            b = tl.load(b_ptrs, mask=(k + rk)[:, None] < k_hi, other=0.0)
        if DOT_FP32:  # interpreter-only bf16 work-around (common.dot_in_fp32)
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    if SPLIT_K == 1:
        store_tile(acc, c_ptr + pid_z * stride_cz, bias_ptr, offs_m, offs_n, M, N,
                   stride_cm, stride_cn, HAS_BIAS, ACT)
    else:
        # Partial tile of slice pid_k into ws[pid_k, z] ([M, N] contiguous, fp32).
        Z = tl.num_programs(2)
        ws = ws_ptr + (pid_k * Z + pid_z) * M * N
        mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        tl.store(ws + offs_m[:, None] * N + offs_n[None, :], acc, mask=mask)


def precision_for(dtype: torch.dtype):
    """tl.dot input precision: None (the default) for 16-bit inputs; for fp32, "tf32" when
    torch.backends.cuda.matmul.allow_tf32 is set (like torch.matmul) else "ieee". AMD's
    Triton backend accepts only "ieee" (and bf16x3/x6) for fp32 dots, so ROCm uses ieee."""
    if dtype != torch.float32:
        return None
    if torch.backends.cuda.matmul.allow_tf32 and not torch.version.hip:
        return "tf32"
    return "ieee"


def k_slices(K: int, block_k: int, splits: int) -> tuple[int, int]:
    """(number of slices, K per slice): slices are whole K-blocks and none is empty."""
    per = max(1, triton.cdiv(triton.cdiv(max(K, 1), max(splits, 1)), block_k)) * block_k
    return max(1, triton.cdiv(K, per)), per


def _fold(a: torch.Tensor):
    """a [..., M, K] -> (3-D [Z, M', K] view, rows per batch M).

    Batch dims fold into M when the memory allows it (bigger tiles, one grid axis);
    otherwise they become the grid's batch axis (reshape copies only when even the batch
    dims cannot be merged).
    """
    M, K = a.shape[-2], a.shape[-1]
    if a.dim() == 2:
        return a[None], M
    try:
        return a.view(-1, K)[None], M
    except RuntimeError:
        return a.reshape(-1, M, K), M


def launch_gemm(a3, b, out3, bias, act: int, cfg, splits: int) -> None:
    """Run the kernel on a3 [Z, M, K] @ b [K, N] -> out3 [Z, M, N] with one config."""
    Z, M, K = a3.shape
    N = b.shape[1]
    splits, per = k_slices(K, cfg.block_k, splits)
    ws = workspace(splits, Z, M, N, a3.device) if splits > 1 else out3
    grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n), splits, Z)
    _gemm_kernel[grid](
        a3, b, out3, bias if bias is not None else out3, ws, M, N, K, per,
        a3.stride(0), a3.stride(1), a3.stride(2), b.stride(0), b.stride(1),
        out3.stride(0), out3.stride(1), out3.stride(2),
        HAS_BIAS=bias is not None and splits == 1, ACT=act if splits == 1 else 0,
        SPLIT_K=splits, EVEN_K=K % cfg.block_k == 0, PRECISION=precision_for(a3.dtype),
        DOT_FP32=dot_in_fp32(a3.dtype), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, GROUP_M=configs.GROUP_M, **cfg.launch_options())
    if splits > 1:
        reduce_splits(ws, out3, bias, act)


def matmul(a, b, bias=None, activation=None, out_dtype=None, *, split_k=None, config=None,
           out=None):
    """``act(a @ b + bias)``; see the module docstring. ``split_k`` / ``config`` override
    the heuristics and ``out`` (contiguous, right shape/dtype) receives the result; tests
    use them to reach every path under the interpreter and to poison the output."""
    if a.dim() == 1:
        return matmul(a[None], b, bias, activation, out_dtype, split_k=split_k, config=config,
                      out=None if out is None else out[None])[0]
    M, K = a.shape[-2], a.shape[-1]
    N = b.shape[1]
    if out is None:
        out = torch.empty((*a.shape[:-2], M, N), dtype=out_dtype or a.dtype, device=a.device)
    if out.numel() == 0:
        return out
    a3, _ = _fold(a)
    out3 = out.view(a3.shape[0], a3.shape[1], N)
    act = ACTIVATIONS[activation]
    Mt = a3.shape[1]

    def run(cfg):
        s = split_k if split_k is not None else configs.split_k(a.device, Mt, N, K, cfg)
        launch_gemm(a3, b, out3, bias, act, cfg, s)

    if config is None:
        cands = configs.gemm_configs(a.device, Mt, N, K, a.dtype, act)
        config = configs.choose("matmul", _gemm_kernel, (str(a.dtype), act, bias is not None)
                                + configs.shape_bucket(Mt, N, K), cands, _bench(run))
    run(config)
    return out


def linear(x, weight, bias=None, activation=None, *, split_k=None, config=None, out=None):
    """F.linear semantics, ``act(x @ weight.T + bias)``; weight [N, K] is read through a
    transposed view, never copied."""
    return matmul(x, weight.t(), bias, activation, None, split_k=split_k, config=config,
                  out=out)


def _bench(run):
    def bench(cfg):
        from triton.testing import do_bench
        return do_bench(lambda: run(cfg))
    return bench
