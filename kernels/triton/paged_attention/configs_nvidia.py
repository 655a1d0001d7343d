"""Launch configs of the paged decode kernels on NVIDIA GPUs.

Decode is bound by reading the KV cache, so the tile is chosen for memory parallelism:
BLOCK_N keys per iteration, enough warps to keep loads in flight, 2-3 stages of pipelining
for the gathered K/V tiles. The GQA-packed row count (block_m) is fixed by the shapes.
"""
from __future__ import annotations

from ..config import KernelConfig


def decode_config(block_m: int, block_d: int, cache_bytes: int) -> KernelConfig:
    """Config for rows ``block_m`` (>= 16), padded head dim ``block_d``, cache element size."""
    # Large head dims with a big row tile hold acc [block_m, block_d] fp32 plus K/V tiles in
    # registers: shrink the key tile so nothing spills (checked by tests/test_codegen_paged.py).
    block_n = 64 if block_d * max(block_m, 16) <= 64 * 128 else 32
    num_warps = 4 if block_d <= 128 else 8
    return KernelConfig(block_m=block_m, block_n=block_n, block_k=block_d,
                        num_warps=num_warps, num_stages=3 if cache_bytes == 1 else 2)


def reduce_config() -> KernelConfig:
    return KernelConfig(num_warps=4, num_stages=1)


def write_config() -> KernelConfig:
    return KernelConfig(num_warps=4, num_stages=1)


def candidates(block_m: int, block_d: int, cache_bytes: int) -> list[KernelConfig]:
    """Autotune candidates, the default first (autotune.pick_config uses it alone when it
    cannot benchmark)."""
    base = decode_config(block_m, block_d, cache_bytes)
    alt = [KernelConfig(block_m=block_m, block_n=bn, block_k=block_d, num_warps=w, num_stages=st)
           for bn, w, st in ((32, 4, 2), (64, 4, 3), (128, 8, 2), (64, 8, 2))]
    return [base] + [c for c in alt if c != base]
