"""Integrations with other libraries (each imported lazily by its own module).

``polykernels.integrations.transformers``: an attention implementation for Hugging Face
transformers (``register()``, then ``attn_implementation="polykernels"``).

The name clash with Hugging Face's ``kernels``
------------------------------------------------
This package's source folder is called ``kernels/`` (installed as ``polykernels``). Hugging
Face publishes a different package whose import name is ``kernels`` (hub kernels), and
transformers probes for it when it is imported (``is_kernels_available()`` finds it with
``importlib.util.find_spec("kernels")`` and, lacking package metadata, imports it). Python run
from the root of a checkout (``python -c``, ``python -m pytest``) has the root on ``sys.path``,
so that probe finds and imports *this* folder as a second, top-level package ``kernels``: its
ops collide with ``polykernels``' own (``RuntimeError: Only a single TORCH_LIBRARY can be used
to register the namespace polykernels``), and with Hugging Face's ``kernels`` installed,
transformers would import our folder in its place. ``guard_kernels_name()`` settles the name
``kernels`` before transformers looks at it: the genuine package where one is installed
elsewhere on ``sys.path``, otherwise "not installed".
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

__all__ = ["guard_kernels_name", "is_polykernels_source"]


def is_polykernels_source(spec) -> bool:
    """Whether a module spec for the name ``kernels`` is a polykernels source folder (this
    checkout's ``kernels/`` or any other copy of it) rather than Hugging Face's package."""
    locations = list(getattr(spec, "submodule_search_locations", None) or [])
    for folder in locations:
        init = os.path.join(folder, "__init__.py")
        if os.path.isfile(os.path.join(folder, "ops", "_library.py")) and os.path.isfile(init):
            try:
                with open(init, encoding="utf-8") as f:
                    head = f.read(4096)
            except OSError:
                continue
            if "polykernels" in head:
                return True
    return False


def _find_genuine_kernels():
    """The spec of an importable ``kernels`` that is not a polykernels source folder, or None."""
    path = []
    for entry in sys.path:
        spec = importlib.machinery.PathFinder.find_spec("kernels", [entry])
        if spec is not None and is_polykernels_source(spec):
            continue                      # our folder: skip this sys.path entry
        path.append(entry)
    spec = importlib.machinery.PathFinder.find_spec("kernels", path)
    if spec is not None:
        return spec
    for finder in sys.meta_path:          # e.g. an editable install's finder
        if finder is importlib.machinery.PathFinder or not hasattr(finder, "find_spec"):
            continue
        try:
            spec = finder.find_spec("kernels", None)
        except Exception:  # noqa: BLE001 - a third-party finder's failure means "not found"
            spec = None
        if spec is not None and not is_polykernels_source(spec):
            return spec
    return None


def guard_kernels_name() -> None:
    """Make the top-level name ``kernels`` safe before transformers probes it.

    Nothing changes unless a polykernels source folder is what ``import kernels`` would find
    (Python run from a checkout's root). Then Hugging Face's ``kernels`` is imported from the
    rest of ``sys.path`` if it is installed, and otherwise ``sys.modules["kernels"]`` is set to
    None, which ``importlib.util.find_spec`` and ``import`` report as "not installed". Idempotent;
    cheap (a few ``stat`` calls). Called by ``polykernels.integrations.transformers`` before it
    imports transformers, and by the test suite's conftest.
    """
    if "kernels" in sys.modules:
        return                            # settled already (the genuine package, or None)
    spec = importlib.machinery.PathFinder.find_spec("kernels")
    if spec is None or not is_polykernels_source(spec):
        return                            # not shadowed: leave Python's normal lookup alone
    genuine = _find_genuine_kernels()
    if genuine is None:
        sys.modules["kernels"] = None     # type: ignore[assignment]
        return
    module = importlib.util.module_from_spec(genuine)
    sys.modules["kernels"] = module
    try:
        genuine.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("kernels", None)
        raise
