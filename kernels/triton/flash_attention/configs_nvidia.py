"""Launch configs for NVIDIA GPUs (sm80 / sm90). The first candidate is the default.

``features`` (softcap, ALiBi or varlen on) does not change the choice on NVIDIA: the
defaults stay spill-free with them (checked on sm90 by the codegen test). Chosen so that every
config compiles without register spills on sm80 and sm90
(tests/test_codegen_attention.py checks the defaults); the autotuner, when present, times the
other candidates once per shape bucket on the real device.
"""
from __future__ import annotations

import torch

from ..config import KernelConfig


def _c(bm, bn, warps, stages):
    return KernelConfig(block_m=bm, block_n=bn, num_warps=warps, num_stages=stages)


def fwd_configs(head_dim: int, dtype: torch.dtype, capability: tuple[int, int],
                features: bool = False, masked: bool = False) -> list[KernelConfig]:
    """``masked``: causal or a window, which compiles the hidden-NaN-V guard (more registers
    live in the key loop)."""
    if dtype == torch.float32:  # fp32 dots run on FMA units ("ieee"): keep tiles small
        # (measured spill-free: 64x32 at D128 on sm90, 32x16 at D256 on sm80; masked, 64x32
        # with 2 stages spills 128 bytes on sm90, 1 stage none)
        if head_dim <= 128:
            return [_c(64, 32, 4, 1), _c(32, 32, 4, 2)] if masked else [_c(64, 32, 4, 2), _c(32, 32, 4, 2)]
        return [_c(32, 16, 4, 1)]
    if head_dim <= 64:  # 128x64 with 4 warps spills (32 bytes sm80, 8 sm90)
        return [_c(128, 64, 8, 3), _c(64, 64, 4, 3), _c(128, 128, 8, 3)]
    if head_dim <= 128:
        # 128x64 with 4 warps spills 128 bytes on sm80 (255 registers); 8 warps: 193, none.
        return [_c(128, 64, 8, 3), _c(128, 128, 8, 3), _c(64, 64, 4, 3)]
    # head_dim 256: 4 warps spill on both (64x64: 136 bytes sm80, 56 sm90; 64x32: 80 sm80).
    # Masked on sm80: 64x64 spills 56-120 bytes, 64x32 none.
    if masked and capability[0] < 9:
        return [_c(64, 32, 8, 2), _c(64, 64, 8, 2)]
    return [_c(64, 64, 8, 2), _c(64, 32, 8, 2)]


def bwd_dkdv_configs(head_dim: int, dtype: torch.dtype, capability: tuple[int, int],
                     features: bool = False) -> list[KernelConfig]:
    """block_n = keys per program (dk/dv accumulate in registers), block_m = queries per step."""
    if dtype == torch.float32:  # 32x32 spills at D128 on sm90 (~1 KB with 4 warps; 304 bytes
        # with 8 warps on Triton 3.6)
        return [_c(16, 32, 4, 1), _c(32, 32, 8, 1)] if head_dim <= 128 else [_c(16, 32, 8, 1), _c(16, 16, 8, 1)]
    if head_dim <= 64:
        if capability[0] >= 9:
            return [_c(32, 64, 4, 2), _c(32, 32, 4, 2), _c(32, 128, 8, 2)]
        # sm80: 32x64 needs 255 registers and spills 24 bytes with 2 stages (4 or 8 warps).
        return [_c(32, 32, 4, 2), _c(32, 64, 4, 1), _c(16, 64, 4, 2)]
    if head_dim <= 128:
        # 4 warps spill on sm80 (and on sm90 with softcap/ALiBi); 8 warps do not. One stage:
        # with two, Triton 3.6 spills 16 bytes on sm90 with softcap/ALiBi/varlen.
        return [_c(32, 64, 8, 1), _c(32, 64, 8, 2), _c(64, 64, 8, 2)]
    # head_dim 256: 32 keys per program, so sm90 uses mma.sync rather than wgmma (which needs
    # 64 rows per warpgroup); 32x64 would get wgmma but spills 176 bytes. 4 warps spill 48.
    return [_c(32, 32, 8, 1), _c(16, 32, 4, 1)]


def bwd_dq_configs(head_dim: int, dtype: torch.dtype, capability: tuple[int, int],
                   features: bool = False) -> list[KernelConfig]:
    """block_m = queries per program (dq accumulates in registers), block_n = keys per step."""
    if dtype == torch.float32:
        # 32x32 spills 496 bytes at D128 on sm90 (4 warps; 8 with 8 warps)
        return [_c(32, 16, 4, 1), _c(32, 32, 4, 1)] if head_dim <= 128 else [_c(16, 16, 4, 1)]
    if head_dim <= 64:
        return [_c(64, 32, 4, 2), _c(64, 64, 4, 2), _c(128, 32, 8, 2)]
    if head_dim <= 128:
        return [_c(64, 32, 4, 2), _c(64, 64, 8, 2), _c(128, 32, 8, 2)]
    # head_dim 256: 64 query rows so sm90 gets wgmma; no spills on sm80/sm90.
    return [_c(64, 32, 8, 1), _c(32, 32, 4, 1)]
