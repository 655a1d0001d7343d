"""What accelerator a tensor lives on: vendor, arch and Triton target, read lazily.

Nothing here runs at import. ROCm builds of torch report device type ``cuda``, so the vendor
comes from the torch build (``torch.version.hip``), not from the device type.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Accelerator:
    vendor: str            # "nvidia", "amd", "cpu", or a plugin device type such as "maia"
    device_type: str       # torch device type: "cuda", "cpu", "maia", "privateuseone", ...
    index: int | None
    name: str              # human-readable device name
    arch: str | None       # "sm90", "gfx942", the CPU ISA path, ...
    triton_target: tuple | None  # ("cuda", 90, 32) / ("hip", "gfx942", 64); None: no Triton target
    multiprocessors: int | None  # SMs / CUs (for split heuristics), None when unknown


def vendor_of(device: torch.device) -> str:
    if device.type == "cuda":
        return "amd" if getattr(torch.version, "hip", None) else "nvidia"
    return device.type


@functools.lru_cache(maxsize=None)
def _describe(device_type: str, index: int | None) -> Accelerator:
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    vendor = vendor_of(device)
    if device_type == "cuda":
        idx = index if index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        if vendor == "amd":
            arch = props.gcnArchName.split(":")[0]
            target = ("hip", arch, 64)
        else:
            arch = f"sm{props.major}{props.minor}"
            target = ("cuda", props.major * 10 + props.minor, 32)
        return Accelerator(vendor, device_type, idx, props.name, arch, target,
                           props.multi_processor_count)
    if device_type == "cpu":
        import platform
        return Accelerator("cpu", "cpu", None, platform.processor() or platform.machine(),
                           _cpu_capability(), None, None)
    return Accelerator(vendor, device_type, index, device_type, None, None, None)


def _cpu_capability() -> str:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        return "unknown"


def describe(device: torch.device | str) -> Accelerator:
    """Accelerator facts for ``device`` (cached per device)."""
    device = torch.device(device)
    return _describe(device.type, device.index)


def default_device() -> torch.device:
    """The accelerator this process would use: a GPU when torch sees one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def accelerator(device: torch.device | str | None = None) -> Accelerator:
    """``pk.accelerator()``: what was detected (for ``device``, default the first GPU or CPU)."""
    return describe(device if device is not None else default_device())
