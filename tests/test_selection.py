"""Measured selection (kernels/dispatch/selection.py) and the registry's thread safety.

Fake impls with known costs (sleeps) in fresh registries, so nothing depends on how fast this
machine is: the faster one must win, the table must persist and reload, a new fingerprint
must measure anew, tracing must not measure, written arguments must be measured on copies,
and explicit choices / loading must be safe across threads.
"""
from __future__ import annotations

import importlib
import threading
import time

import pytest
import torch

import polykernels as pk
from polykernels.dispatch import Backend, NoImplError, Registry, use

selection = importlib.import_module("polykernels.dispatch.selection")
registry_mod = importlib.import_module("polykernels.dispatch.registry")


@pytest.fixture(autouse=True)
def _measure(monkeypatch, tmp_path):
    monkeypatch.setenv("POLYKERNELS_SELECT", "measure")
    monkeypatch.setenv("POLYKERNELS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("POLYKERNELS_IMPL", raising=False)
    monkeypatch.delenv("POLYKERNELS_SELECT_BUDGET_MS", raising=False)
    selection.TABLE.forget()
    yield
    selection.TABLE.forget()


def sleeper(tag, ms, calls):
    def fn(x):
        calls.append(tag)
        time.sleep(ms / 1e3)
        return (tag, x.shape[0])
    return fn


def registry_with(costs: dict[str, float], calls: list):
    r = Registry()
    r.register_backend(Backend("cpu", ("cpu",), lambda: True))
    r.register_backend(Backend("reference", ("*",), lambda: True, priority=-1))
    for i, (tag, ms) in enumerate(costs.items()):
        r.register_impl("op", tag, backends="cpu", fn=sleeper(tag, ms, calls), priority=100 - i)
    r.register_impl("op", "ref", backends="reference", fn=sleeper("ref", 0, calls))
    return r


def x_of(n=4):
    return torch.zeros(n, 3)


def test_the_faster_impl_wins_and_the_reference_is_never_timed():
    calls = []
    r = registry_with({"slow": 12.0, "fast": 1.0}, calls)   # priority prefers "slow"
    assert r.call("op", x_of())[0] == "fast"
    assert "ref" not in calls                                 # the last resort is not measured
    d = r.explain("op", (x_of(),))
    assert d.how == "measured" and [i.name for i in d.candidates] == ["fast", "slow", "ref"]
    assert d.times_ms["fast@cpu"] < d.times_ms["slow@cpu"]
    assert "fast@cpu" in str(d) and " ms" in str(d)
    n = len(calls)
    r.call("op", x_of())                                      # cached: no more measuring
    assert calls[n:] == ["fast"]


def test_priority_policy_keeps_the_fixed_order(monkeypatch):
    monkeypatch.setenv("POLYKERNELS_SELECT", "priority")
    calls = []
    r = registry_with({"slow": 5.0, "fast": 1.0}, calls)
    assert r.call("op", x_of())[0] == "slow" and calls == ["slow"]
    assert r.explain("op", (x_of(),)).how == "priority"
    monkeypatch.setenv("POLYKERNELS_SELECT", "fastest")
    r.reset_caches()
    with pytest.raises(ValueError, match="POLYKERNELS_SELECT: expected 'measure' or 'priority'"):
        r.call("op", x_of())


def test_explicit_choice_wins_over_measurement():
    calls = []
    r = registry_with({"slow": 5.0, "fast": 1.0}, calls)
    with use(op="slow"):
        assert r.call("op", x_of())[0] == "slow"
        assert r.explain("op", (x_of(),)).how == "explicit choice"
    assert calls == ["slow"]                                  # nothing was measured


def test_table_persists_reloads_and_fingerprint_change_measures_anew(monkeypatch, tmp_path):
    calls = []
    registry_with({"slow": 8.0, "fast": 1.0}, calls).call("op", x_of())
    files = list((tmp_path / "cache" / "selection").glob("cpu-*.json"))
    assert len(files) == 1
    selection.TABLE.forget()                                  # as a new process would
    calls.clear()
    r2 = registry_with({"slow": 8.0, "fast": 1.0}, calls)
    d = r2.explain("op", (x_of(),))
    assert d.how == "measured (table)" and d.chosen.name == "fast" and calls == []
    monkeypatch.setattr(selection, "fingerprint", lambda device: "another-machine")
    selection.TABLE.forget()
    r3 = registry_with({"slow": 8.0, "fast": 1.0}, calls)
    assert r3.explain("op", (x_of(),)).how == "measured" and calls   # measured again
    assert len(list((tmp_path / "cache" / "selection").glob("cpu-*.json"))) == 2


def test_fingerprint_changes_with_the_kernel_code(monkeypatch, tmp_path):
    # a rebuilt kernel with the same version number must not reuse the old measurements
    extension = importlib.import_module("polykernels._extension")
    src = tmp_path / "bindings"
    src.mkdir()
    (src / "kernel.cpp").write_text("int f() { return 1; }")
    monkeypatch.setattr(extension, "_bindings_dir", lambda: str(src))
    monkeypatch.setattr(selection, "_code_digest_memo", [])
    before = selection.fingerprint(torch.device("cpu"))
    assert selection.fingerprint(torch.device("cpu")) == before          # stable
    (src / "kernel.cpp").write_text("int f() { return 2; }")
    monkeypatch.setattr(selection, "_code_digest_memo", [])
    assert selection.fingerprint(torch.device("cpu")) != before


def test_no_measuring_while_tracing(monkeypatch):
    calls = []
    r = registry_with({"slow": 3.0, "fast": 1.0}, calls)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    d = r.explain("op", (x_of(),))
    assert d.how.startswith("priority (torch.compile is tracing") and not d.final
    assert r.call("op", x_of())[0] == "slow" and calls == ["slow"]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    assert r.call("op", x_of())[0] == "fast"                  # revisited once allowed
    assert r.explain("op", (x_of(),)).how == "measured"


def test_fake_tensors_are_never_measured():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        fake = torch.empty(4, 3)
    assert selection.why_not_measure((fake,)) == "fake or meta tensors"
    assert selection.why_not_measure((torch.empty(2, device="meta"),)) == "fake or meta tensors"
    assert selection.why_not_measure((torch.empty(2),)) is None


def test_written_arguments_are_measured_on_copies():
    """write_kv_cache's caches (found from its schema) must be untouched by measuring runs."""
    assert selection.written_args("write_kv_cache") == (2, 3)
    seen = []

    def writer(tag, ms):
        def fn(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale):
            seen.append((tag, k_cache.data_ptr()))
            time.sleep(ms / 1e3)
            k_cache.fill_(7.0)
            v_cache.fill_(7.0)
        return fn
    r = Registry()
    r.register_backend(Backend("cpu", ("cpu",), lambda: True))
    r.register_impl("write_kv_cache", "a", backends="cpu", fn=writer("a", 3.0), priority=100)
    r.register_impl("write_kv_cache", "b", backends="cpu", fn=writer("b", 0.5), priority=90)
    k = torch.randn(3, 2, 8)
    kc, vc = torch.zeros(4, 4, 2, 8), torch.zeros(4, 4, 2, 8)
    args = (k, k, kc, vc, torch.arange(3), 1.0, 1.0)
    r.decide("write_kv_cache", args)
    assert len(seen) >= 4 and all(ptr != kc.data_ptr() for _, ptr in seen)
    assert kc.abs().max() == 0 and vc.abs().max() == 0       # the caller's caches untouched
    r.call("write_kv_cache", *args)                           # the real call writes
    assert seen[-1] == ("b", kc.data_ptr()) and (kc == 7).all()


def test_an_impl_that_raises_while_measured_is_dropped_not_chosen():
    calls = []
    r = registry_with({"broken": 0.0, "ok": 2.0}, calls)

    def broken(x):
        raise RuntimeError("launch failed")
    r.register_impl("op", "broken", backends="cpu", fn=broken, priority=100)
    d = r.explain("op", (x_of(),))
    assert d.chosen.name == "ok" and "raised while being measured" in d.refused["broken@cpu"]


def test_decision_cache_is_bounded_and_floats_do_not_grow_it(monkeypatch):
    monkeypatch.setenv("POLYKERNELS_SELECT", "priority")
    r = Registry()
    r.register_backend(Backend("cpu", ("cpu",), lambda: True))
    r.register_impl("op", "a", backends="cpu", fn=lambda x, scale, n: scale, priority=1)
    for i in range(2000):
        r.call("op", x_of(), 0.5 + i * 1e-3, 1000 + i)       # distinct scales and lengths
    assert len(r._cache) <= 4                                  # lengths bucket to powers of two
    monkeypatch.setattr(registry_mod, "MAX_CACHED_DECISIONS", 16)
    for n in range(1, 200):
        r.call("op", torch.zeros(n, 3), 0.5, 1)
    assert len(r._cache) <= 16


# -- thread safety of explicit choice and loading -----------------------------------------------
def test_explicit_choice_during_first_load_and_registration():
    """pk.use / POLYKERNELS_IMPL used to raise NoImplError while another thread was loading
    the impls or registering one (the registry looked empty for a moment)."""
    for trial in range(8):
        r = Registry()
        r.register_backend(Backend("cpu", ("cpu",), lambda: True))

        def loader():
            time.sleep(0.02)
            r.register_impl("op", "a", backends="cpu", fn=lambda x: "a", priority=10)
            r.register_impl("op", "b", backends="cpu", fn=lambda x: "b", priority=5)
        r.add_loader(loader)
        errors, results, first_result = [], [], []

        def first():
            try:
                first_result.append(r.call("op", x_of()))
            except Exception as e:
                errors.append(e)

        def chooser():
            try:
                with use(op="b"):
                    for _ in range(50):
                        results.append(r.call("op", x_of()))
            except Exception as e:
                errors.append(e)

        def registrar():
            try:
                for i in range(50):
                    r.register_impl("op", "c", backends="cpu", fn=lambda x: "c", priority=1)
            except Exception as e:
                errors.append(e)
        threads = [threading.Thread(target=f) for f in (first, chooser, registrar)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, f"trial {trial}: {errors!r}"
        assert results == ["b"] * 50 and first_result[0] in ("a", "b", "c")


# -- the real ops -------------------------------------------------------------------------------
def test_real_op_measured_between_the_runnable_providers():
    a, b = torch.randn(64, 96), torch.randn(96, 80)
    d = pk.explain("matmul", a, b)
    timed = [i for i in d.candidates if d.priorities[i.label] > 0]   # effective priority
    if len(timed) < 2:
        pytest.skip(f"only {len(timed)} measurable matmul impl(s) on this machine: {d}")
    assert d.how in ("measured", "measured (table)")
    assert set(d.times_ms) == {i.label for i in timed}
    torch.testing.assert_close(pk.matmul(a, b), a @ b, rtol=1e-4, atol=1e-4)


def test_compiled_call_matches_eager_under_measurement():
    a, b = torch.randn(33, 40), torch.randn(40, 17)
    f = torch.compile(lambda a, b: pk.matmul(a, b, activation="relu"), fullgraph=True)
    torch.testing.assert_close(f(a, b), torch.relu(a @ b), rtol=1e-4, atol=1e-4)


def test_measuring_under_inference_mode():
    calls = []
    r = registry_with({"slow": 4.0, "fast": 0.5}, calls)
    with torch.inference_mode():
        assert r.call("op", x_of())[0] == "fast"
    assert r.explain("op", (x_of(),)).how == "measured"


def test_interpreted_triton_is_never_timed(monkeypatch):
    """Under TRITON_INTERPRET=1 a Triton impl registered at priority 100 runs at a priority far
    below 0 on CPU tensors: it must stay out of the measurement, like the reference."""
    calls = []
    r = registry_with({"cpp": 2.0, "torch": 1.0}, calls)
    r.register_backend(Backend("nvidia", ("cuda",), lambda: False))
    r.register_impl("op", "triton", backends="nvidia", fn=sleeper("triton", 0, calls),
                    priority=100, interpretable=True)
    monkeypatch.setattr(registry_mod, "interpreting", lambda: True)
    d = r.explain("op", (x_of(),))
    assert d.how == "measured" and "triton" not in calls
    assert [i.name for i in d.candidates] == ["torch", "cpp", "ref", "triton"]
    assert d.priorities["triton@nvidia"] < 0


def test_the_priority_choice_keeps_its_place_unless_clearly_beaten():
    by_priority = ["cpp", "torch", "triton"]
    # within the 5% margin: noise on a shared machine, the registry's choice stays first
    assert selection.measured_order({"cpp": 10.4, "torch": 10.0}, by_priority) == ["cpp", "torch"]
    # beyond it: the faster one goes first
    assert selection.measured_order({"cpp": 10.6, "torch": 10.0}, by_priority) == ["torch", "cpp"]
    # the incumbent is the first of the priority order that was timed (cpp raised here)
    assert selection.measured_order({"torch": 5.1, "triton": 5.0}, by_priority) == ["torch", "triton"]
    assert selection.measured_order({"torch": 1.0, "cpp": 2.0, "triton": 3.0}, by_priority) == \
        ["torch", "cpp", "triton"]
