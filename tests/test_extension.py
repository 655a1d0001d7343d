"""Loading the C++ extension: the ahead-of-time build, the JIT build, and no build at all.

The JIT case compiles every kernels/cpu/*.cpp and bindings/*.cpp into a fresh temporary cache
directory (minutes on a small machine): it runs once, in a subprocess, with a long timeout.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import torch

from polykernels import _extension


def _run(script, env_extra, timeout):
    env = dict(os.environ)
    for var in ("POLYKERNELS_FORCE_JIT", "POLYKERNELS_NO_JIT", "POLYKERNELS_CACHE_DIR",
                "POLYKERNELS_IMPL"):
        env.pop(var, None)
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_aot_build_importable():
    import polykernels._C  # noqa: F401  (the build installed with the package)
    assert _extension.load() is not None
    assert _extension.unavailable_reason() is None
    assert hasattr(torch.ops.polykernels_C, "merge_attention_states")


CHECK_OP = """
    import json, os, sys, torch
    import polykernels as pk
    from polykernels import _extension
    mod = _extension.load()
    out_a = torch.randn(3, 2, 8); out_b = torch.randn(3, 2, 8)
    lse_a = torch.randn(2, 3); lse_b = torch.randn(2, 3)
    want = pk.reference.merge_attention_states(out_a, lse_a, out_b, lse_b)
    d = pk.explain("merge_attention_states", out_a, lse_a, out_b, lse_b)
    got = pk.merge_attention_states(out_a, lse_a, out_b, lse_b)
    maps = open("/proc/self/maps").read()
    res = {
        "loaded": mod is not None,
        "reason": _extension.unavailable_reason(),
        "chosen": d.chosen.label,
        "refused": d.refused,
        "err": max((got[0] - want[0]).abs().max().item(), (got[1] - want[1]).abs().max().item()),
        "aot_imported": "polykernels._C" in sys.modules,
        "so_in_cache": any(os.environ.get("POLYKERNELS_CACHE_DIR", "@none@") in line and ".so" in line
                           for line in maps.splitlines()),
    }
    if mod is not None:
        direct = torch.ops.polykernels_C.merge_attention_states(out_a, lse_a, out_b, lse_b)
        res["direct_err"] = (direct[0] - want[0]).abs().max().item()
    print(json.dumps(res))
"""


def test_jit_build_compiles_and_works(tmp_path):
    cache = tmp_path / "pk-cache"
    res, stderr = _run(CHECK_OP, {"POLYKERNELS_FORCE_JIT": "1", "POLYKERNELS_CACHE_DIR": str(cache)},
                       timeout=1500)
    assert "polykernels: building the C++ extension" in stderr and str(cache) in stderr
    assert re.search(r"\[\d+/\d+\] cpu/gemm.cpp", stderr), "no build progress lines"
    assert res["loaded"] and res["reason"] is None
    assert not res["aot_imported"], "FORCE_JIT must not import the ahead-of-time build"
    assert res["so_in_cache"], "the JIT-built library must come from POLYKERNELS_CACHE_DIR"
    assert res["chosen"] == "cpp@cpu"
    assert res["err"] < 1e-5 and res["direct_err"] < 1e-5
    built = [p for p in cache.rglob("*.so")]
    assert built and all(str(p).startswith(str(cache)) for p in built)


def test_no_jit_falls_back_to_reference(tmp_path):
    cache = tmp_path / "unused-cache"
    res, stderr = _run(CHECK_OP, {"POLYKERNELS_FORCE_JIT": "1", "POLYKERNELS_NO_JIT": "1",
                                  "POLYKERNELS_CACHE_DIR": str(cache)}, timeout=300)
    assert not res["loaded"] and "C++ extension unavailable" in res["reason"]
    assert res["chosen"] == "reference@reference"
    assert "C++ extension unavailable" in res["refused"]["cpp@cpu"]
    assert res["err"] == 0.0                                  # it *is* the reference
    assert "compiling" not in stderr and not cache.exists()
    # logged once, on the "polykernels" logger (stderr through logging's last resort)
    assert stderr.count("C++ extension unavailable, C++ impls disabled") == 1


def test_default_cpu_path_prefers_fp32_fma_on_intel():
    """The default C++ path: the best the CPU supports, except AVX512-BF16 on Intel, where
    vdpbf16ps runs at half the fp32 FMA rate (cpu_isa.h); forcing still reaches every path."""
    _extension.load()
    ops = torch.ops.polykernels_C
    rule = ops.default_cpu_isa_for
    assert rule("avx512_bf16", True) == "avx512"
    assert rule("avx512_bf16", False) == "avx512_bf16"
    for isa in ("scalar", "avx2", "avx512"):
        assert rule(isa, True) == isa and rule(isa, False) == isa
    intel = "GenuineIntel" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
    assert ops.default_cpu_isa() == rule(ops.detected_cpu_isa(), intel)
    if "POLYKERNELS_CPU_ISA" not in os.environ:
        assert ops.cpu_isa() == ops.default_cpu_isa()
    try:
        assert ops.set_cpu_isa(ops.detected_cpu_isa()) == ops.detected_cpu_isa()
    finally:
        ops.set_cpu_isa(ops.default_cpu_isa())
