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
        return Accelerator("cpu", "cpu", None, cpu_features()[0], _cpu_capability(), None, None)
    return Accelerator(vendor, device_type, index, device_type, None, None, None)


def _cpu_capability() -> str:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        return "unknown"


# CPU flags that decide which kernel paths can run (x86 names as in /proc/cpuinfo).
CPU_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


def parse_cpuinfo(text: str) -> tuple[str | None, frozenset]:
    """(model name, the subset of CPU_FEATURES listed) from the text of /proc/cpuinfo."""
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip() and model is None:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, frozenset(f for f in CPU_FEATURES if f in flags)


@functools.lru_cache(maxsize=None)
def cpu_features() -> tuple[str, frozenset]:
    """(CPU model name, the subset of CPU_FEATURES this CPU has). Linux reads /proc/cpuinfo;
    elsewhere torch's own probes answer for the AVX-512 / AMX families."""
    import platform
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            model, flags = parse_cpuinfo(fh.read())
        return model or platform.machine(), flags
    except OSError:
        pass
    probes = {"avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported",
              "avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported",
              "amx_fp16": "_is_amx_fp16_supported", "avx512_vnni": "_is_vnni_supported"}
    found = set()
    for flag, probe in probes.items():  # private torch probes (torch >= 2.2); absent: not found
        try:
            if getattr(torch.cpu, probe)():
                found.add(flag)
        except Exception:
            pass
    return platform.processor() or platform.machine(), frozenset(found)


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
