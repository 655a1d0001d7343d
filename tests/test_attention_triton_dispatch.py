"""The Triton flash attention impls through the public API and the dispatcher (interpreter):
registered for attention, attention_backward, varlen_attention(_backward); chosen explicitly
with pk.use on CPU; autograd results match the fp64 reference."""
from __future__ import annotations

import torch

import polykernels as pk
from polykernels import reference as ref

from test_attention_triton_helpers import assert_close_budget, torch_same_dtype

_ALL = dict(attention="triton", attention_backward="triton", varlen_attention="triton",
            varlen_attention_backward="triton")


def test_registered_for_every_attention_op():
    impls = {b["name"]: b["impls"] for b in pk.backends()}
    for backend in ("nvidia", "amd"):
        for op in _ALL:
            assert f"{op}:triton" in impls[backend], (backend, op, impls[backend])


def _count_launches(monkeypatch):
    """Wrap the launchers so the test proves the Triton kernels (not a fallback) ran."""
    from polykernels.triton.flash_attention import launch
    calls = {"forward": 0, "backward": 0}
    for name in calls:
        real = getattr(launch, name)

        def wrapper(*a, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*a, **kw)
        monkeypatch.setattr(launch, name, wrapper)
    return calls


def test_explicit_choice_public_attention_fwd_bwd(monkeypatch):
    calls = _count_launches(monkeypatch)
    q = torch.randn(2, 37, 4, 64, dtype=torch.float16, requires_grad=True)
    k = torch.randn(2, 50, 2, 64, dtype=torch.float16, requires_grad=True)
    v = torch.randn(2, 50, 2, 64, dtype=torch.float16, requires_grad=True)
    with pk.use(**_ALL):
        decision = pk.explain("attention", q, k, v, causal=True, window=(20, -1))
        assert decision.chosen is not None and decision.chosen.name == "triton", str(decision)
        out, lse = pk.attention(q, k, v, causal=True, window=(20, -1), return_lse=True)
        dout = torch.randn_like(out)
        out.backward(dout)
    assert calls == {"forward": 1, "backward": 1}, calls
    args = (True, 64 ** -0.5, 20, -1, 0.0, None)
    want, want_lse = ref.attention(q.double(), k.double(), v.double(), *args)
    base = torch_same_dtype(q.detach(), k.detach(), v.detach(), *args)
    assert_close_budget("out", out.detach(), want, base, 2, torch.float16)
    torch.testing.assert_close(lse, want_lse.float(), atol=1e-3, rtol=1e-4)
    want_g = ref.attention_backward(dout.double(), q.double(), k.double(), v.double(), None, None, *args)
    qb, kb, vb = (t.detach().clone().requires_grad_() for t in (q, k, v))
    torch_same_dtype(qb, kb, vb, *args).backward(dout)
    for name, g, w, b in zip(("dq", "dk", "dv"), (q.grad, k.grad, v.grad), want_g, (qb.grad, kb.grad, vb.grad)):
        assert_close_budget(name, g, w, b, 3, torch.float16)


def test_explicit_choice_public_varlen_fwd_bwd(monkeypatch):
    calls = _count_launches(monkeypatch)
    lens_q, lens_k = [9, 1, 30], [9, 20, 30]
    cu_q = torch.tensor([0, 9, 10, 40], dtype=torch.int32)
    cu_k = torch.tensor([0, 9, 29, 59], dtype=torch.int32)
    q = torch.randn(sum(lens_q), 2, 32, requires_grad=True)
    k = torch.randn(sum(lens_k), 1, 32, requires_grad=True)
    v = torch.randn(sum(lens_k), 1, 32, requires_grad=True)
    with pk.use(**_ALL):
        out = pk.varlen_attention(q, k, v, cu_q, cu_k, 30, 30, causal=True, softcap=10.0)
        dout = torch.randn_like(out)
        out.backward(dout)
    assert calls == {"forward": 1, "backward": 1}, calls
    args = (cu_q, cu_k, 30, 30, True, 32 ** -0.5, -1, -1, 10.0, None)
    want, _ = ref.varlen_attention(q.double(), k.double(), v.double(), *args)
    torch.testing.assert_close(out.detach().double(), want, atol=3e-5, rtol=0)
    want_g = ref.varlen_attention_backward(dout.double(), q.double(), k.double(), v.double(),
                                           None, None, *args)
    for g, w in zip((q.grad, k.grad, v.grad), want_g):
        torch.testing.assert_close(g.double(), w, atol=1e-4, rtol=0)


def test_lse_gradient_through_triton_backward(monkeypatch):
    """A loss that uses the returned lse: the Triton backward folds dlse into delta; compare
    with autograd through the fp64 reference math (which differentiates lse directly)."""
    from polykernels.reference.attention_ref import attention_math
    calls = _count_launches(monkeypatch)
    q = torch.randn(2, 19, 4, 32, requires_grad=True)
    k = torch.randn(2, 23, 2, 32, requires_grad=True)
    v = torch.randn(2, 23, 2, 32, requires_grad=True)
    w_o, w_l = torch.randn(2, 19, 4, 32), torch.randn(2, 4, 19)
    with pk.use(**_ALL):
        out, lse = pk.attention(q, k, v, causal=True, softcap=4.0, return_lse=True)
        ((out * w_o).sum() + (lse * w_l).sum()).backward()
    assert calls == {"forward": 1, "backward": 1}, calls
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    o, l = attention_math(qd, kd, vd, True, 32 ** -0.5, -1, -1, 4.0, None)
    want = torch.autograd.grad(((o * w_o.double()).sum() + (l * w_l.double()).sum()), (qd, kd, vd))
    for name, g, w in zip(("dq", "dk", "dv"), (q.grad, k.grad, v.grad), want):
        torch.testing.assert_close(g.double(), w, atol=2e-5, rtol=1e-4, msg=name)


def test_varlen_lse_gradient_triton_matches_reference():
    lens = [5, 0, 12]
    cu = torch.tensor([0, 5, 5, 17], dtype=torch.int32)
    q = torch.randn(17, 4, 16, requires_grad=True)
    k = torch.randn(17, 2, 16, requires_grad=True)
    v = torch.randn(17, 2, 16, requires_grad=True)
    w_o, w_l = torch.randn(17, 4, 16), torch.randn(4, 17)
    grads = {}
    for impl in ("triton", "reference"):
        for t in (q, k, v):
            t.grad = None
        with pk.use(varlen_attention=impl):
            out, lse = pk.varlen_attention(q, k, v, cu, cu, max(lens), max(lens), causal=True,
                                           return_lse=True)
            ((out * w_o).sum() + (lse * w_l).sum()).backward()
        grads[impl] = [t.grad.clone() for t in (q, k, v)]
    for name, a, b in zip(("dq", "dk", "dv"), grads["triton"], grads["reference"]):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)
    # and the lse term is really there: without it dq differs
    for t in (q, k, v):
        t.grad = None
    with pk.use(varlen_attention="reference"):
        out = pk.varlen_attention(q, k, v, cu, cu, max(lens), max(lens), causal=True)
        (out * w_o).sum().backward()
    assert (q.grad - grads["reference"][0]).abs().max() > 1e-3
