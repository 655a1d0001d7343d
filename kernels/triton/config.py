"""The one launch-config type shared by every Triton family and vendor.

Per-vendor choices live in each family's ``configs_nvidia.py`` / ``configs_amd.py`` and
return ``KernelConfig`` values; launchers only read this type.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KernelConfig:
    block_m: int = 64
    block_n: int = 64
    block_k: int = 32
    num_warps: int = 4
    num_stages: int = 2
    # Backend-specific knobs passed straight to the launch, e.g. on AMD
    # {"waves_per_eu": 2, "matrix_instr_nonkdim": 16, "kpack": 2}.
    extra: tuple = field(default_factory=tuple)  # tuple of (name, value) pairs, hashable

    def launch_options(self) -> dict:
        opts = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        opts.update(dict(self.extra))
        return opts
