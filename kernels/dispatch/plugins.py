"""Out-of-tree backends (custom chips, vendor forks) discovered through entry points.

A plugin distribution declares, in its metadata::

    [project.entry-points."polykernels.backends"]
    maia = "polykernels_maia:register"

``register()`` takes no arguments and calls ``polykernels.register_backend(...)`` and
``polykernels.register_impl(...)``. Plugins load on the first dispatch, not at import.
``POLYKERNELS_PLUGINS=""`` loads none; ``POLYKERNELS_PLUGINS="maia,foo"`` loads only those
entry-point names; unset loads all. A plugin that raises while loading is logged and skipped.
"""
from __future__ import annotations

import logging
import os
from importlib import metadata

from .registry import Registry

log = logging.getLogger("polykernels")

GROUP = "polykernels.backends"


def _entry_points():
    eps = metadata.entry_points()
    if hasattr(eps, "select"):
        return list(eps.select(group=GROUP))
    return list(eps.get(GROUP, []))


def allowed_plugins() -> set[str] | None:
    """None = all; otherwise the set of allowed entry-point names (possibly empty)."""
    value = os.environ.get("POLYKERNELS_PLUGINS")
    if value is None:
        return None
    return {s.strip() for s in value.split(",") if s.strip()}


def load_plugins(registry: Registry) -> None:
    allowed = allowed_plugins()
    for ep in _entry_points():
        if allowed is not None and ep.name not in allowed:
            continue
        try:
            ep.load()()
            registry.loaded_plugins.append(ep.name)
        except Exception as e:
            registry.load_errors[f"plugin {ep.name}"] = f"{type(e).__name__}: {e}"
            log.warning("polykernels: plugin %r failed to load and is skipped: %s", ep.name, e)
