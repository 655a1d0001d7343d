"""Dispatch: accelerator detection, backend/impl registry, selection, failover, plugins.

The process-wide registry lives here. Built-in backends are registered at import (cheap:
no device work); built-in impl modules and plugins load on the first dispatch.
"""
from __future__ import annotations

from .accelerator import Accelerator, accelerator, describe, vendor_of
from .builtin import load_builtin_impls, register_builtin_backends
from .plugins import load_plugins
from .registry import Backend, Decision, Impl, InvalidInputError, NoImplError, Registry, use

registry = Registry()
register_builtin_backends(registry)
registry.add_loader(lambda: load_builtin_impls(registry))
registry.add_loader(lambda: load_plugins(registry))


def register_backend(name: str, device_types, is_available=lambda: True, priority: int = 0,
                     triton_target=None) -> None:
    """Register a backend (plugins: your chip's torch device type, e.g. ("maia",))."""
    if isinstance(device_types, str):
        device_types = (device_types,)
    registry.register_backend(Backend(name, tuple(device_types), is_available, priority,
                                      triton_target))


def register_impl(op: str, name: str, *, backends, fn, supports=None, priority: int = 0,
                  interpretable=None) -> None:
    """Register an implementation of ``op`` (see Registry.register_impl)."""
    registry.register_impl(op, name, backends=backends, fn=fn, supports=supports,
                           priority=priority, interpretable=interpretable)


# dispatch(op, *args): run ``op`` through the registry (selection, explicit choice, failover).
# The bound method itself, not a wrapper: this is every call's path.
dispatch = registry.call


def backends() -> list[dict]:
    """``pk.backends()``: every registered backend, whether it is available here, its impls."""
    registry.ensure_loaded()
    out = []
    for b in registry.backends.values():
        try:
            available = bool(b.is_available())
        except Exception:   # a failing probe means unavailable, never a crash
            available = False
        ops = sorted({f"{i.op}:{i.name}" for lst in registry.impls.values() for i in lst
                      if i.backend == b.name})
        out.append({"name": b.name, "device_types": b.device_types, "available": available,
                    "priority": b.priority, "impls": ops})
    return out


__all__ = ["Accelerator", "Backend", "Decision", "Impl", "InvalidInputError", "NoImplError", "Registry", "accelerator",
           "backends", "describe", "dispatch", "register_backend", "register_impl", "registry",
           "use", "vendor_of"]
