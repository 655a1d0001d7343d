"""Launch configs for AMD Instinct GPUs (gfx90a / gfx942, wave64). The first candidate is the default.

AMD-specific knobs ride in KernelConfig.extra: ``waves_per_eu`` bounds occupancy (so the
register allocator keeps to the budget) and a single pipeline stage suits the AMD backend's
software pipelining of flash-attention loops. Measured with the AOT compiler (Triton 3.9):
128x64 forward tiles and 32x64 dk/dv tiles spill (SGPRs first, then VGPRs at head_dim 128)
on gfx90a and gfx942; the defaults below compile without spills.
"""
from __future__ import annotations

import torch

from ..config import KernelConfig


def _c(bm, bn, warps, stages=1, waves=2):
    return KernelConfig(block_m=bm, block_n=bn, num_warps=warps, num_stages=stages,
                        extra=(("waves_per_eu", waves),))


def fwd_configs(head_dim: int, dtype: torch.dtype, arch: str, features: bool = False,
                masked: bool = False) -> list[KernelConfig]:
    """``features``: softcap, ALiBi or varlen is on (more scalar arguments and live values);
    ``masked`` (causal / window: the hidden-NaN-V guard) compiles spill-free with the same."""
    if dtype == torch.float32:  # spill-free on gfx942 (fp32 MFMA tiles are register-hungry)
        return [_c(64, 32, 4), _c(32, 32, 4)] if head_dim <= 128 else [_c(32, 16, 4)]
    if head_dim <= 128:
        if features:  # 128x32 spills 20-29 registers with softcap/ALiBi/varlen; 128x16 none
            return [_c(128, 16, 4), _c(128, 32, 4)]
        return [_c(128, 32, 4), _c(128, 64, 4, waves=1), _c(64, 32, 4)]
    return [_c(64, 16, 4), _c(32, 32, 4)]


def bwd_dkdv_configs(head_dim: int, dtype: torch.dtype, arch: str, features: bool = False) -> list[KernelConfig]:
    if dtype == torch.float32:  # 32x32 spills ~1.2 KB at D128 on gfx942
        return [_c(16, 16, 4), _c(16, 32, 4, waves=1)] if head_dim <= 128 else [_c(16, 16, 4, waves=1)]
    if head_dim <= 128:
        return [_c(16, 64, 4), _c(32, 32, 4), _c(32, 64, 8, waves=1)]
    return [_c(16, 32, 8), _c(16, 16, 4)]  # 16x32 with 4 warps spills 9 on gfx942


def bwd_dq_configs(head_dim: int, dtype: torch.dtype, arch: str, features: bool = False) -> list[KernelConfig]:
    if dtype == torch.float32:
        return [_c(16, 16, 4)] if head_dim <= 128 else [_c(16, 16, 4, waves=1)]
    if head_dim <= 128:
        if features:  # 64x32 spills 14-18 with softcap/ALiBi/varlen; 64x16 none
            return [_c(64, 16, 4), _c(64, 32, 4)]
        return [_c(64, 32, 4), _c(64, 64, 4, waves=1), _c(128, 32, 8, waves=1)]
    return [_c(32, 16, 4), _c(32, 32, 4, waves=1)]
