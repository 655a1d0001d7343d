"""Launch-config autotuning with an on-disk cache.

On a real GPU, the first call for a (kernel, shape bucket) benchmarks each candidate config
once and stores the winner in ``$POLYKERNELS_CACHE_DIR/autotune/<device>.json`` (default
``~/.cache/polykernels``), keyed by device name, Triton version, the kernel's source hash and
the shape bucket, so later processes skip the search. Under the interpreter, or with a single
candidate, the first candidate is returned without benchmarking (Triton's autotuner needs a
driver, see docs/testing.md). ``POLYKERNELS_AUTOTUNE=0`` disables the search (first candidate).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import threading
from dataclasses import asdict
from typing import Callable, Sequence

from .common import interpreting
from .config import KernelConfig

log = logging.getLogger("polykernels")

_lock = threading.Lock()
_memory: dict[str, KernelConfig] = {}


def _cache_file(device_name: str) -> str:
    root = os.environ.get("POLYKERNELS_CACHE_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "polykernels"))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device_name)
    return os.path.join(root, "autotune", f"{safe}.json")


def source_hash(kernel_fn) -> str:
    """Hash of the source of the kernel's whole family: every .py file in the folder of the
    module that defines it (kernels call shared @triton.jit helpers in sibling modules, and a
    change there must invalidate the tuned configs too)."""
    fn = getattr(kernel_fn, "fn", kernel_fn)
    digest = hashlib.sha256()
    try:
        folder = os.path.dirname(inspect.getsourcefile(fn))
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    digest.update(name.encode() + b"\0" + f.read())
    except (TypeError, OSError):   # no source file (e.g. defined interactively)
        digest.update(fn.__code__.co_code)
    return digest.hexdigest()[:16]


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):   # missing or corrupt cache: start afresh
        return {}


def _encode(cfg: KernelConfig) -> dict:
    d = asdict(cfg)
    d["extra"] = [list(p) for p in cfg.extra]
    return d


def _decode(d: dict) -> KernelConfig:
    d = dict(d)
    d["extra"] = tuple(tuple(p) for p in d.get("extra", ()))
    return KernelConfig(**d)


def pick_config(kernel_name: str, kernel_fn, shape_bucket: tuple,
                candidates: Sequence[KernelConfig], bench: Callable[[KernelConfig], float],
                device_name: str | None = None) -> KernelConfig:
    """Best config for this kernel and shape bucket (see module doc).

    ``bench(cfg)`` runs the kernel with cfg and returns milliseconds (e.g. via
    ``triton.testing.do_bench``); a candidate whose bench raises (out of resources) is skipped.
    """
    if not candidates:
        raise ValueError("candidates: expected at least one KernelConfig")
    if len(candidates) == 1 or interpreting() or os.environ.get("POLYKERNELS_AUTOTUNE", "1") == "0":
        return candidates[0]
    if device_name is None:
        import torch
        device_name = torch.cuda.get_device_name()
    import triton
    key = f"{kernel_name}|{source_hash(kernel_fn)}|triton-{triton.__version__}|{shape_bucket}"
    with _lock:
        if key in _memory:
            return _memory[key]
        stored = _read(_cache_file(device_name))
        if key in stored:
            cfg = _decode(stored[key])
            _memory[key] = cfg
            return cfg
    timings = []
    for cfg in candidates:
        try:
            timings.append((bench(cfg), cfg))
        except Exception as e:   # e.g. OutOfResources for shared memory: not a candidate here
            log.info("polykernels autotune: %s config %s failed: %s", kernel_name, cfg, e)
    if not timings:
        raise RuntimeError(f"{kernel_name}: no candidate config could run for {shape_bucket}")
    best = min(timings, key=lambda t: t[0])[1]
    with _lock:
        _memory[key] = best
        path = _cache_file(device_name)
        stored = _read(path)
        stored[key] = _encode(best)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(stored, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    return best


def clear_memory_cache() -> None:
    with _lock:
        _memory.clear()
