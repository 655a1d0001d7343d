"""A custom chip plugged in from outside: a simulated MAIA device, end to end, on CPU.

tests/fixtures/maia_chip is an installed-looking plugin distribution (``polykernels_maia`` +
``polykernels_maia-0.1.dist-info`` with an entry point in ``polykernels.backends``). Its C++
part (maia_device.cpp) makes PyTorch's reserved device type ``maia`` real: an allocator over
host memory that poisons fresh allocations with NaN bytes, a device guard, allocation / copy /
view kernels for the MAIA dispatch key and a boxed CPU fallback for every other aten op. Its
Python part registers backend "maia" with its own attention and matmul kernels and a
grouped_matmul that always raises.

The checks run in a child interpreter (this file with ``--child MODE``) with the fixture on
sys.path, so the global registry starts fresh and the test process never loads the device.
The device library is JIT-compiled once (~20-60 s, cached by source hash under
``$POLYKERNELS_MAIA_CACHE``, default ~/.cache/polykernels/maia_sim); the second child only
loads it. Each test asserts on one part of the child's JSON report.

Tolerances: a kernel's error against the fp64 reference on CPU copies must be at most twice
the error of the same computation done by torch in the input dtype, plus a small floor.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "maia_chip")
FLOOR = {"torch.float32": 1e-5, "torch.float16": 5e-4, "torch.bfloat16": 4e-3,
         "torch.float64": 1e-12}
LSE_ATOL = 1e-4   # every maia kernel keeps lse in fp32; the oracle is fp64


# ================================ parent: pytest side =============================================
def _run_child(mode: str, plugins_env: str | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = SITE + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("POLYKERNELS_IMPL", "POLYKERNELS_STRICT", "POLYKERNELS_PLUGINS"):
        env.pop(var, None)
    if plugins_env is not None:
        env["POLYKERNELS_PLUGINS"] = plugins_env
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", mode], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"child {mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["stderr"] = proc.stderr
    return res


@pytest.fixture(scope="module")
def maia():
    return _run_child("plugins", None)


@pytest.fixture(scope="module")
def maia_no_plugins():
    return _run_child("no_plugins", "")


def _assert_close(case: dict) -> None:
    """case: err / base_err / where from the child; bound = 2 x same-dtype torch error + floor."""
    bound = 2 * case["base_err"] + FLOOR[case["dtype"]]
    assert case["err"] <= bound, (
        f"{case['name']}: max |kernel - fp64 reference| = {case['err']:.3g} at {case['where']} "
        f"> bound {bound:.3g} (torch {case['dtype']} error {case['base_err']:.3g})")


def test_plugin_is_lazy_and_device_not_loaded_before_asked(maia):
    assert maia["lazy"], "the plugin must load on the first dispatch, not at import polykernels"
    assert maia["before_load"] == {"listed": True, "available": False}
    assert maia["loaded_plugins"] == ["maia"]
    assert not any(k.startswith("plugin") for k in maia["load_errors"]), maia["load_errors"]


def test_maia_tensors_work(maia):
    t = maia["tensors"]
    assert t["device"] == "maia:0" and t["is_maia_type"]
    assert t["empty_is_poisoned"], "fresh maia memory should be NaN-poisoned by the simulator"
    for check in ("roundtrip_exact", "add", "inplace_add", "transpose", "strided_slice",
                  "reshape", "copy_between_maia", "item", "write_through_view", "view_dtype",
                  "arange", "randn_not_constant"):
        assert t[check], f"maia tensor check {check!r} failed"
    assert t["allocations_grew"]


def test_backends_lists_maia_available(maia):
    assert maia["after_load"] == {"listed": True, "available": True}
    assert set(maia["maia_impls"]) == {"attention:maia", "matmul:maia", "grouped_matmul:maia"}


def test_explain_attention_and_matmul_choose_maia(maia):
    assert maia["explain"]["attention"]["chosen"] == "maia@maia", maia["explain"]["attention"]
    assert maia["explain"]["attention"]["fallbacks"] == ["reference@reference"]
    assert maia["explain"]["matmul"]["chosen"] == "maia@maia", maia["explain"]["matmul"]


@pytest.mark.parametrize("i", range(6))
def test_attention_on_maia_matches_reference(maia, i):
    case = maia["attention"][i]
    assert case["chosen"] == "maia@maia", case
    assert case["device"] == "maia:0" and case["lse_device"] == "maia:0"
    assert case["dtype_ok"] and case["shape_ok"], case
    assert case["maia_allocated"], "outputs should come from the simulated device's allocator"
    assert case["lse_inf_pattern_ok"], f"{case['name']}: -inf lse rows differ from the reference"
    assert case["empty_rows_zero"], f"{case['name']}: rows with no visible key must be 0"
    assert case["lse_err"] <= LSE_ATOL, (
        f"{case['name']}: lse error {case['lse_err']:.3g} at {case['lse_where']}")
    _assert_close(case)


def test_attention_has_an_empty_row_case(maia):
    # Guards the -inf / zero-row checks above against becoming vacuous.
    assert any(c["n_empty_rows"] > 0 for c in maia["attention"])


@pytest.mark.parametrize("i", range(4))
def test_matmul_on_maia_matches_reference(maia, i):
    case = maia["matmul"][i]
    assert case["chosen"] == "maia@maia", case
    assert case["device"] == "maia:0" and case["dtype_ok"] and case["shape_ok"], case
    _assert_close(case)


def test_autograd_through_maia_forward_and_reference_backward(maia):
    g = maia["autograd"]
    assert g["grad_device"] == ["maia:0"] * 3
    assert g["backward_chosen"] == "reference@reference"
    for name, err in zip("qkv", g["errs"]):
        assert err <= 1e-5, f"d{name}: max error {err:.3g} vs reference on CPU"


@pytest.mark.parametrize("op", ["linear", "merge_attention_states"])
def test_left_out_ops_run_reference_on_maia(maia, op):
    r = maia["left_out"][op]
    assert r["chosen"] == "reference@reference", r
    assert "maia@maia" not in r["refused"], "the plugin registered no impl for this op"
    assert r["devices"] == ["maia:0"] * len(r["devices"]) and r["devices"], r
    assert r["err"] <= 1e-6, f"{op}: reference on maia differs from reference on CPU by {r['err']}"


def test_unsupported_input_refused_with_reason_then_reference_on_maia(maia):
    r = maia["fp64_attention"]
    assert r["chosen"] == "reference@reference"
    assert "float64 not supported by the maia chip" in r["refused"]["maia@maia"]
    assert r["device"] == "maia:0" and r["err"] <= 1e-12


def test_raising_impl_fails_over_with_one_warning(maia):
    r = maia["failover"]
    assert r["devices"] == ["maia:0", "maia:0"]
    assert all(e <= 1e-5 for e in r["errs"]), r["errs"]
    assert len(r["warnings"]) == 1, r["warnings"]
    assert "maia@maia" in r["warnings"][0] and "simulated firmware fault" in r["warnings"][0]
    assert r["explain_after"]["chosen"] == "reference@reference"
    assert "demoted" in r["explain_after"]["refused"]["maia@maia"]
    assert r["strict_raised"] and "simulated firmware fault" in r["strict_raised"]


def test_plugins_disabled_sends_maia_tensors_to_reference(maia_no_plugins):
    r = maia_no_plugins
    assert r["loaded_plugins"] == [] and not r["maia_listed"]
    assert r["chosen"] == {"attention": "reference@reference", "matmul": "reference@reference"}
    assert r["devices"] == ["maia:0", "maia:0"]
    assert max(r["errs"]) <= 1e-6, r["errs"]


# ================================ child: runs with the plugin on sys.path =========================
def _max_err(x, oracle):
    """Largest |x - oracle| (NaN counts as inf) over positions where the oracle is finite,
    with its index."""
    import torch
    d = (x.double() - oracle.double()).abs()
    d = torch.where(torch.isnan(d), torch.full_like(d, math.inf), d)
    d = torch.where(torch.isfinite(oracle.double()), d, torch.zeros_like(d))
    if d.numel() == 0:
        return 0.0, None
    where = torch.unravel_index(d.argmax(), d.shape)
    return float(d.max()), [int(i) for i in where]


def _torch_attention_same_dtype(q, k, v, causal, scale, wl, wr, softcap, alibi):
    """Plain torch attention computed in the inputs' dtype (the precision baseline)."""
    import torch
    b, sq, hq, _ = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    qh = q.transpose(1, 2)
    kh = k.transpose(1, 2).repeat_interleave(hq // hkv, dim=1)
    vh = v.transpose(1, 2).repeat_interleave(hq // hkv, dim=1)
    s = (qh @ kh.transpose(-1, -2)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    dist = torch.arange(sq).view(sq, 1) + (sk - sq) - torch.arange(sk).view(1, sk)
    if alibi is not None:
        s = s - (alibi.reshape(-1, hq, 1, 1) * dist.abs()).to(s.dtype)
    right = 0 if causal else wr
    vis = torch.ones(sq, sk, dtype=torch.bool)
    if wl >= 0:
        vis &= dist <= wl
    if right >= 0:
        vis &= dist >= -right
    p = torch.softmax(s.masked_fill(~vis, -math.inf), dim=-1).nan_to_num(0.0)
    return (p @ vh).transpose(1, 2)


def _maia_view(t, how, device):
    """A maia copy of CPU tensor t, contiguous or as an awkward non-contiguous view."""
    import torch
    if how == "contiguous":
        return t.to(device)
    if how == "transposed":       # stored [B, H, S, D], viewed as [B, S, H, D]
        return t.transpose(1, 2).contiguous().to(device).transpose(1, 2)
    if how == "padded":           # a slice of a wider buffer: last dim contiguous, row gaps
        pad = torch.randn(*t.shape[:-1], t.shape[-1] + 5, dtype=t.dtype)
        pad[..., : t.shape[-1]] = t
        return pad.to(device)[..., : t.shape[-1]]
    raise ValueError(how)


def _explain(pk, op, *args, **kwargs):
    d = pk.explain(op, *args, **kwargs)
    return {"chosen": d.chosen.label if d.chosen else None,
            "fallbacks": [i.label for i in d.candidates[1:]], "refused": dict(d.refused)}


def _child_tensors(torch, pm):
    dev = torch.device("maia")
    a0 = pm.allocations()
    x = torch.randn(4, 6, device=dev)
    y = torch.randn(4, 6, device=dev)
    xc, yc = x.cpu(), y.cpu()
    z = x.clone()
    z.add_(y)
    w = torch.empty(4, 6, device=dev)
    w.copy_(x)
    u = x.clone()
    u[1:3, ::2].fill_(7.0)            # an in-place op on a strided view must reach the base
    uc = xc.clone()
    uc[1:3, ::2] = 7.0
    return {
        "device": str(x.device), "is_maia_type": x.device.type == "maia",
        "empty_is_poisoned": bool(torch.isnan(torch.empty(7, device=dev).cpu()).all()),
        "roundtrip_exact": torch.equal(xc.to(dev).cpu(), xc),
        "add": torch.equal((x + y).cpu(), xc + yc) and (x + y).device.type == "maia",
        "inplace_add": torch.equal(z.cpu(), xc + yc),
        "transpose": torch.equal(x.t().contiguous().cpu(), xc.t().contiguous()),
        "strided_slice": torch.equal(x[1:4, ::2].cpu(), xc[1:4, ::2]),
        "reshape": torch.equal(x.reshape(3, 8).cpu(), xc.reshape(3, 8)),
        "copy_between_maia": torch.equal(w.cpu(), xc),
        "item": x[2, 3].item() == xc[2, 3].item(),
        "write_through_view": torch.equal(u.cpu(), uc),
        "view_dtype": torch.equal(x.view(torch.int32).cpu(), xc.view(torch.int32)),
        "arange": torch.equal(torch.arange(5, device=dev).cpu(), torch.arange(5)),
        "randn_not_constant": bool(xc.std() > 0.1),
        "allocations_grew": pm.allocations() > a0,
    }


ATTENTION_CASES = [
    # name, dtype, B, Sq, Sk, Hq, Hkv, D, layout, kwargs
    ("fp32 causal GQA Sq<Sk", "float32", 2, 37, 45, 4, 2, 16, "contiguous", dict(causal=True)),
    ("bf16 decode MQA window softcap", "bfloat16", 1, 1, 70, 3, 1, 24, "padded",
     dict(window=(17, 3), softcap=30.0)),
    ("fp16 causal Sq>Sk empty rows alibi[B,H]", "float16", 2, 37, 20, 2, 2, 40, "contiguous",
     dict(causal=True, alibi=(2, 2))),
    ("fp32 transposed window alibi[H]", "float32", 1, 33, 33, 4, 4, 8, "transposed",
     dict(window=(4, 4), alibi=(4,))),
    ("fp16 size one", "float16", 1, 1, 1, 1, 1, 8, "contiguous", dict()),
    ("bf16 transposed GQA scale", "bfloat16", 2, 19, 41, 6, 2, 32, "transposed",
     dict(softmax_scale=0.3)),
]


def _child_attention(torch, pk, ref, pm):
    dev = torch.device("maia")
    results = []
    for name, dtype, b, sq, sk, hq, hkv, d, layout, kw in ATTENTION_CASES:
        dt = getattr(torch, dtype)
        q, k, v = (torch.randn(b, s, h, d).to(dt) for s, h in ((sq, hq), (sk, hkv), (sk, hkv)))
        alibi = torch.rand(*kw["alibi"]) * 0.5 if "alibi" in kw else None
        causal, window = kw.get("causal", False), kw.get("window", (-1, -1))
        softcap, scale = kw.get("softcap", 0.0), kw.get("softmax_scale", 1 / math.sqrt(d))
        qm, km, vm = (_maia_view(t, layout, dev) for t in (q, k, v))
        args = dict(causal=causal, window=window, softcap=softcap, softmax_scale=scale,
                    alibi_slopes=None if alibi is None else alibi.to(dev))
        chosen = _explain(pk, "attention", qm, km, vm, **args)["chosen"]
        a0 = pm.allocations()
        out, lse = pk.attention(qm, km, vm, return_lse=True, **args)
        allocated = pm.allocations() > a0
        ro, rl = ref.attention(q.double(), k.double(), v.double(), causal, scale, window[0],
                               window[1], softcap, alibi)
        base = _torch_attention_same_dtype(q, k, v, causal, scale, window[0], window[1],
                                           softcap, alibi)
        oc, lc = out.cpu(), lse.cpu()
        err, where = _max_err(oc, ro)
        base_err, _ = _max_err(base, ro)
        lse_err, lse_where = _max_err(lc, rl)
        empty = torch.isinf(rl)                                   # [B, H, Sq]
        empty_rows = oc.permute(0, 2, 1, 3)[empty]
        results.append({
            "name": name, "dtype": str(dt), "chosen": chosen, "device": str(out.device),
            "lse_device": str(lse.device), "dtype_ok": out.dtype == dt and lse.dtype == torch.float32,
            "shape_ok": tuple(out.shape) == (b, sq, hq, d) and tuple(lse.shape) == (b, hq, sq),
            "maia_allocated": allocated, "err": err, "where": where, "base_err": base_err,
            "lse_err": lse_err, "lse_where": lse_where,
            "lse_inf_pattern_ok": torch.equal(torch.isinf(lc) & (lc < 0), empty),
            "n_empty_rows": int(empty.sum()),
            "empty_rows_zero": bool((empty_rows == 0).all()),
        })
    return results


MATMUL_CASES = [
    # name, dtype, a shape, N, bias, activation, out_dtype, b transposed view
    ("fp32 batched gelu bias", "float32", (3, 50, 70), 30, True, "gelu", None, False),
    ("bf16 M=1 silu bT -> fp32", "bfloat16", (1, 97), 5, False, "silu", "float32", True),
    ("fp16 odd relu bias", "float16", (13, 51), 67, True, "relu", None, False),
    ("fp32 K=1 gelu_tanh bT", "float32", (7, 1), 9, True, "gelu_tanh", None, True),
]


def _child_matmul(torch, pk, ref):
    dev = torch.device("maia")
    acts = {"gelu": lambda x: torch.nn.functional.gelu(x), "silu": torch.nn.functional.silu,
            "relu": torch.relu, "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh")}
    results = []
    for name, dtype, ashape, n, has_bias, act, out_dtype, b_t in MATMUL_CASES:
        dt = getattr(torch, dtype)
        odt = getattr(torch, out_dtype) if out_dtype else None
        kdim = ashape[-1]
        a = torch.randn(*ashape).to(dt)
        b = torch.randn(kdim, n).to(dt)
        bias = torch.randn(n).to(dt) if has_bias else None
        bm = b.t().contiguous().to(dev).t() if b_t else b.to(dev)
        am, biasm = a.to(dev), None if bias is None else bias.to(dev)
        chosen = _explain(pk, "matmul", am, bm, bias=biasm, activation=act, out_dtype=odt)["chosen"]
        out = pk.matmul(am, bm, bias=biasm, activation=act, out_dtype=odt)
        oracle = ref.matmul(a.double(), b.double(), None if bias is None else bias.double(), act,
                            None)
        base = a @ b
        if bias is not None:
            base = base + bias
        base = acts[act](base).to(odt or dt)
        err, where = _max_err(out.cpu(), oracle)
        base_err, _ = _max_err(base, oracle)
        results.append({
            "name": name, "dtype": str(odt or dt), "chosen": chosen, "device": str(out.device),
            "dtype_ok": out.dtype == (odt or dt), "shape_ok": tuple(out.shape) == (*ashape[:-1], n),
            "err": err, "where": where, "base_err": base_err})
    return results


def _child_autograd(torch, pk):
    dev = torch.device("maia")
    cpu = [torch.randn(1, s, 2, 8) for s in (9, 11, 11)]
    mm = [t.to(dev).requires_grad_(True) for t in cpu]
    cc = [t.clone().requires_grad_(True) for t in cpu]
    dout = torch.randn(1, 9, 2, 8)
    pk.attention(*mm, causal=True).backward(dout.to(dev))
    with pk.use(attention="reference"):
        pk.attention(*cc, causal=True).backward(dout)
    from polykernels.dispatch import registry
    q = mm[0].detach()
    bw = registry.explain("attention_backward", (dout.to(dev), q, mm[1].detach(), mm[2].detach(),
                                                 q, torch.zeros(1, 2, 9, device=dev), True,
                                                 0.35, -1, -1, 0.0, None))
    return {"grad_device": [str(t.grad.device) for t in mm],
            "backward_chosen": bw.chosen.label,
            "errs": [_max_err(m.grad.cpu(), c.grad)[0] for m, c in zip(mm, cc)]}


def _child_left_out(torch, pk, ref):
    dev = torch.device("maia")
    x, w, bias = torch.randn(2, 5, 33), torch.randn(19, 33), torch.randn(19)
    lin = pk.linear(x.to(dev), w.to(dev), bias.to(dev))
    lin_ex = _explain(pk, "linear", x.to(dev), w.to(dev), bias.to(dev))
    oa, ob = torch.randn(2, 7, 3, 16), torch.randn(2, 7, 3, 16)
    la, lb = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    la[0, 1, 2] = -math.inf
    m_args = [t.to(dev) for t in (oa, la, ob, lb)]
    mo, ml = pk.merge_attention_states(*m_args)
    ro, rl = ref.merge_attention_states(oa, la, ob, lb)
    merge_ex = _explain(pk, "merge_attention_states", *m_args)
    return {
        "linear": dict(lin_ex, devices=[str(lin.device)],
                       err=_max_err(lin.cpu(), ref.linear(x, w, bias, None))[0]),
        "merge_attention_states": dict(merge_ex, devices=[str(mo.device), str(ml.device)],
                                       err=max(_max_err(mo.cpu(), ro)[0], _max_err(ml.cpu(), rl)[0])),
    }


def _child_fp64_attention(torch, pk, ref):
    dev = torch.device("maia")
    q, k, v = (torch.randn(1, 6, 2, 8, dtype=torch.float64) for _ in range(3))
    ex = _explain(pk, "attention", *(t.to(dev) for t in (q, k, v)), causal=True)
    out = pk.attention(*(t.to(dev) for t in (q, k, v)), causal=True)
    ro, _ = ref.attention(q, k, v, True, 1 / math.sqrt(8), -1, -1, 0.0, None)
    return dict(ex, device=str(out.device), err=_max_err(out.cpu(), ro)[0])


def _child_failover(torch, pk):
    import logging
    dev = torch.device("maia")
    warnings = []

    class Grab(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    logging.getLogger("polykernels").addHandler(Grab())
    sizes = torch.tensor([3, 0, 5, 1])
    x, w = torch.randn(9, 12), torch.randn(4, 12, 7)
    want = torch.cat([x[s:e].double() @ w[g].double() for g, (s, e) in
                      enumerate(zip([0, 3, 3, 8], [3, 3, 8, 9]))])
    devices, errs = [], []
    for _ in range(2):   # the second call must not warn again
        out = pk.grouped_matmul(x.to(dev), w.to(dev), sizes.to(dev))
        devices.append(str(out.device))
        errs.append(_max_err(out.cpu(), want)[0])
    explain_after = _explain(pk, "grouped_matmul", x.to(dev), w.to(dev), sizes.to(dev))
    n_warn = len(warnings)
    # Strict mode re-raises instead of failing over (a new shape class: fresh key, not demoted).
    os.environ["POLYKERNELS_STRICT"] = "1"
    strict_raised = None
    try:
        pk.grouped_matmul(torch.randn(3, 5, device=dev), torch.randn(2, 5, 4, device=dev),
                          torch.tensor([1, 2], device=dev))
    except RuntimeError as e:
        strict_raised = str(e)
    finally:
        del os.environ["POLYKERNELS_STRICT"]
    return {"devices": devices, "errs": errs, "warnings": warnings[:n_warn],
            "explain_after": explain_after, "strict_raised": strict_raised}


def _backend_state(pk, name):
    rows = [b for b in pk.backends() if b["name"] == name]
    return {"listed": bool(rows), "available": bool(rows and rows[0]["available"])}


def child_main(mode: str) -> dict:
    import torch
    import polykernels as pk
    from polykernels import reference as ref
    from polykernels.dispatch import registry
    torch.manual_seed(0)
    lazy = "polykernels_maia" not in sys.modules
    import polykernels_maia as pm

    if mode == "no_plugins":
        pm.load_device()
        dev = torch.device("maia")
        q, k, v = (torch.randn(1, 5, 2, 8) for _ in range(3))
        a, b = torch.randn(4, 6), torch.randn(6, 3)
        qm, km, vm, am, bm = (t.to(dev) for t in (q, k, v, a, b))
        out = pk.attention(qm, km, vm)
        mo = pk.matmul(am, bm)
        return {
            "loaded_plugins": registry.loaded_plugins,
            "maia_listed": _backend_state(pk, "maia")["listed"],
            "chosen": {"attention": _explain(pk, "attention", qm, km, vm)["chosen"],
                       "matmul": _explain(pk, "matmul", am, bm)["chosen"]},
            "devices": [str(out.device), str(mo.device)],
            "errs": [_max_err(out.cpu(), ref.attention(q, k, v, False, 1 / math.sqrt(8), -1, -1,
                                                       0.0, None)[0])[0],
                     _max_err(mo.cpu(), a @ b)[0]],
        }

    before = _backend_state(pk, "maia")          # loads plugins (first registry use)
    pm.load_device()
    maia_backend = [b for b in pk.backends() if b["name"] == "maia"]
    dev = torch.device("maia")
    q, k, v = (torch.randn(1, 4, 2, 8, device=dev) for _ in range(3))
    a, b = torch.randn(3, 4, device=dev), torch.randn(4, 5, device=dev)
    return {
        "lazy": lazy,
        "before_load": before,
        "after_load": _backend_state(pk, "maia"),
        "maia_impls": maia_backend[0]["impls"] if maia_backend else [],
        "loaded_plugins": registry.loaded_plugins,
        "load_errors": registry.load_errors,
        "tensors": _child_tensors(torch, pm),
        "explain": {"attention": _explain(pk, "attention", q, k, v),
                    "matmul": _explain(pk, "matmul", a, b)},
        "attention": _child_attention(torch, pk, ref, pm),
        "matmul": _child_matmul(torch, pk, ref),
        "autograd": _child_autograd(torch, pk),
        "left_out": _child_left_out(torch, pk, ref),
        "fp64_attention": _child_fp64_attention(torch, pk, ref),
        "failover": _child_failover(torch, pk),
    }


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    print(json.dumps(child_main(sys.argv[2])))
