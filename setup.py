"""Build script: the Python package plus, when torch is importable, the C++ extension.

``pip install --no-build-isolation .`` (torch already installed) builds ``polykernels._C``
ahead of time from ``bindings/`` and ``kernels/cpu/`` (plus ``kernels/cuda/`` when torch has
CUDA and nvcc exists). Without torch at build time the package installs without it and the
extension is JIT-compiled on first use (see ``kernels/_extension.py``).
"""
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "kernels"))

# kernels/ installs as the import package `polykernels` (the name `kernels` belongs to
# Hugging Face's kernel loader); bindings/ ships inside it as data so the JIT build works
# from any install.
package_dir = {"polykernels": "kernels", "polykernels._bindings": "bindings"}
packages = ["polykernels", "polykernels._bindings"] + \
    ["polykernels." + p for p in find_packages("kernels")]
package_data = {"polykernels": ["cpu/*.cpp", "cpu/*.h", "cuda/*.cu", "cuda/*.cuh", "cuda/*.h"],
                "polykernels._bindings": ["*.cpp", "*.h"]}

ext_modules = []
cmdclass = {}
if os.environ.get("POLYKERNELS_NO_EXTENSION", "0") != "0":
    print("polykernels: POLYKERNELS_NO_EXTENSION is set: building a pure-Python wheel; the C++ "
          "kernels will be JIT-compiled on first use", file=sys.stderr)
else:
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        # Typical cause: a plain `pip install .` builds in an isolated environment without torch.
        print("polykernels: torch is not importable at build time (build isolation?): this is a "
              "pure-Python wheel, and the C++ kernels will be JIT-compiled on first use (a few "
              "minutes, once per machine). To build them now: pip install --no-build-isolation .",
              file=sys.stderr)
    else:
        import _build_config as cfg  # kernels/_build_config.py: one source of truth for sources and flags
        import _build_progress as progress  # kernels/_build_progress.py: ninja progress lines

        with_cuda = cfg.cuda_available()
        sources = cfg.sources(os.path.join(ROOT, "kernels"), os.path.join(ROOT, "bindings"),
                              with_cuda=with_cuda)
        Ext = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
        ext_modules.append(Ext(
            name="polykernels._C",
            sources=[os.path.relpath(s, ROOT) for s in sources],
            include_dirs=cfg.include_dirs(os.path.join(ROOT, "kernels")),
            extra_compile_args=cfg.extra_compile_args(with_cuda=with_cuda),
            extra_link_args=cfg.extra_link_args(),
            define_macros=[("PK_WITH_CUDA", "1")] if with_cuda else [],
        ))
        # Objects live in one stable folder per (python, torch, cuda or not): ninja then skips
        # every up-to-date object, so a second `pip install` (README's second command, a
        # reinstall with other extras) relinks in seconds instead of recompiling for minutes.
        obj_dir = os.path.join(ROOT, "build", "obj-{}-torch{}-{}".format(
            sys.implementation.cache_tag, torch.__version__, "cuda" if with_cuda else "cpu"))

        class BuildExtension(cpp_extension.BuildExtension.with_options(use_ninja=True)):
            def finalize_options(self):
                super().finalize_options()
                self.build_temp = obj_dir

            def build_extensions(self):
                os.makedirs(self.build_temp, exist_ok=True)
                progress.announce(sources, self.build_temp)
                with progress.NinjaProgress(os.path.join(self.build_temp, "build.log")):
                    super().build_extensions()

        cmdclass["build_ext"] = BuildExtension

setup(packages=packages, package_dir=package_dir, package_data=package_data,
      ext_modules=ext_modules, cmdclass=cmdclass)
