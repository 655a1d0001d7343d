"""Launch configs of the paged decode kernels on AMD GPUs (CDNA2/3: gfx90a, gfx942).

64-wide wavefronts; single-stage software pipelining
(num_stages > 1 only costs LDS on these targets for gathered loads); 16x16 MFMA tiles;
the compiler picks the occupancy (no waves_per_eu hint).
"""
from __future__ import annotations

from ..config import KernelConfig

_AMD_EXTRA = (("matrix_instr_nonkdim", 16),)


def decode_config(block_m: int, block_d: int, cache_bytes: int) -> KernelConfig:
    # 32-key tiles: with 64 (and waves_per_eu=2) gfx90a/gfx942 spilled 9-136 VGPRs for every
    # head dim 64-256 (tests/test_codegen_paged.py, Triton 3.9); 32 compiles spill-free.
    block_n = 32
    return KernelConfig(block_m=block_m, block_n=block_n, block_k=block_d,
                        num_warps=4, num_stages=1, extra=_AMD_EXTRA)


def reduce_config() -> KernelConfig:
    return KernelConfig(num_warps=4, num_stages=1)


def write_config() -> KernelConfig:
    return KernelConfig(num_warps=4, num_stages=1)


def candidates(block_m: int, block_d: int, cache_bytes: int) -> list[KernelConfig]:
    base = decode_config(block_m, block_d, cache_bytes)
    alt = [KernelConfig(block_m=block_m, block_n=bn, block_k=block_d, num_warps=w, num_stages=1,
                        extra=_AMD_EXTRA)
           for bn, w in ((16, 4), (32, 8), (64, 4))]
    return [base] + [c for c in alt if c != base]
