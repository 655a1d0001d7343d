"""AMD (CDNA2 gfx90a / CDNA3 gfx942) launch configs for the matmul family.

Wavefronts are 64 lanes and LDS is 64 KiB, so tiles are bounded by LDS rather than
registers; Triton's AMD stream pipeliner works best with num_stages=2. ``waves_per_eu``
caps occupancy to leave registers for large tiles, ``matrix_instr_nonkdim=16`` picks the
16x16 MFMA forms (better than 32x32 for these tile sizes on CDNA3).
"""
from __future__ import annotations

import torch

from ..config import KernelConfig


def C(bm, bn, bk, warps, stages=2, waves=2, nonk=16):
    return KernelConfig(bm, bn, bk, warps, stages,
                        extra=(("waves_per_eu", waves), ("matrix_instr_nonkdim", nonk)))


def gemm(arch, M, N, K, dtype, act=0):
    """``act``: exact GELU (2) spills with 256x256 tiles (~800 VGPR spills measured)."""
    if dtype == torch.float32:
        return [C(64, 64, 32, 4, 2, 0), C(128, 64, 32, 4, 2, 0)]
    if M <= 64:
        return [C(64, 64, 64, 4, 2, 0), C(32, 64, 128, 4, 2, 0), C(64, 128, 64, 4, 2, 0)]
    big = [] if act == 2 else [C(256, 256, 32, 8, 2, 2)]
    return [C(256, 128, 64, 8, 2, 2), *big, C(128, 128, 64, 4, 2, 2), C(128, 256, 64, 8, 2, 2)]


def scaled(arch, M, N, K, dtype):
    if M <= 64:
        return [C(64, 64, 128, 4, 2, 0), C(32, 64, 128, 4, 2, 0)]
    return [C(256, 256, 64, 8, 2, 2), C(128, 128, 128, 4, 2, 2), C(256, 128, 128, 8, 2, 2)]


def weight_only(arch, M, N, K, bits, group_size):
    # BK 128 with 4 warps spills on gfx90a (26-30 VGPRs measured); BK 64 does not.
    if M <= 16:
        return [C(16, 64, 64, 4, 2, 0), C(16, 32, 128, 4, 2, 0), C(16, 64, 128, 8, 2, 0)]
    if M <= 64:
        return [C(64, 64, 64, 4, 2, 0), C(32, 128, 64, 4, 2, 0)]
    return [C(128, 64, 64, 4, 2, 0), C(128, 128, 64, 8, 2, 0), C(128, 128, 32, 4, 2, 2)]


def grouped(arch, T, N, K, E, dtype):
    if dtype == torch.float32:
        return [C(64, 64, 32, 4, 2, 0)]
    if T <= 64 * E:
        return [C(64, 128, 64, 4, 2, 0), C(64, 64, 64, 4, 2, 0)]
    return [C(128, 128, 64, 4, 2, 2), C(256, 128, 64, 8, 2, 2)]
