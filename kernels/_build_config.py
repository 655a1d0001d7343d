"""Sources and flags of the C++ extension ``polykernels._C``: one list for both the
ahead-of-time build (setup.py) and the JIT build (_extension.py).

Imports nothing from torch or polykernels, so setup.py can load it as a plain file.
"""
from __future__ import annotations

import glob
import os
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


def sources(pkg_dir: str, bindings_dir: str, with_cuda: bool) -> list[str]:
    """Every C++ file of the extension: torch-free kernels plus the torch-facing glue.

    Files in bindings/ whose name ends in ``_cuda.cpp`` hold the CUDA dispatch-key glue and
    are compiled only with CUDA, like kernels/cuda/*.cu.
    """
    cpu = sorted(glob.glob(os.path.join(pkg_dir, "cpu", "*.cpp")))
    glue = sorted(glob.glob(os.path.join(bindings_dir, "*.cpp")))
    cuda = sorted(glob.glob(os.path.join(pkg_dir, "cuda", "*.cu")))
    if not with_cuda:
        glue = [g for g in glue if not g.endswith("_cuda.cpp")]
        cuda = []
    files = cpu + glue + cuda
    # The JIT build names object files by basename: two sources with one stem would collide.
    stems: dict[str, str] = {}
    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        if stem in stems:
            raise RuntimeError(f"C++ sources {stems[stem]} and {f} share the name {stem!r}; "
                               "rename one (object files are named by basename)")
        stems[stem] = f
    return files


def include_dirs(pkg_dir: str) -> list[str]:
    return [os.path.join(pkg_dir, "cpu"), os.path.join(pkg_dir, "cuda")]


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
