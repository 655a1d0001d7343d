"""Loading the C++ extension ``polykernels._C``, lazily.

Order: the ahead-of-time build installed with the package; else a JIT build with ninja into
a cache directory keyed by a hash of the sources and flags (``POLYKERNELS_CACHE_DIR``,
default ``~/.cache/polykernels``), announced on stderr while it compiles; else ``None``, logged
once, and the C++ impls refuse with that reason so dispatch picks Triton or the reference.
``POLYKERNELS_NO_JIT=1`` skips the JIT step. Nothing here runs at ``import polykernels``.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import os
import sys
import threading

log = logging.getLogger("polykernels")

_lock = threading.Lock()
_state: dict = {}  # "module" and "error" once resolved


def _pkg_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def _bindings_dir() -> str:
    # Installed package: polykernels/_bindings; source checkout (editable): ../bindings.
    inside = os.path.join(_pkg_dir(), "_bindings")
    if os.path.isdir(inside) and any(f.endswith(".cpp") for f in os.listdir(inside)):
        return inside
    return os.path.join(os.path.dirname(_pkg_dir()), "bindings")


def _jit_build():
    import torch
    from torch.utils import cpp_extension

    from . import _build_config as cfg
    from . import _build_progress as progress

    with_cuda = cfg.cuda_available()
    sources = cfg.sources(_pkg_dir(), _bindings_dir(), with_cuda=with_cuda)
    if not sources:
        raise RuntimeError("no C++ sources found next to the package")
    flags = cfg.extra_compile_args(with_cuda)
    digest = hashlib.sha256()
    for path in sources + cfg.headers(_pkg_dir(), _bindings_dir()):
        with open(path, "rb") as fh:
            digest.update(path.encode() + b"\0" + fh.read())
    digest.update(repr((flags, torch.__version__, sys.version_info[:2])).encode())
    key = digest.hexdigest()[:16]
    cache_root = os.environ.get("POLYKERNELS_CACHE_DIR",
                                os.path.join(os.path.expanduser("~"), ".cache", "polykernels"))
    build_dir = os.path.join(cache_root, f"ext-{key}")
    os.makedirs(build_dir, exist_ok=True)
    kwargs = dict(name="polykernels_C_jit", sources=sources,
                  extra_include_paths=cfg.include_dirs(_pkg_dir()) + [_bindings_dir()],
                  extra_cflags=flags["cxx"], extra_cuda_cflags=flags.get("nvcc"),
                  extra_ldflags=cfg.extra_link_args(), build_directory=build_dir,
                  is_python_module=False)
    if _is_built(build_dir):  # cached: ninja only confirms it is up to date, quietly
        return cpp_extension.load(**kwargs, verbose=False)
    progress.announce(sources, build_dir)
    # verbose: ninja's [n/N] lines reach NinjaProgress, which condenses them onto stderr
    with progress.NinjaProgress(os.path.join(build_dir, "build.log")):
        return cpp_extension.load(**kwargs, verbose=True)


def _is_built(build_dir: str) -> bool:
    return any(f.endswith(".so") for f in os.listdir(build_dir))


def load():
    """The loaded extension (its ops are then under ``torch.ops.polykernels_C``), or None."""
    with _lock:
        if "module" in _state:
            return _state["module"]
        module, error = None, None
        if os.environ.get("POLYKERNELS_FORCE_JIT", "0") == "0":
            try:
                import torch  # noqa: F401  (the extension links against torch's libraries)
                module = importlib.import_module("polykernels._C")
            except ImportError as e:
                error = f"no ahead-of-time build ({e})"
                if isinstance(e, ModuleNotFoundError) and e.name == "polykernels._C":
                    print("polykernels: this install has no prebuilt C++ extension (a pure "
                          "wheel: built without torch, e.g. by a plain `pip install .`, or with "
                          "POLYKERNELS_NO_EXTENSION=1); it is compiled now, once per machine. "
                          "`pip install --no-build-isolation .` builds it ahead of time.",
                          file=sys.stderr, flush=True)
        if module is None and os.environ.get("POLYKERNELS_NO_JIT", "0") == "0":
            try:
                module = _jit_build() or True
            except Exception as e:  # compiler missing, build error: degrade, loudly once
                error = f"{error + '; ' if error else ''}JIT build failed: {type(e).__name__}: {e}"
        if module is None:
            log.warning("polykernels: C++ extension unavailable, C++ impls disabled: %s", error)
        _state["module"], _state["error"] = module, error
        return module


def unavailable_reason() -> str | None:
    """None when the extension is loaded (loading it if needed), else why not."""
    if load() is None:
        return f"C++ extension unavailable: {_state['error']}"
    return None
