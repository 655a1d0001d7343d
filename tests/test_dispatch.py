"""The dispatch registry: selection, explain, explicit choice, failover, caching, threads.

Most tests use a fresh ``Registry()`` with test backends and impls, so the process-wide one
is untouched; the end-to-end tests through ``pk`` patch the global registry and restore it.
"""
from __future__ import annotations

import importlib
import logging
import threading

import pytest
import torch

import polykernels as pk
from polykernels import dispatch as D
from polykernels.dispatch import Backend, NoImplError, Registry, use

# The module (polykernels.dispatch.registry is the global Registry instance's attribute name).
registry_mod = importlib.import_module("polykernels.dispatch.registry")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("POLYKERNELS_IMPL", "POLYKERNELS_STRICT"):
        monkeypatch.delenv(var, raising=False)


def make_registry():
    r = Registry()
    r.register_backend(Backend("cpu", ("cpu",), lambda: True, priority=0))
    r.register_backend(Backend("gpu", ("cuda",), lambda: False, priority=0))
    r.register_backend(Backend("reference", ("*",), lambda: True, priority=-1))
    return r


def tagged(tag, calls=None):
    def fn(x):
        if calls is not None:
            calls.append(tag)
        return (tag, x.shape[0])
    return fn


def x_of(n=4, dtype=torch.float32):
    return torch.zeros(n, 3, dtype=dtype)


# -- selection ----------------------------------------------------------------------------------
def test_selection_by_priority_and_backend_tiebreak():
    r = make_registry()
    r.register_impl("op", "low", backends="cpu", fn=tagged("low"), priority=10)
    r.register_impl("op", "high", backends="cpu", fn=tagged("high"), priority=50)
    r.register_impl("op", "mid", backends="cpu", fn=tagged("mid"), priority=30)
    r.register_impl("op", "ref", backends="reference", fn=tagged("ref"), priority=30)
    _, decision = r.decide("op", (x_of(),))
    # equal impl priority 30: backend priority breaks the tie (cpu 0 > reference -1)
    assert [i.name for i in decision.candidates] == ["high", "mid", "ref", "low"]
    assert r.call("op", x_of())[0] == "high"


def test_unavailable_backend_and_other_device_refused_with_reason():
    r = make_registry()
    r.register_impl("op", "gpuimpl", backends="gpu", fn=tagged("gpu"), priority=999)
    r.register_impl("op", "ref", backends="reference", fn=tagged("ref"))
    d = r.explain("op", (x_of(),))
    assert d.chosen.name == "ref"
    assert "does not serve device type 'cpu'" in d.refused["gpuimpl@gpu"]
    r.register_backend(Backend("cpu2", ("cpu",), lambda: False))
    r.register_impl("op", "off", backends="cpu2", fn=tagged("off"), priority=999)
    d = r.explain("op", (x_of(),))
    assert "not available" in d.refused["off@cpu2"]


def test_supports_refusal_reason_in_explain():
    r = make_registry()
    r.register_impl("op", "fast", backends="cpu", fn=tagged("fast"), priority=100,
                    supports=lambda x: "fp16 not supported" if x.dtype == torch.float16 else None)
    r.register_impl("op", "ref", backends="reference", fn=tagged("ref"))
    assert r.explain("op", (x_of(),)).chosen.name == "fast"
    d = r.explain("op", (x_of(dtype=torch.float16),))
    assert d.chosen.name == "ref"
    assert d.refused == {"fast@cpu": "fp16 not supported"}
    text = str(d)
    assert "chose ref@reference" in text and "refused fast@cpu: fp16 not supported" in text
    assert r.call("op", x_of(dtype=torch.float16))[0] == "ref"


def test_supports_that_raises_is_a_refusal():
    r = make_registry()
    r.register_impl("op", "buggy", backends="cpu", fn=tagged("buggy"), priority=100,
                    supports=lambda x: 1 / 0)
    r.register_impl("op", "ref", backends="reference", fn=tagged("ref"))
    d = r.explain("op", (x_of(),))
    assert d.chosen.name == "ref" and "ZeroDivisionError" in d.refused["buggy@cpu"]


def test_unknown_op_and_unknown_backend():
    r = make_registry()
    with pytest.raises(NoImplError, match="no implementation registered for op 'nope'"):
        r.call("nope", x_of())
    with pytest.raises(ValueError, match="backend"):
        r.register_impl("op", "x", backends="missing", fn=tagged("x"))


def test_no_candidate_error_lists_reasons():
    r = make_registry()
    r.register_impl("op", "a", backends="cpu", fn=tagged("a"), supports=lambda x: "reason A")
    r.register_impl("op", "b", backends="gpu", fn=tagged("b"))
    with pytest.raises(NoImplError) as e:
        r.call("op", x_of())
    assert "reason A" in str(e.value) and "b@gpu" in str(e.value)


def test_reregistering_replaces_and_clears_cache():
    r = make_registry()
    r.register_impl("op", "a", backends="cpu", fn=tagged("a1"), priority=1)
    assert r.call("op", x_of())[0] == "a1"
    r.register_impl("op", "a", backends="cpu", fn=tagged("a2"), priority=1)
    assert r.call("op", x_of())[0] == "a2"
    assert len(r.impls["op"]) == 1


# -- explicit choice ----------------------------------------------------------------------------
def _two_impl_registry(calls=None):
    r = make_registry()
    r.register_impl("op", "fast", backends="cpu", fn=tagged("fast", calls), priority=100,
                    supports=lambda x: "too small" if x.shape[0] < 2 else None)
    r.register_impl("op", "ref", backends="reference", fn=tagged("ref", calls))
    return r


def test_explicit_choice_with_use():
    r = _two_impl_registry()
    with use(op="ref"):
        assert r.call("op", x_of())[0] == "ref"
        assert r.explain("op", (x_of(),)).chosen.name == "ref"
        with use(op="fast"):       # nested: inner wins, restored on exit
            assert r.call("op", x_of())[0] == "fast"
        assert r.call("op", x_of())[0] == "ref"
    assert r.call("op", x_of())[0] == "fast"


def test_explicit_choice_refused_lists_every_reason():
    r = _two_impl_registry()
    with use(op="fast"):
        with pytest.raises(NoImplError) as e:
            r.call("op", x_of(1))
    msg = str(e.value)
    assert "op='fast' was requested" in msg and "fast@cpu: too small" in msg
    with use(op="nonexistent"):
        with pytest.raises(NoImplError, match=r"no impl named 'nonexistent' \(registered: fast, ref\)"):
            r.call("op", x_of())


def test_explicit_choice_via_env(monkeypatch):
    r = _two_impl_registry()
    monkeypatch.setenv("POLYKERNELS_IMPL", " op=ref ")
    assert r.call("op", x_of())[0] == "ref"
    # X=impl also covers X_backward
    r.register_impl("op_backward", "ref", backends="reference", fn=tagged("ref_bwd"))
    r.register_impl("op_backward", "fast", backends="cpu", fn=tagged("fast_bwd"), priority=100)
    assert r.call("op_backward", x_of())[0] == "ref_bwd"
    # pk.use overrides the environment
    with use(op="fast"):
        assert r.call("op", x_of())[0] == "fast"


def test_explicit_choice_is_decided_once_per_input_class():
    """A pinned call in a loop must not re-run supports() on every call."""
    r = make_registry()
    checked = []
    r.register_impl("op", "fast", backends="cpu", fn=tagged("fast"), priority=100,
                    supports=lambda x: checked.append(x.shape[0]) or (None if x.shape[0] > 1 else "too small"))
    with use(op="fast"):
        for _ in range(3):
            assert r.call("op", x_of(4))[0] == "fast"
            with pytest.raises(NoImplError, match="too small"):
                r.call("op", x_of(1))
        assert r.explain("op", (x_of(4),)).how == "explicit choice"
    assert checked == [4, 1]


def test_invalid_input_raises_at_once_without_failover_or_demotion():
    """An impl that finds the input's values wrong (InvalidInputError) is right: no other impl
    may answer (it could only be one that does not check) and nothing is demoted."""
    r = make_registry()
    calls = []

    def checking(x):
        calls.append("checking")
        if x.shape[0] == 1:
            raise pk.InvalidInputError("x: a bad index")
        return ("checking", x.shape[0])
    r.register_impl("op", "checking", backends="cpu", fn=checking, priority=100)
    r.register_impl("op", "trusting", backends="cpu", fn=tagged("trusting", calls), priority=50)
    with pytest.raises(pk.InvalidInputError, match="a bad index"):
        r.call("op", x_of(1))
    assert calls == ["checking"]
    assert not r._demoted and r.call("op", x_of(2))[0] == "checking"
    assert issubclass(pk.InvalidInputError, ValueError)


@pytest.mark.parametrize("value", ["op", "op=ref,broken", "=,x"])
def test_env_parse_errors(monkeypatch, value):
    r = _two_impl_registry()
    monkeypatch.setenv("POLYKERNELS_IMPL", value)
    with pytest.raises(ValueError, match="POLYKERNELS_IMPL"):
        r.call("op", x_of())


def test_unknown_op_name_in_env_raises_naming_known_ops(monkeypatch):
    r = _two_impl_registry()
    r.register_impl("op_backward", "ref", backends="reference", fn=tagged("ref_bwd"))
    monkeypatch.setenv("POLYKERNELS_IMPL", "op=ref,opp=fast")
    for _ in range(2):   # refused on every call, not only the first
        with pytest.raises(ValueError) as e:
            r.call("op", x_of())
    msg = str(e.value)
    assert "POLYKERNELS_IMPL" in msg and "'opp'" in msg and "known ops: op, op_backward" in msg


def test_unknown_op_name_in_use_raises_naming_known_ops():
    r = _two_impl_registry()
    with use(opp="ref"):
        with pytest.raises(ValueError, match=r"pk.use: unknown op name\(s\) 'opp'; known ops: op"):
            r.call("op", x_of())
    assert r.call("op", x_of())[0] == "fast"   # outside the block nothing is left behind


def test_public_use_checks_op_names_at_once():
    with pytest.raises(ValueError) as e:
        pk.use(atention="triton")
    msg = str(e.value)
    assert "'atention'" in msg and "attention" in msg.split("known ops:")[1]
    for op in ("matmul", "paged_attention", "write_kv_cache", "attention_backward"):
        assert op in msg
    with pk.use(attention="reference", attention_backward="reference"):  # known names pass
        pass


def test_explicit_choice_never_fails_over():
    r = make_registry()

    def boom(x):
        raise RuntimeError("launch failed")
    r.register_impl("op", "bad", backends="cpu", fn=boom, priority=100)
    r.register_impl("op", "ref", backends="reference", fn=tagged("ref"))
    with use(op="bad"):
        with pytest.raises(RuntimeError, match="launch failed"):
            r.call("op", x_of())
    assert r.call("op", x_of())[0] == "ref"   # automatic: fails over


# -- failover -----------------------------------------------------------------------------------
def test_failover_warns_once_and_demotes_per_key(caplog):
    r = make_registry()
    calls = []

    def flaky(x):
        calls.append("flaky")
        if x.dtype == torch.float16:
            raise TypeError("fp16 launch failed")
        raise RuntimeError("compile failed")
    r.register_impl("op", "flaky", backends="cpu", fn=flaky, priority=100)
    r.register_impl("op", "ref", backends="reference", fn=tagged("ref", calls))
    with caplog.at_level(logging.WARNING, logger="polykernels"):
        assert r.call("op", x_of(4)) == ("ref", 4)
        assert r.call("op", x_of(4)) == ("ref", 4)       # same key: demoted, not retried
        assert calls == ["flaky", "ref", "ref"]
        assert r.call("op", x_of(300)) == ("ref", 300)  # another key: tried again
        assert calls[-2:] == ["flaky", "ref"]
        r.call("op", x_of(5, torch.float16))            # another error type: its own warning
    warnings = [rec for rec in caplog.records if rec.name == "polykernels" and "flaky" in rec.getMessage()]
    assert len(warnings) == 2, [w.getMessage() for w in warnings]
    assert "RuntimeError: compile failed" in warnings[0].getMessage()
    assert "TypeError: fp16 launch failed" in warnings[1].getMessage()
    # explain shows the demotion for that key
    d = r.explain("op", (x_of(4),))
    assert d.chosen.name == "ref" and "demoted" in d.refused["flaky@cpu"]
    # reset_caches forgets demotions
    r.reset_caches()
    assert r.explain("op", (x_of(4),)).chosen.name == "flaky"


def test_failover_last_error_raised_when_all_fail():
    r = make_registry()

    def bad1(x):
        raise RuntimeError("one")

    def bad2(x):
        raise ValueError("two")
    r.register_impl("op", "a", backends="cpu", fn=bad1, priority=10)
    r.register_impl("op", "b", backends="reference", fn=bad2)
    with pytest.raises(ValueError, match="two"):
        r.call("op", x_of())
    # every candidate failed: the input is the likely cause, so nothing is demoted and a later
    # valid call of the same class still finds both impls
    d = r.explain("op", (x_of(),))
    assert [i.name for i in d.candidates] == ["a", "b"] and not d.refused


def test_demotion_heals_after_a_while(monkeypatch):
    r = make_registry()
    state = {"fail": True, "calls": []}

    def flaky(x):
        state["calls"].append("flaky")
        if state["fail"]:
            raise RuntimeError("transient")
        return ("flaky", x.shape[0])
    r.register_impl("op", "flaky", backends="cpu", fn=flaky, priority=100)
    r.register_impl("op", "ref", backends="reference", fn=tagged("ref"))
    clock = [1000.0]
    monkeypatch.setattr(registry_mod, "_now", lambda: clock[0])
    assert r.call("op", x_of())[0] == "ref"                 # flaky failed, ref served: demoted
    assert r.call("op", x_of())[0] == "ref" and state["calls"] == ["flaky"]
    state["fail"] = False
    clock[0] += registry_mod.DEMOTION_S + 1                   # the demotion expires
    assert r.call("op", x_of())[0] == "flaky"
    assert r.explain("op", (x_of(),)).chosen.name == "flaky"


def test_strict_mode_reraises(monkeypatch):
    r = make_registry()
    calls = []

    def boom(x):
        calls.append("boom")
        raise RuntimeError("kernel crashed")
    r.register_impl("op", "bad", backends="cpu", fn=boom, priority=100)
    r.register_impl("op", "ref", backends="reference", fn=tagged("ref", calls))
    monkeypatch.setenv("POLYKERNELS_STRICT", "1")
    with pytest.raises(RuntimeError, match="kernel crashed"):
        r.call("op", x_of())
    assert calls == ["boom"]
    monkeypatch.setenv("POLYKERNELS_STRICT", "0")
    assert r.call("op", x_of())[0] == "ref"


def test_failover_does_not_react_to_results():
    # A wrong (but non-raising) answer is returned as is: failover reacts only to exceptions.
    r = make_registry()
    r.register_impl("op", "wrong", backends="cpu", fn=lambda x: ("wrong", -1), priority=100)
    r.register_impl("op", "ref", backends="reference", fn=tagged("ref"))
    assert r.call("op", x_of()) == ("wrong", -1)


# -- caching and keys ---------------------------------------------------------------------------
def test_decision_cached_per_shape_class():
    r = make_registry()
    seen = []

    def supports(x):
        seen.append(x.shape[0])
        return None
    r.register_impl("op", "a", backends="cpu", fn=tagged("a"), supports=supports)
    for n in (3, 3, 300, 400, 600):
        r.call("op", x_of(n))
    # 3 -> exact class; 300 and 400 share the 512 bucket; 600 -> 1024
    assert seen == [3, 300, 600]
    assert registry_mod.call_key((x_of(300),)) == registry_mod.call_key((x_of(512),))
    assert registry_mod.call_key((x_of(255),)) != registry_mod.call_key((x_of(256),))
    # non-contiguous last dim is a different class
    assert registry_mod.call_key((x_of(8).t(),)) != registry_mod.call_key((x_of(3).contiguous(),))
    # the inlined tensor key of call_key equals _arg_key's (also used inside lists): dense,
    # transposed, last dim 1, 0-dim, big dims, and a tensor in a list
    t = torch.zeros(2, 5, 300)
    cases = [t, t.transpose(1, 2), t[..., :1], torch.tensor(1.0), torch.zeros(3, 1).t(), None, 7, 0.5]
    assert registry_mod.call_key(tuple(cases), "op") == \
        ("op", *[registry_mod._arg_key(c) for c in cases])
    assert registry_mod.call_key(([t, None],))[1] == (registry_mod._arg_key(t), None)


def test_thread_safety_concurrent_dispatch_and_registration():
    r = make_registry()
    r.register_impl("op", "ref", backends="reference",
                    fn=lambda x: x.shape[0] * 2 + int(x.dtype == torch.float16))
    errors, results = [], []
    start = threading.Barrier(9)

    def caller(tid):
        try:
            start.wait()
            for it in range(200):
                n = 1 + (tid * 37 + it) % 300
                dtype = torch.float16 if it % 2 else torch.float32
                got = r.call("op", torch.zeros(n, 2, dtype=dtype))
                results.append(got == n * 2 + int(dtype == torch.float16))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))

    def registrar():
        try:
            start.wait()
            for i in range(100):
                # Lower priority than "ref" and computing the same thing: answers unchanged.
                r.register_impl("op", f"extra{i}", backends="cpu", priority=-100 - i,
                                fn=lambda x: x.shape[0] * 2 + int(x.dtype == torch.float16))
                r.register_impl("other", f"o{i}", backends="cpu", fn=tagged("o"))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
    threads.append(threading.Thread(target=registrar))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(results) == 8 * 200 and all(results)
    assert len(r.impls["op"]) == 101


def test_loaders_run_once_before_first_dispatch():
    r = make_registry()
    runs = []

    def loader():
        runs.append(1)
        r.register_impl("op", "late", backends="cpu", fn=tagged("late"))
    r.add_loader(loader)
    assert runs == []
    assert r.call("op", x_of())[0] == "late"
    r.call("op", x_of())
    assert runs == [1]


# -- Triton impls on CPU ------------------------------------------------------------------------
def test_triton_impl_on_cpu_only_when_interpreting(monkeypatch):
    r = make_registry()
    r.register_backend(Backend("nvidia", ("cuda",), lambda: False))
    r.register_backend(Backend("amd", ("cuda",), lambda: False))
    r.register_impl("op", "triton", backends=("nvidia", "amd"), fn=tagged("triton"), priority=100)
    r.register_impl("op", "cpp", backends="cpu", fn=tagged("cpp"), priority=1)
    r.register_impl("op", "ref", backends="reference", fn=tagged("ref"), priority=0)

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    d = r._decide("op", torch.device("cpu"), (x_of(),))
    assert [i.name for i in d.candidates] == ["cpp", "ref"]
    assert "TRITON_INTERPRET=1" in d.refused["triton@nvidia"]
    with use(op="triton"):
        with pytest.raises(NoImplError, match="TRITON_INTERPRET"):
            r.call("op", x_of())

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    r.reset_caches()
    d = r._decide("op", torch.device("cpu"), (x_of(),))
    # eligible, once (not once per backend), and ranked below everything else
    assert [i.name for i in d.candidates] == ["cpp", "ref", "triton"]
    assert r.call("op", x_of())[0] == "cpp"
    with use(op="triton"):
        assert r.call("op", x_of())[0] == "triton"


def test_non_triton_impl_not_interpretable():
    r = make_registry()
    r.register_backend(Backend("nvidia", ("cuda",), lambda: False))
    r.register_impl("op", "cuda", backends="nvidia", fn=tagged("cuda"), priority=110)
    r.register_impl("op", "ref", backends="reference", fn=tagged("ref"))
    d = r._decide("op", torch.device("cpu"), (x_of(),))
    assert [i.name for i in d.candidates] == ["ref"]


# -- end to end through pk (global registry patched and restored) ------------------------------
@pytest.fixture
def global_registry():
    g = D.registry
    g.ensure_loaded()
    saved = {op: list(lst) for op, lst in g.impls.items()}
    saved_backends = dict(g.backends)
    g.reset_caches()
    yield g
    with g._lock:
        g.impls.clear()
        g.impls.update(saved)
        g.backends.clear()
        g.backends.update(saved_backends)
    g.reset_caches()


def test_pk_uses_highest_priority_registered_impl(global_registry):
    a = torch.randn(5, 7)
    b = torch.randn(7, 3)
    want = a @ b
    pk.register_impl("matmul", "test_doubler", backends="cpu", priority=10_000,
                     fn=lambda a, b, bias, act, out_dtype: 2 * (a @ b))
    assert torch.allclose(pk.matmul(a, b), 2 * want)
    assert pk.explain("matmul", a, b).chosen.name == "test_doubler"
    with pk.use(matmul="reference"):
        assert torch.allclose(pk.matmul(a, b), want, atol=1e-5)


def test_pk_failover_end_to_end(global_registry, caplog):
    def broken(a, b, bias, act, out_dtype):
        raise RuntimeError("simulated launch failure")
    pk.register_impl("matmul", "test_broken", backends="cpu", priority=10_000, fn=broken)
    a, b = torch.randn(4, 6), torch.randn(6, 2)
    with caplog.at_level(logging.WARNING, logger="polykernels"):
        out = pk.matmul(a, b)
        out2 = pk.matmul(a, b)
    assert torch.allclose(out, a @ b, atol=1e-5) and torch.allclose(out2, out)
    msgs = [r.getMessage() for r in caplog.records if "test_broken" in r.getMessage()]
    assert len(msgs) == 1 and "simulated launch failure" in msgs[0]
    d = pk.explain("matmul", a, b)
    assert "demoted" in d.refused["test_broken@cpu"]


@pytest.mark.parametrize("wrong", ["shape", "dtype", "count"])
def test_an_impl_returning_the_wrong_shape_or_dtype_fails_over(global_registry, caplog, wrong):
    """Results are checked against the op's fake once per decision: a mismatch is a failure
    (failover, demotion, one warning), never handed to the caller."""
    def bad(a, b, bias, act, out_dtype):
        y = a @ b
        return {"shape": y[:-1], "dtype": y.double(), "count": (y, y)}[wrong]
    pk.register_impl("matmul", "test_wrong", backends="cpu", priority=10_000, fn=bad)
    a, b = torch.randn(4, 6), torch.randn(6, 2)
    with caplog.at_level(logging.WARNING, logger="polykernels"):
        out = pk.matmul(a, b)
    assert out.shape == (4, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out, a @ b)
    assert any("test_wrong" in r.getMessage() and "WrongResultError" in r.getMessage()
               for r in caplog.records)
    assert "demoted" in pk.explain("matmul", a, b).refused["test_wrong@cpu"]
    with pk.use(matmul="test_wrong"):   # pinned: no failover, the mismatch raises
        with pytest.raises(registry_mod.WrongResultError, match="test_wrong@cpu output 0|returned 2 outputs"):
            pk.matmul(a, b)


def test_results_are_checked_once_per_decision(global_registry, monkeypatch):
    lib = importlib.import_module("polykernels.ops._library")
    calls = []
    real_fake = lib.FAKES["matmul"]
    monkeypatch.setitem(lib.FAKES, "matmul", lambda *args: calls.append(1) or real_fake(*args))
    a, b = torch.randn(4, 6), torch.randn(6, 2)
    for _ in range(3):
        pk.matmul(a, b)
    pk.matmul(torch.randn(300, 6), b)            # another input class: one more check
    assert len(calls) == 2


def test_pk_env_choice_and_refusal(global_registry, monkeypatch):
    a, b = torch.randn(4, 6), torch.randn(6, 2)
    pk.register_impl("matmul", "test_picky", backends="cpu", priority=-50,
                     supports=lambda a, *rest: "needs fp16" if a.dtype != torch.float16 else None,
                     fn=lambda a, b, *rest: torch.full((a.shape[0], b.shape[1]), 7.0, dtype=a.dtype))
    monkeypatch.setenv("POLYKERNELS_IMPL", "matmul=test_picky")
    with pytest.raises(NoImplError) as e:
        pk.matmul(a, b)
    assert "test_picky@cpu: needs fp16" in str(e.value)
    out = pk.matmul(a.half(), b.half())
    assert (out == 7).all()
    monkeypatch.setenv("POLYKERNELS_IMPL", "matmul=nope")
    with pytest.raises(NoImplError, match="registered: .*reference"):
        pk.matmul(a, b)


def test_pk_backends_lists_builtins():
    names = {b["name"]: b for b in pk.backends()}
    assert {"nvidia", "amd", "cpu", "reference"} <= set(names)
    assert names["cpu"]["available"] and names["reference"]["available"]
    assert "attention:reference" in names["reference"]["impls"]
    acc = pk.accelerator("cpu")
    assert acc.vendor == "cpu" and acc.device_type == "cpu" and acc.triton_target is None
