"""Where a matmul launch gets its configs: the interpreter, NVIDIA or AMD.

One small data-driven place: detect the vendor/arch of the tensor's device at call time
(never at import) and forward to ``configs_nvidia`` / ``configs_amd``, which return
``KernelConfig`` candidates, best guess first. Under the Triton interpreter there is a
single small config (the interpreter's cost is per program and per op, not per FLOP).
"""
from __future__ import annotations

import functools

import torch

from ..common import interpreting
from ..config import KernelConfig
from . import configs_amd, configs_nvidia

INTERPRETER = KernelConfig(block_m=32, block_n=32, block_k=32, num_warps=4, num_stages=1)
GROUP_M = 8  # grouped tile ordering: row-tiles walked per column-tile (L2 reuse)


@functools.lru_cache(maxsize=None)
def _device_info(device: torch.device) -> tuple[str, object, int]:
    """(vendor, arch, SM/CU count) of a GPU; ROCm reports device type 'cuda'."""
    props = torch.cuda.get_device_properties(device)
    if torch.version.hip:
        return "amd", props.gcnArchName.split(":")[0], props.multi_processor_count
    return "nvidia", (props.major, props.minor), props.multi_processor_count


def _vendor(device: torch.device):
    if device.type != "cuda" or interpreting():
        return None, None, 1
    return _device_info(device)


def _pick(kind: str, device: torch.device, *args) -> list[KernelConfig]:
    vendor, arch, _ = _vendor(device)
    if vendor is None:
        return [INTERPRETER]
    module = configs_amd if vendor == "amd" else configs_nvidia
    return getattr(module, kind)(arch, *args)


def gemm_configs(device, M, N, K, dtype, act=0) -> list[KernelConfig]:
    return _pick("gemm", device, M, N, K, dtype, act)


def scaled_configs(device, M, N, K, dtype) -> list[KernelConfig]:
    return _pick("scaled", device, M, N, K, dtype)


def weight_only_configs(device, M, N, K, bits, group_size) -> list[KernelConfig]:
    return _pick("weight_only", device, M, N, K, bits, group_size)


def grouped_configs(device, T, N, K, E, dtype) -> list[KernelConfig]:
    return _pick("grouped", device, T, N, K, E, dtype)


def split_k(device, M: int, N: int, K: int, cfg: KernelConfig, max_m: int = 64) -> int:
    """How many K-slices a skinny GEMM should be cut into so it fills the machine.

    Only for M <= max_m with K large relative to N: the tile grid is then far smaller than
    the SM/CU count and each tile would stream the whole K alone. Each slice keeps at
    least 4 K-blocks of work so the fp32 partials stay cheap next to the main loop.
    """
    vendor, _, sms = _vendor(device)
    if vendor is None or M > max_m:
        return 1
    tiles = -(-M // cfg.block_m) * -(-N // cfg.block_n)
    if tiles >= sms:
        return 1
    by_sms = -(-sms // tiles)
    by_k = max(1, K // (4 * cfg.block_k))
    return max(1, min(by_sms, by_k, 16))


def shape_bucket(*dims: int) -> tuple:
    """Autotune cache key: each dim rounded up to a power of two (M to 16 at least)."""
    return tuple(1 << max(0, (int(d) - 1).bit_length()) for d in dims)


def choose(name: str, kernel, bucket: tuple, candidates: list[KernelConfig], bench):
    """The config to launch: the only one, or the autotuned winner on a real GPU."""
    if len(candidates) == 1 or interpreting():
        return candidates[0]
    from ..autotune import pick_config
    return pick_config(name, kernel, bucket, candidates, bench)
