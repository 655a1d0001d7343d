"""Attention sinks (gpt-oss): one learnable logit per query head in every row's softmax
denominator, a key with no value. On attention, varlen_attention (both with gradients, the
sinks' included), paged_attention and varlen_paged_attention.

The reference is checked against an independent formulation (softmax over the scores with the
sink appended as one more column, which is then dropped); every CPU impl and the Triton kernels
under the interpreter against the reference; impls that cannot take sinks refuse them by name.
"""
from __future__ import annotations

import pytest
import torch

import polykernels as pk
from polykernels import reference as ref
from polykernels.dispatch import registry
from polykernels.ops.attention import attention_args, varlen_attention_args
from polykernels.ops.paged import paged_attention_args, varlen_paged_attention_args
from polykernels.reference.attention_ref import attention_math

HQ, HK, D = 6, 2, 24
NINF = float("-inf")


def _sinks():
    s = torch.randn(HQ) * 2
    s[1] = 25.0    # a sink that dominates every row
    s[2] = -30.0   # one that hardly matters
    return s


def _naive_with_sink(q, k, v, sinks, scale, visible):
    """q [Sq, Hq, D], k/v [Sk, Hq, D] (GQA expanded), visible [Sq, Sk]: the softmax over
    [scores, sink] with the sink column dropped; lse over the same row."""
    s = torch.einsum("qhd,khd->hqk", q.double(), k.double()) * scale
    s = s.masked_fill(~visible, NINF)
    col = sinks.double()[:, None, None].expand(-1, s.shape[1], 1)
    full = torch.cat([s, col], dim=-1)
    p = torch.softmax(full, dim=-1)[..., :-1]
    return torch.einsum("hqk,khd->qhd", p, v.double()), torch.logsumexp(full, dim=-1)


def test_reference_matches_the_extra_column_formulation():
    torch.manual_seed(0)
    sinks = _sinks()
    sq, sk = 7, 5   # causal with sq > sk: the first rows see no key (out 0, lse = sink)
    q, k, v = torch.randn(1, sq, HQ, D), torch.randn(1, sk, HK, D), torch.randn(1, sk, HK, D)
    out, lse = ref.attention(q.double(), k.double(), v.double(), True, 0.3, -1, -1, 0.0, None, sinks)
    i, j = torch.arange(sq)[:, None], torch.arange(sk)[None, :]
    visible = (i + sk - sq - j) >= 0
    g = HQ // HK
    want_o, want_l = _naive_with_sink(q[0], k[0].repeat_interleave(g, 1), v[0].repeat_interleave(g, 1),
                                      sinks, 0.3, visible)
    torch.testing.assert_close(out[0], want_o, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse[0].double(), want_l, rtol=1e-6, atol=1e-6)
    assert torch.equal(out[0, :2], torch.zeros_like(out[0, :2]))          # rows that see nothing
    torch.testing.assert_close(lse[0, :, :2], sinks[:, None].expand(-1, 2).float())


def _check(got, want, dtype):
    (go, gl), (wo, wl) = got, want
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    assert not go.isnan().any() and not gl.isnan().any()
    assert (go.float() - wo.float()).abs().max().item() <= tol * (wo.float().abs().max().item() + 1)
    torch.testing.assert_close(gl, wl, rtol=2e-5, atol=2e-5)


def _cpu_impls(op, args):
    registry.ensure_loaded()
    return [i for i in registry.impls[op] if i.backend in ("cpu", "torch", "reference")
            and i.supports(*args) is None]


def _cases(dtype):
    torch.manual_seed(1)
    sinks = _sinks()
    q, k, v = (torch.randn(2, s, h, D).to(dtype) for s, h in ((9, HQ), (6, HK), (6, HK)))
    dense = attention_args(q, k, v, causal=True, window=(2, 0), sinks=sinks)
    cu_q, cu_k = torch.tensor([0, 4, 4, 11], dtype=torch.int32), torch.tensor([0, 6, 9, 9], dtype=torch.int32)
    vq, vk, vv = torch.randn(11, HQ, D).to(dtype), torch.randn(9, HK, D).to(dtype), torch.randn(9, HK, D).to(dtype)
    varlen = varlen_attention_args(vq, vk, vv, cu_q, cu_k, 7, 6, causal=True, sinks=sinks)
    nb, bs = 90, 16
    kc, vc = torch.randn(nb, bs, HK, D).to(dtype), torch.randn(nb, bs, HK, D).to(dtype)
    bt = torch.randperm(nb)[:3 * 30].view(3, 30).to(torch.int32)
    sl = torch.tensor([460, 0, 37], dtype=torch.int32)   # long enough for KV splits; a padded slot
    paged = paged_attention_args(torch.randn(3, 2, HQ, D).to(dtype), kc, vc, bt, sl, sinks=sinks)
    vp = varlen_paged_attention_args(torch.randn(6, HQ, D).to(dtype), kc, vc, bt, sl,
                                     torch.tensor([0, 3, 5, 6], dtype=torch.int32), sinks=sinks)
    return {"attention": dense, "varlen_attention": varlen, "paged_attention": paged,
            "varlen_paged_attention": vp}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", ["attention", "varlen_attention", "paged_attention",
                                "varlen_paged_attention"])
def test_every_cpu_impl_with_sinks(op, dtype):
    args = _cases(dtype)[op]
    want = getattr(ref, op)(*args)
    impls = _cpu_impls(op, args)
    assert {"cpp", "reference"} <= {i.name for i in impls}, [i.label for i in impls]
    for impl in impls:
        _check(impl.fn(*args), want, dtype)
    # and the sinks change the result (the test would see an impl that ignored them)
    plain = getattr(ref, op)(*args[:-1], None)
    assert (plain[1] - want[1]).abs().max() > 0.5


def test_impls_without_sinks_refuse_them_by_name():
    args = _cases(torch.float32)["attention"]
    d = registry.explain("attention", args)
    assert "sinks" in d.refused["torch@torch"], d.refused
    with pytest.raises(pk.NoImplError, match="sinks"):
        with pk.use(attention="torch"):
            pk.attention(*args[:3], causal=True, window=(2, 0), sinks=args[-1])


def test_an_impl_written_for_the_older_signature_keeps_working():
    """A plugin registered before sinks existed (9 parameters): used when sinks is None,
    refused (naming sinks) when given, never called with an argument it would ignore."""
    from polykernels.dispatch.registry import Backend, Registry
    calls = []

    def old_attention(q, k, v, causal, softmax_scale, window_left, window_right, softcap, alibi):
        calls.append(1)
        return ref.attention(q, k, v, causal, softmax_scale, window_left, window_right, softcap, alibi)

    def old_supports(q, k, v, causal, softmax_scale, window_left, window_right, softcap, alibi):
        return None

    r = Registry()
    r.register_backend(Backend("cpu", ("cpu",), lambda: True))
    r.register_impl("attention", "old", backends="cpu", fn=old_attention, supports=old_supports,
                    priority=100)
    args = _cases(torch.float32)["attention"]
    without = args[:-1] + (None,)
    assert r.explain("attention", without).chosen.name == "old"
    r.call("attention", *without)
    assert calls == [1]
    d = r.explain("attention", args)
    assert d.chosen is None and "sinks" in d.refused["old@cpu"]


def _grads(fn, tensors, sinks):
    leaves = [t.detach().clone().requires_grad_() for t in (*tensors, sinks)]
    out, lse = fn(*leaves)
    (out.float().square().sum() + lse.sin().sum()).backward()
    return [t.grad for t in leaves]


@pytest.mark.parametrize("varlen", [False, True])
def test_gradients_including_the_sinks(varlen):
    torch.manual_seed(3)
    sinks = _sinks()
    if varlen:
        q, k, v = torch.randn(11, HQ, D), torch.randn(9, HK, D), torch.randn(9, HK, D)
        cu_q, cu_k = torch.tensor([0, 4, 4, 11], dtype=torch.int32), torch.tensor([0, 6, 9, 9], dtype=torch.int32)

        def run(q, k, v, s):
            return pk.varlen_attention(q, k, v, cu_q, cu_k, 7, 6, causal=True, sinks=s, return_lse=True)

        def oracle(q, k, v, s):   # float64 autograd through the reference math, per sequence
            outs, lses = [], []
            for a, b, c, e in ((0, 4, 0, 6), (4, 4, 6, 9), (4, 11, 9, 9)):
                o, l = attention_math(q[None, a:b], k[None, c:e], v[None, c:e], True, D ** -0.5, -1, -1,
                                      0.0, None, s)
                outs.append(o[0])
                lses.append(l[0])
            return torch.cat(outs), torch.cat(lses, dim=-1)
    else:
        q, k, v = torch.randn(2, 9, HQ, D), torch.randn(2, 6, HK, D), torch.randn(2, 6, HK, D)

        def run(q, k, v, s):
            return pk.attention(q, k, v, causal=True, window=(3, 0), sinks=s, return_lse=True)

        def oracle(q, k, v, s):
            return attention_math(q, k, v, True, D ** -0.5, 3, 0, 0.0, None, s)
    got = _grads(run, (q, k, v), sinks)
    want = _grads(oracle, (q.double(), k.double(), v.double()), sinks.double())
    for g, w, name in zip(got, want, ("q", "k", "v", "sinks")):
        assert g is not None, name
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5, msg=f"d{name}")


# -- Triton under the interpreter --------------------------------------------------------------
@pytest.mark.parametrize("op", ["attention", "varlen_attention"])
def test_triton_flash_with_sinks(op):
    fi = pytest.importorskip("polykernels.triton.flash_attention.impl")
    args = _cases(torch.float16)[op]
    _check(getattr(fi, op)(*args), getattr(ref, op)(*args), torch.float16)


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("op", ["paged_attention", "varlen_paged_attention"])
def test_triton_paged_with_sinks(op, splits, monkeypatch):
    L = pytest.importorskip("polykernels.triton.paged_attention.launcher")
    monkeypatch.setattr(L, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                            device=device))
    args = _cases(torch.float16)[op]
    _check(getattr(L, op)(*args, num_splits=splits), getattr(ref, op)(*args), torch.float16)
