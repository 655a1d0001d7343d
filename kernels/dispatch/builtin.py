"""Built-in backends, and the modules that register built-in impls.

The modules are imported on the first dispatch (never at ``import polykernels``); each has a
``register()`` function. A module that fails to import is logged with its reason and skipped
(its impls then simply do not exist; `polykernels info` shows the error).
"""
from __future__ import annotations

import importlib
import logging

import torch

from .registry import Backend, Registry

log = logging.getLogger("polykernels")

BUILTIN_IMPL_MODULES = [
    "polykernels.triton.matmul.register",
    "polykernels.triton.flash_attention.register",
    "polykernels.triton.paged_attention.register",
    "polykernels.cuda.register",
    "polykernels.torch_provider.register",
    "polykernels.reference.register",
    "polykernels.cpu.register_merge",
    "polykernels.cpu.register_attention",
    "polykernels.cpu.register_matmul",
]


def _cuda_vendor_available(want_hip: bool) -> bool:
    is_hip = bool(getattr(torch.version, "hip", None))
    return is_hip == want_hip and torch.cuda.is_available()


def _triton_target(device: torch.device):
    from .accelerator import describe
    return describe(device).triton_target


def register_builtin_backends(registry: Registry) -> None:
    registry.register_backend(Backend("nvidia", ("cuda",), lambda: _cuda_vendor_available(False),
                                      priority=0, triton_target=_triton_target))
    registry.register_backend(Backend("amd", ("cuda",), lambda: _cuda_vendor_available(True),
                                      priority=0, triton_target=_triton_target))
    registry.register_backend(Backend("cpu", ("cpu",), lambda: True, priority=0))
    registry.register_backend(Backend("torch", ("*",), lambda: True, priority=0))
    registry.register_backend(Backend("reference", ("*",), lambda: True, priority=-1))


def load_builtin_impls(registry: Registry) -> None:
    for name in BUILTIN_IMPL_MODULES:
        try:
            importlib.import_module(name).register()
        except Exception as e:
            registry.load_errors[name] = f"{type(e).__name__}: {e}"
            log.warning("polykernels: built-in impl module %s failed to load: %s", name, e)
