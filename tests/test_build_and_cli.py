"""Build tree rules, build progress, the command line, and the README's promises.

- kernels/_build_config.check_tree refuses a tree where one translation unit could pick up the
  wrong source or header (the CPU/CUDA `paged_attention` clash that broke every CUDA build);
- kernels/_build_progress condenses ninja's output into [n/N] lines and shows failures whole;
- `polykernels --version` and `polykernels info --device ...` on a machine without that device
  answer with a sentence, not a traceback; `info` reports AMX / AVX512-FP16;
- every POLYKERNELS_* environment variable the code reads is documented in README.md.
"""
from __future__ import annotations

import glob
import importlib
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from polykernels import _build_config as cfg
acc = importlib.import_module("polykernels.dispatch.accelerator")  # the module, not pk.accelerator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "kernels")
BINDINGS = os.path.join(ROOT, "bindings")


# --------------------------------------------------------------------------- build tree rules
def test_repository_tree_passes_its_own_check():
    cfg.check_tree(PKG, BINDINGS)
    cpu_only = cfg.sources(PKG, BINDINGS, with_cuda=False)
    with_cuda = cfg.sources(PKG, BINDINGS, with_cuda=True)
    assert not any(s.endswith(".cu") or os.path.basename(s).startswith("cuda_") for s in cpu_only)
    extra = sorted(os.path.relpath(s, ROOT) for s in set(with_cuda) - set(cpu_only))
    assert extra == ["bindings/cuda_paged_attention.cpp", "kernels/cuda/paged_decode.cu"]
    stems = [os.path.splitext(os.path.basename(s))[0] for s in with_cuda]
    assert len(stems) == len(set(stems))
    assert cfg.include_dirs(PKG) == [PKG]


def _tree(tmp_path, files):
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path / "kernels"), str(tmp_path / "bindings")


GOOD = {
    "kernels/cpu/attn.cpp": '#include "attn.h"\n', "kernels/cpu/attn.h": "",
    "kernels/cuda/decode.cu": '#include "decode.h"\n', "kernels/cuda/decode.h": "",
    "bindings/cpu_attn.cpp": '#include "checks.h"\n#include "cpu/attn.h"\n',
    "bindings/cuda_decode.cpp": '#include "cuda/decode.h"\n', "bindings/checks.h": "",
}


def test_check_tree_accepts_a_clean_tree(tmp_path):
    pkg, bnd = _tree(tmp_path, GOOD)
    cfg.check_tree(pkg, bnd)
    assert [os.path.basename(s) for s in cfg.sources(pkg, bnd, with_cuda=False)] == \
        ["attn.cpp", "cpu_attn.cpp"]


@pytest.mark.parametrize("extra, expected", [
    # the historical clash: one stem for a CPU source and a CUDA source
    ({"kernels/cuda/attn.cu": ""}, r"kernels/cpu/attn.cpp and .*kernels/cuda/attn.cu share the source name 'attn'"),
    # two headers of one name that an include path could confuse
    ({"kernels/cuda/attn.h": ""}, r"share the header name 'attn.h'"),
    ({"bindings/attn.h": ""}, r"share the header name 'attn.h'"),
    # a bindings file including a kernel header without its folder
    ({"bindings/cpu_more.cpp": '#include "attn.h"\n'}, r'includes "attn.h" unqualified: write "cpu/attn.h"'),
    ({"bindings/cpu_more.cpp": '  #  include "cpu/missing.h"\n'}, r'includes "cpu/missing.h", which is not under'),
])
def test_check_tree_refuses_confusable_files(tmp_path, extra, expected):
    pkg, bnd = _tree(tmp_path, {**GOOD, **extra})
    with pytest.raises(RuntimeError, match=expected):
        cfg.sources(pkg, bnd, with_cuda=True)


# --------------------------------------------------------------------------- build progress
PROGRESS_SCRIPT = r"""
import os, subprocess, sys
sys.path.insert(0, {pkg!r})
import _build_progress as progress
fake_ninja = '''
echo "[1/3] c++ -MMD -O3 -c /src/kernels/cpu/gemm.cpp -o /b/gemm.o"
echo "/usr/include/torch/x.h:1:2: warning: something in torch's headers [-Wfoo]"
echo "[2/3] /usr/local/cuda/bin/nvcc -O3 -c /src/kernels/cuda/paged_decode.cu -o /b/paged_decode.cuda.o"
echo "[3/3] c++ -MMD -O3 -c /src/bindings/cpu_matmul.cpp -o /b/cpu_matmul.o"
echo "FAILED: /b/cpu_matmul.o"
echo "/src/bindings/cpu_matmul.cpp:7:1: error: expected ';' before '}}' token"
echo "ninja: build stopped: subcommand failed."
'''
with progress.NinjaProgress({log!r}):
    subprocess.run(["sh", "-c", fake_ninja], stdout=1, check=True)
    print("python print inside", flush=True)
print("after")
"""


def test_ninja_progress_condenses_and_shows_failures(tmp_path):
    log = tmp_path / "build.log"
    proc = subprocess.run([sys.executable, "-c", PROGRESS_SCRIPT.format(pkg=PKG, log=str(log))],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert re.search(r"polykernels: \[1/3\] cpu/gemm.cpp \(0:0\d\)", err), err
    assert re.search(r"polykernels: \[2/3\] cuda/paged_decode.cu", err), err
    assert re.search(r"polykernels: \[3/3\] bindings/cpu_matmul.cpp", err), err
    assert "FAILED: /b/cpu_matmul.o" in err and "error: expected ';'" in err   # failure shown whole
    assert "something in torch's headers" not in err                          # warning counted
    assert "1 compiler warning line(s) not shown" in err and str(log) in err
    full = log.read_text()
    assert "something in torch's headers" in full and "-c /src/kernels/cpu/gemm.cpp" in full
    assert proc.stdout == "after\n"          # descriptor 1 is restored afterwards


def test_estimate_and_announce_say_how_long(capsys, monkeypatch):
    from polykernels import _build_progress as progress
    monkeypatch.setenv("MAX_JOBS", "2")
    sources = cfg.sources(PKG, BINDINGS, with_cuda=False)
    secs = progress.estimate_seconds(sources, 2)
    assert 20 < secs < 600
    assert progress.estimate_seconds(sources, 1) == pytest.approx(2 * secs)
    progress.announce(sources, "/cache/dir")
    err = capsys.readouterr().err
    assert re.search(rf"building the C\+\+ extension, {len(sources)} C\+\+ sources, in "
                     r"/cache/dir: a full compile takes about \d+:\d\d with \d parallel job", err), err


# --------------------------------------------------------------------------- command line
def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "polykernels", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_version():
    import polykernels as pk
    proc = _cli("--version", timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"polykernels {pk.__version__}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: --device cuda is usable here")
def test_info_device_cuda_without_gpu_is_a_sentence():
    proc = _cli("info", "--device", "cuda")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr, proc.stderr
    if torch.version.cuda or torch.version.hip:
        assert "sees no GPU here" in proc.stderr
    else:
        assert f"this torch ({torch.__version__}) is a CPU-only build" in proc.stderr
    assert "AMX:" in proc.stdout   # what can be said about this machine is still said


def test_info_unknown_device_is_a_sentence():
    proc = _cli("info", "--device", "gpu0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'gpu0' is not a torch device name" in proc.stderr


SAPPHIRE_RAPIDS = textwrap.dedent("""\
    processor\t: 0
    model name\t: Intel(R) Xeon(R) Platinum 8480+
    flags\t\t: fpu sse avx2 fma f16c avx512f avx512bw avx512vl avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
    processor\t: 1
    model name\t: Intel(R) Xeon(R) Platinum 8480+
    flags\t\t: fpu sse avx2
""")


def test_cpuinfo_parsing_and_info_report_amx_and_fp16(monkeypatch, capsys):
    from polykernels import __main__ as cli
    model, flags = acc.parse_cpuinfo(SAPPHIRE_RAPIDS)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"amx_tile", "amx_bf16", "amx_int8", "avx512_fp16", "avx512_bf16"} <= flags
    assert "fpu" not in flags   # only the flags that pick kernel paths
    monkeypatch.setattr(acc, "cpu_features", lambda: (model, flags))
    cli._print_cpu()
    out = capsys.readouterr().out
    assert "AMX: yes (amx_bf16, amx_int8, amx_tile)" in out and "AVX512-FP16: yes" in out
    monkeypatch.setattr(acc, "cpu_features", lambda: ("AMD EPYC", frozenset({"avx2", "fma"})))
    cli._print_cpu()
    out = capsys.readouterr().out
    assert "AMX: no" in out and "AVX512-FP16: no" in out


def test_this_machines_cpu_features_match_proc_cpuinfo():
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo on this OS")
    flags = set()
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    assert acc.cpu_features()[1] == frozenset(f for f in acc.CPU_FEATURES if f in flags)


# --------------------------------------------------------------------------- README promises
def _env_vars_read_by_the_code():
    names = set()
    for pattern in ("kernels/**/*.py", "kernels/**/*.h", "kernels/**/*.cpp", "bindings/*.cpp",
                    "benchmarks/*.py", "benchmarks/*.sh", "setup.py", ".ci/run"):
        for path in glob.glob(os.path.join(ROOT, pattern), recursive=True):
            with open(path, encoding="utf-8") as fh:
                names |= set(re.findall(r"\b(POLYKERNELS_[A-Z_]+)\b", fh.read()))
    return names


def test_every_environment_variable_is_documented_in_readme():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    names = _env_vars_read_by_the_code()
    assert {"POLYKERNELS_IMPL", "POLYKERNELS_NO_CUDA", "POLYKERNELS_FORCE_JIT",
            "POLYKERNELS_NO_EXTENSION"} <= names
    missing = sorted(n for n in names if f"`{n}" not in readme)
    assert not missing, f"README.md does not document: {missing}"


def _readme_commands():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    return [readme.split(marker, 1)[1].split("```bash\n", 1)[1].split("\n", 1)[0]
            for marker in ("<!-- bench-command -->", "<!-- test-command -->")]


def test_readme_commands_show_build_progress():
    for cmd in _readme_commands():
        assert "pip install -v --no-build-isolation -e " in cmd, \
            f"pip shows the extension build's progress lines only with -v: {cmd}"


def test_installed_build_is_up_to_date_so_a_reinstall_only_relinks():
    """README's second command reinstalls the package after the first built it: setup.py keeps
    the objects in one folder per (python, torch, cpu|cuda), so ninja must find nothing to do
    there for the extension this process loaded (a real `ninja -n`, not a file check)."""
    import polykernels._C as C
    if not os.path.abspath(C.__file__).startswith(PKG + os.sep):
        pytest.skip(f"polykernels._C was not built from this tree by an editable install ({C.__file__})")
    flavour = "cuda" if torch._C._dispatch_has_kernel_for_dispatch_key(
        "polykernels_C::cuda_paged_attention", "CUDA") else "cpu"
    obj_dir = os.path.join(ROOT, "build", f"obj-{sys.implementation.cache_tag}-torch{torch.__version__}-{flavour}")
    assert os.path.exists(os.path.join(obj_dir, "build.ninja")), f"no object folder {obj_dir}"
    ninja = shutil.which("ninja")
    assert ninja, "ninja is a test dependency (pyproject [test])"
    proc = subprocess.run([ninja, "-n", "-C", obj_dir], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "no work to do" in proc.stdout, proc.stdout[-2000:]


# --------------------------------------------------------------------------- pure installs
def test_plain_pip_install_makes_a_pure_wheel_and_says_so(tmp_path):
    """`pip install .` (build isolation: no torch in the build environment) must not fail and
    must say that the C++ kernels will be JIT-built on first use."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.so", "__pycache__", "*.egg-info", ".pytest_cache"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w",
                           str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    wheels = list((tmp_path / "dist").glob("polykernels-*.whl"))
    assert len(wheels) == 1 and wheels[0].name.endswith("-py3-none-any.whl"), wheels
    assert "this is a pure-Python wheel, and the C++ kernels will be JIT-compiled on first use" in log


NO_PREBUILT = r"""
import importlib.abc, sys
class NoPrebuilt(importlib.abc.MetaPathFinder):   # as if the wheel had no polykernels._C
    def find_spec(self, name, path=None, target=None):
        if name == "polykernels._C":
            raise ModuleNotFoundError("No module named 'polykernels._C'", name=name)
sys.meta_path.insert(0, NoPrebuilt())
from polykernels import _extension
print(_extension.load() is None)
"""


def test_missing_prebuilt_extension_is_explained_at_first_use():
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYKERNELS_")}
    env["POLYKERNELS_NO_JIT"] = "1"   # stop before compiling: only the message is checked
    proc = subprocess.run([sys.executable, "-c", NO_PREBUILT], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr
    assert "this install has no prebuilt C++ extension (a pure wheel" in proc.stderr
    assert "pip install --no-build-isolation ." in proc.stderr


def test_the_test_extras_are_installed():
    """tests/test_properties.py skips itself without hypothesis (the GPU machine runs `-m gpu`
    with no extras); everywhere the full suite runs, README's command installs '.[test]', so
    a missing hypothesis here is an install problem, not a reason to skip the fuzzing."""
    import importlib.util
    assert importlib.util.find_spec("hypothesis") is not None, "pip install -e '.[test]'"
