"""Importing polykernels does no device work, imports no Triton and loads/compiles no C++.

Runs in a fresh interpreter: torch's CUDA device functions are replaced by ones that raise,
process creation is recorded (a JIT build would spawn ninja / the compiler), and afterwards
the script reports what got imported and which shared objects got mapped.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, os, subprocess, sys
    import torch

    touched = []
    def forbid(name):
        def f(*a, **k):
            touched.append(name)
            raise RuntimeError(f"torch.cuda.{name} called during import")
        return f
    for name in ("is_available", "device_count", "current_device", "get_device_properties",
                 "_lazy_init", "init"):
        setattr(torch.cuda, name, forbid(name))

    spawned = []
    real_popen_init = subprocess.Popen.__init__
    def popen_init(self, args, *a, **k):
        spawned.append(str(args)[:200])
        return real_popen_init(self, args, *a, **k)
    subprocess.Popen.__init__ = popen_init
    real_system = os.system
    os.system = lambda cmd: spawned.append(cmd) or real_system(cmd)
    import torch.utils.cpp_extension as cpp_ext
    def no_load(*a, **k):
        spawned.append("cpp_extension.load")
        raise RuntimeError("JIT build during import")
    cpp_ext.load = no_load

    import polykernels as pk
    import polykernels.ops, polykernels.reference, polykernels.dispatch  # noqa: F401
    import polykernels.reference.quant  # noqa: F401
    api = [pk.attention, pk.matmul, pk.explain, pk.use, pk.quantize_weight]  # attribute access
    with open("/proc/self/maps") as fh:
        maps = fh.read()
    pkg_dir = os.path.dirname(pk.__file__)
    print(json.dumps({
        "touched": touched,
        "spawned": spawned,
        "triton": sorted(m for m in sys.modules if m == "triton" or m.startswith("triton.")),
        "ext_modules": sorted(m for m in sys.modules if m in ("polykernels._C", "polykernels_C_jit")),
        "ext_mapped": [line for line in maps.splitlines() if pkg_dir in line and ".so" in line][:3],
        "registry_loaded": pk._registry._loaded,
    }))
""")


def test_import_is_lean():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)   # as in a user's process
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["touched"] == [], f"device functions called at import: {res['touched']}"
    assert res["spawned"] == [], f"processes spawned at import: {res['spawned']}"
    assert res["triton"] == [], f"triton imported at import: {res['triton'][:5]}"
    assert res["ext_modules"] == [] and res["ext_mapped"] == [], res
    assert res["registry_loaded"] is False, "built-in impl modules must load on first dispatch"
