"""Sources and flags of the C++ extension ``polykernels._C``: one list for both the
ahead-of-time build (setup.py) and the JIT build (_extension.py).

Imports nothing from torch or polykernels, so setup.py can load it as a plain file.
"""
from __future__ import annotations

import glob
import os
import re
import shutil


def cuda_available() -> bool:
    """Build the CUDA kernels only when torch has CUDA and nvcc is present."""
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        return False
    if os.environ.get("POLYKERNELS_NO_CUDA", "0") != "0":
        return False
    return bool(torch.version.cuda) and (CUDA_HOME is not None or shutil.which("nvcc") is not None)


CUDA_GLUE_PREFIX = "cuda_"  # bindings/cuda_*.cpp: CUDA dispatch-key glue, compiled only with CUDA


def sources(pkg_dir: str, bindings_dir: str, with_cuda: bool) -> list[str]:
    """Every C++ file of the extension: torch-free kernels plus the torch-facing glue.

    Files in bindings/ whose name starts with ``cuda_`` hold the CUDA dispatch-key glue and
    are compiled only with CUDA, like kernels/cuda/*.cu. The tree is checked first
    (``check_tree``): a name clash fails here, with the two paths, not deep inside a compiler.
    """
    check_tree(pkg_dir, bindings_dir)
    cpu = sorted(glob.glob(os.path.join(pkg_dir, "cpu", "*.cpp")))
    glue = sorted(glob.glob(os.path.join(bindings_dir, "*.cpp")))
    cuda = sorted(glob.glob(os.path.join(pkg_dir, "cuda", "*.cu")))
    if not with_cuda:
        glue = [g for g in glue if not os.path.basename(g).startswith(CUDA_GLUE_PREFIX)]
        cuda = []
    return cpu + glue + cuda


def headers(pkg_dir: str, bindings_dir: str) -> list[str]:
    """Every header the sources may include (for content hashes of the JIT build)."""
    found = []
    for folder in (os.path.join(pkg_dir, "cpu"), os.path.join(pkg_dir, "cuda"), bindings_dir):
        found += glob.glob(os.path.join(folder, "*.h")) + glob.glob(os.path.join(folder, "*.cuh"))
    return sorted(found)


def include_dirs(pkg_dir: str) -> list[str]:
    """One include root, the package folder: bindings include kernel headers path-qualified
    (``"cpu/attention.h"``, ``"cuda/paged_decode.h"``), so a CPU and a CUDA header can never
    stand in for each other; kernel files include their siblings by plain name (the
    includer's own folder is searched first)."""
    return [pkg_dir]


_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


def check_tree(pkg_dir: str, bindings_dir: str) -> None:
    """Refuse a source tree in which one translation unit could pick up the wrong file.

    - every source (.cpp/.cu, all folders together) has its own stem: the JIT build names
      object files by stem, and a CPU and a CUDA file of one stem have collided before;
    - every header (.h/.cuh/.hpp) has its own file name across kernels/cpu, kernels/cuda
      and bindings/;
    - a ``#include "x"`` in bindings/ names either a bindings header or a path-qualified
      kernel header (``cpu/x.h``, ``cuda/x.h``) that exists.
    Raises RuntimeError naming the files.
    """
    folders = [os.path.join(pkg_dir, "cpu"), os.path.join(pkg_dir, "cuda"), bindings_dir]
    seen: dict[tuple[str, str], str] = {}
    problems = []
    for folder in folders:
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            stem, ext = os.path.splitext(name)
            kind = {".cpp": "source", ".cu": "source", ".h": "header", ".cuh": "header",
                    ".hpp": "header"}.get(ext)
            if kind is None:
                continue
            key = (kind, (stem if kind == "source" else name).lower())
            path = os.path.join(folder, name)
            if key in seen:
                problems.append(f"{seen[key]} and {path} share the {kind} name {key[1]!r}")
            seen[key] = path
    if os.path.isdir(bindings_dir):
        for name in sorted(os.listdir(bindings_dir)):
            if not name.endswith((".cpp", ".h")):
                continue
            path = os.path.join(bindings_dir, name)
            with open(path, encoding="utf-8") as fh:
                for inc in _INCLUDE.findall(fh.read()):
                    if os.path.exists(os.path.join(bindings_dir, inc)):
                        continue
                    if "/" not in inc:
                        problems.append(f'{path} includes "{inc}" unqualified: write "cpu/{inc}" '
                                        f'or "cuda/{inc}"')
                    elif not os.path.exists(os.path.join(pkg_dir, inc)):
                        problems.append(f'{path} includes "{inc}", which is not under {pkg_dir}')
    if problems:
        raise RuntimeError("polykernels C++ tree: " + "; ".join(problems))


def cxx_std() -> str:
    """torch >= 2.14's headers require C++20; older ones are built as C++17 (as torch is)."""
    try:
        import torch
        major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    except (ImportError, ValueError):
        return "c++17"
    return "c++20" if (major, minor) >= (2, 14) else "c++17"


def cxx_flags() -> list[str]:
    # -O3 plus OpenMP. No -march=native: the binary must run on any x86-64; ISA-specific
    # code paths use function target attributes and are picked at run time from CPU flags.
    return ["-O3", f"-std={cxx_std()}", "-fopenmp", "-Wall", "-Wno-unused-function",
            "-Wno-unknown-pragmas"]


def nvcc_flags() -> list[str]:
    return ["-O3", f"-std={cxx_std()}", "--use_fast_math",
            "-gencode=arch=compute_80,code=sm_80",
            "-gencode=arch=compute_90a,code=sm_90a"]


def extra_compile_args(with_cuda: bool) -> dict | list:
    if with_cuda:
        return {"cxx": cxx_flags(), "nvcc": nvcc_flags()}
    return {"cxx": cxx_flags()}


def extra_link_args() -> list[str]:
    return ["-fopenmp"]
