"""Plugins through real entry points.

tests/fixtures/plugin_site holds two installed-looking distributions (package + *.dist-info
with METADATA and entry_points.txt, group ``polykernels.backends``): ``good`` registers a
backend and a high-priority matmul impl returning a @ b + 1000; ``broken`` raises on load.
Each case runs in a fresh interpreter with that folder on sys.path, so the global registry
starts empty and the test process's registry is never touched.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SITE = os.path.join(os.path.dirname(__file__), "fixtures", "plugin_site")

SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    import polykernels as pk
    from polykernels.dispatch import registry
    lazy = "pk_test_plugin" not in sys.modules and "pk_test_broken" not in sys.modules
    a = torch.ones(2, 3); b = torch.ones(3, 4)
    out = pk.matmul(a, b)
    print(json.dumps({
        "lazy": lazy,
        "out": out[0, 0].item(),
        "chosen": pk.explain("matmul", a, b).chosen.label,
        "loaded": registry.loaded_plugins,
        "errors": registry.load_errors,
        "backends": sorted(b["name"] for b in pk.backends()),
    }))
""")


def run_with_plugins(plugins_env):
    env = dict(os.environ)
    env["PYTHONPATH"] = SITE + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("POLYKERNELS_IMPL", None)
    if plugins_env is None:
        env.pop("POLYKERNELS_PLUGINS", None)
    else:
        env["POLYKERNELS_PLUGINS"] = plugins_env
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_fixture_entry_points_are_visible():
    from importlib import metadata
    sys.path.insert(0, SITE)
    try:
        dists = {d.metadata["Name"]: d for d in metadata.distributions(path=[SITE])}
        assert {"pk-test-plugin", "pk-test-broken"} <= set(dists)
        eps = [ep for d in dists.values() for ep in d.entry_points if ep.group == "polykernels.backends"]
        assert sorted(ep.name for ep in eps) == ["broken", "good"]
    finally:
        sys.path.remove(SITE)


def test_all_plugins_good_chosen_broken_logged_and_skipped():
    res, stderr = run_with_plugins(None)
    assert res["lazy"], "plugins must load on first dispatch, not at import"
    assert res["out"] == 1003.0                      # the plugin's impl ran: 3 + 1000
    assert res["chosen"] == "testchip@testchip"
    assert res["loaded"] == ["good"]
    assert "testchip firmware not found" in res["errors"]["plugin broken"]
    assert "testchip" in res["backends"]
    assert "plugin 'broken' failed to load" in stderr and "testchip firmware not found" in stderr


def test_plugins_disabled_by_empty_env():
    res, stderr = run_with_plugins("")
    assert res["out"] == 3.0 and res["loaded"] == [] and "testchip" not in res["backends"]
    assert not any(k.startswith("plugin") for k in res["errors"])
    assert "firmware" not in stderr


def test_only_named_plugin_loaded():
    res, stderr = run_with_plugins(" good , nonexistent ")
    assert res["out"] == 1003.0 and res["loaded"] == ["good"]
    assert "plugin broken" not in res["errors"] and "firmware" not in stderr
