"""NVIDIA (sm80 / sm90 and later) launch configs for the matmul family.

Each function returns ``KernelConfig`` candidates, best guess first: the first one is
used when autotuning is off and is the one the codegen tests compile (no spills, mma /
wgmma present). Shared memory per stage is (BM + BN) * BK * bytes; sm80 allows 164 KiB and
sm90 228 KiB, consumer sm86/sm89 only ~100 KiB, hence the smaller sets there.
"""
from __future__ import annotations

import torch

from ..config import KernelConfig as C


def _big_smem(arch) -> bool:
    return arch in ((8, 0), (9, 0), (10, 0))


def gemm(arch, M, N, K, dtype, act=0):
    """``act`` is the epilogue's activation code: exact GELU (2, erf) needs registers that
    the 128x256 tiles do not have (measured: 160-184 spill bytes on sm80/sm90)."""
    if dtype == torch.float32:
        # ieee fp32 runs on FMA units, tf32 on mma; BK 32 keeps both inside shared memory.
        return [C(64, 64, 32, 4, 3), C(128, 64, 32, 4, 3), C(64, 128, 32, 4, 3)]
    if M <= 64:
        # Skinny: small BM so few rows are wasted; split-K adds parallelism over K.
        return [C(64, 64, 128, 4, 4), C(32, 64, 128, 4, 4), C(64, 128, 64, 4, 4),
                C(16, 128, 128, 4, 4)]
    if arch >= (9, 0):
        if act == 2:
            return [C(128, 128, 64, 8, 4), C(128, 128, 64, 4, 4), C(64, 128, 64, 4, 4)]
        return [C(128, 256, 64, 8, 3), C(128, 128, 64, 8, 4), C(128, 128, 64, 4, 4),
                C(64, 128, 64, 4, 4)]
    if _big_smem(arch):
        big = [] if act == 2 else [C(128, 256, 32, 8, 3)]
        return [C(128, 128, 32, 8, 4), *big, C(128, 128, 64, 8, 3), C(64, 128, 32, 4, 4)]
    return [C(128, 64, 32, 4, 4), C(64, 128, 32, 4, 4), C(64, 64, 32, 4, 4)]


def scaled(arch, M, N, K, dtype):
    # 1-byte operands: BK 128 matches the fp8/int8 mma K of 32 with 4 steps per stage.
    if M <= 64:
        return [C(64, 64, 128, 4, 4), C(64, 128, 128, 4, 4), C(32, 64, 256, 4, 3)]
    if arch >= (9, 0):
        return [C(128, 256, 128, 8, 3), C(128, 128, 128, 8, 4), C(128, 128, 128, 4, 4),
                C(64, 128, 128, 4, 4)]
    # 128x128 with 4 warps spills heavily for int8 on sm80 (3.5 KB measured); 8 warps not.
    return [C(128, 128, 64, 8, 4), C(128, 128, 128, 8, 3), C(64, 128, 128, 4, 4)]


def weight_only(arch, M, N, K, bits, group_size):
    # BK must divide group_size (one scale row per K-block); the launcher shrinks it if not.
    if M <= 16:
        # GEMV: memory bound on the packed weight; wide BK per program, split-K for SMs.
        return [C(16, 64, 128, 4, 4), C(16, 128, 128, 4, 3), C(16, 32, 128, 4, 4),
                C(16, 64, 64, 4, 4)]
    if M <= 64:
        return [C(64, 64, 64, 4, 4), C(32, 128, 64, 4, 4), C(64, 128, 64, 4, 3)]
    return [C(128, 128, 64, 8, 3), C(128, 64, 64, 4, 4), C(64, 128, 64, 4, 4)]


def grouped(arch, T, N, K, E, dtype):
    if dtype == torch.float32:
        return [C(64, 64, 32, 4, 3), C(64, 128, 32, 4, 3)]
    if T <= 64 * E:
        # Few rows per expert on average (decode): short M tiles waste less.
        return [C(64, 128, 64, 4, 4), C(64, 64, 64, 4, 4), C(32, 128, 64, 4, 4)]
    if arch >= (9, 0):
        return [C(128, 256, 64, 8, 3), C(128, 128, 64, 8, 4), C(128, 128, 64, 4, 4)]
    return [C(128, 128, 32, 4, 4), C(64, 128, 32, 4, 4)]
