"""Launch configs of the paged decode kernels on NVIDIA GPUs.

Decode is bound by reading the KV cache, so the tile is chosen for memory parallelism:
BLOCK_N keys per iteration, enough warps to keep loads in flight, 2-3 stages of pipelining
for the gathered K/V tiles. The GQA-packed row count (block_m) is fixed by the shapes.
"""
from __future__ import annotations

from ..config import KernelConfig


def decode_config(block_m: int, block_d: int, cache_bytes: int) -> KernelConfig:
    """Config for rows ``block_m`` (>= 16), padded head dim ``block_d``, cache element size."""
    # 8 warps: more gathered K/V loads in flight per program, and register headroom. With 4
    # warps ptxas spilled 8-16 bytes on sm90 (fp16/fp8 cache, D 128, 16 rows; Triton 3.9)
    # although under 170 registers; 8 warps compile spill-free at ~100 (test_codegen_paged).
    # The launcher caps block_m * block_d at 4096, so one tile size fits every head dim.
    return KernelConfig(block_m=block_m, block_n=64, block_k=block_d, num_warps=8, num_stages=2)


def reduce_config() -> KernelConfig:
    return KernelConfig(num_warps=4, num_stages=1)


def write_config() -> KernelConfig:
    return KernelConfig(num_warps=4, num_stages=1)


def candidates(block_m: int, block_d: int, cache_bytes: int) -> list[KernelConfig]:
    """Autotune candidates, the default first (autotune.pick_config uses it alone when it
    cannot benchmark)."""
    base = decode_config(block_m, block_d, cache_bytes)
    alt = [KernelConfig(block_m=block_m, block_n=bn, block_k=block_d, num_warps=w, num_stages=st)
           for bn, w, st in ((32, 4, 2), (64, 4, 3), (128, 8, 2), (32, 8, 3))]
    return [base] + [c for c in alt if c != base]
