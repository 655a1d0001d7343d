"""Launch configs of the paged decode kernels on AMD GPUs (CDNA2/3: gfx90a, gfx942).

64-wide wavefronts: fewer, wider warps than on NVIDIA; single-stage software pipelining
(num_stages > 1 only costs LDS on these targets for gathered loads); 16x16 MFMA tiles.
"""
from __future__ import annotations

from ..config import KernelConfig

_AMD_EXTRA = (("waves_per_eu", 2), ("matrix_instr_nonkdim", 16))


def decode_config(block_m: int, block_d: int, cache_bytes: int) -> KernelConfig:
    block_n = 64 if block_d * max(block_m, 16) <= 64 * 128 else 32
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
           for bn, w in ((32, 4), (64, 8), (128, 8))]
    return [base] + [c for c in alt if c != base]
