"""The attention reference against float64 formulas written here, from docs/design.md's semantics.

For query row i and key column j of one (batch, head), d = i + Sk - Sq - j:
s = scale * q_i.k_j; softcap: s = c * tanh(s / c); ALiBi: s -= slope * |d|;
visible iff -right <= d <= left (-1 unbounded; causal => right = 0);
out_i = softmax over visible j of s, times v; no visible key: out 0, lse -inf.

The oracle below (``naive_attention``) loops over batch and head and builds the mask from
that definition; it shares no code with polykernels.reference. Inputs in fp64 are compared
tightly; fp16/bf16/fp32 inputs with a tolerance relative to the same attention computed by
torch in the input dtype (docs/testing.md), plus a small absolute floor.
"""
from __future__ import annotations

import math

import pytest
import torch

import polykernels as pk
from polykernels import reference as ref

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FLOOR = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-6, torch.float64: 1e-12}


# -- the independent oracle ---------------------------------------------------------------------
def visible_mask(sq: int, sk: int, causal: bool, left: int, right: int) -> torch.Tensor:
    """[sq, sk] bool, entry (i, j) from the definition, one element at a time."""
    if causal:
        right = 0
    m = torch.zeros(sq, sk, dtype=torch.bool)
    for i in range(sq):
        for j in range(sk):
            d = i + sk - sq - j
            m[i, j] = (left < 0 or d <= left) and (right < 0 or d >= -right)
    return m


def naive_attention(q, k, v, causal=False, scale=None, window=(-1, -1), softcap=0.0,
                    alibi=None, dtype=torch.float64):
    """(out [B, Sq, Hq, D], lse [B, Hq, Sq]) computed in ``dtype``; differentiable."""
    b_, sq, hq, d_ = q.shape
    sk, hk = k.shape[1], k.shape[2]
    scale = d_ ** -0.5 if scale is None else scale
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    vis = visible_mask(sq, sk, causal, *window)
    dist = torch.zeros(sq, sk, dtype=dtype)
    for i in range(sq):
        for j in range(sk):
            dist[i, j] = abs(i + sk - sq - j)
    outs, lses = [], []
    for b in range(b_):
        ob, lb = [], []
        for h in range(hq):
            kh = h // (hq // hk)
            s = (q[b, :, h] @ k[b, :, kh].T) * scale
            if softcap > 0:
                s = softcap * torch.tanh(s / softcap)
            if alibi is not None:
                slope = alibi[b, h] if alibi.dim() == 2 else alibi[h]
                s = s - slope.to(dtype) * dist
            s = torch.where(vis, s, torch.full_like(s, -math.inf))
            m = s.amax(dim=1, keepdim=True) if sk else torch.zeros(sq, 1, dtype=dtype)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            e = torch.exp(s - m)
            den = e.sum(dim=1, keepdim=True)
            p = e / torch.where(den == 0, torch.ones_like(den), den)
            ob.append(p @ v[b, :, kh])
            lb.append((torch.log(den) + m)[:, 0])
        outs.append(torch.stack(ob, dim=1))
        lses.append(torch.stack(lb, dim=0))
    return torch.stack(outs), torch.stack(lses)


def rand_qkv(b, sq, sk, hq, hk, d, dtype, noncontig=False):
    if noncontig:  # heads and seq swapped in memory: a strided view, last dim contiguous
        q = torch.randn(b, hq, sq, d, dtype=dtype).transpose(1, 2)
        k = torch.randn(b, hk, sk, d, dtype=dtype).transpose(1, 2)
        v = torch.randn(b, hk, sk, d * 2, dtype=dtype)[..., ::2].transpose(1, 2)
        return q, k, v
    return (torch.randn(b, sq, hq, d, dtype=dtype), torch.randn(b, sk, hk, d, dtype=dtype),
            torch.randn(b, sk, hk, d, dtype=dtype))


def call_ref(q, k, v, causal=False, scale=None, window=(-1, -1), softcap=0.0, alibi=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return ref.attention(q, k, v, causal, scale, window[0], window[1], softcap, alibi)


def assert_close(name, got, want, tol):
    got64, want64 = got.to(torch.float64), want.to(torch.float64)
    both_inf = torch.isinf(got64) & torch.isinf(want64) & (torch.sign(got64) == torch.sign(want64))
    assert not torch.isnan(got64).any(), f"{name}: NaN at {torch.isnan(got64).nonzero()[:5].tolist()}"
    err = torch.where(both_inf, torch.zeros_like(got64), (got64 - want64).abs())
    err = torch.nan_to_num(err, nan=math.inf)
    worst = err.max().item() if err.numel() else 0.0
    if worst > tol:
        idx = int(err.argmax())
        where = list(torch.unravel_index(torch.tensor(idx), err.shape))
        raise AssertionError(f"{name}: max error {worst:.3g} > tol {tol:.3g} at "
                             f"{[int(w) for w in where]}: got {got64.flatten()[idx].item()}, "
                             f"want {want64.flatten()[idx].item()}")


def check_vs_oracle(q, k, v, **kw):
    """Reference in q's dtype vs fp64 oracle, tolerance relative to a same-dtype torch run."""
    out, lse = call_ref(q, k, v, **kw)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    assert out.shape == (*q.shape[:3], v.shape[-1]) and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    want_o, want_l = naive_attention(q, k, v, **kw)
    # lse is fp32 by contract (also for fp64 inputs): relative fp32 rounding.
    finite = want_l[torch.isfinite(want_l)]
    lse_mag = 1 + (finite.abs().max().item() if finite.numel() else 0.0)
    if q.dtype == torch.float64:
        tol_o, tol_l = 1e-10, 1e-6 * lse_mag
    else:
        base_o, _ = naive_attention(q, k, v, dtype=q.dtype, **kw)
        base_err = (base_o.double() - want_o).abs().max().item()
        tol_o = 2 * base_err + FLOOR[q.dtype]
        tol_l = 1e-5 * lse_mag
    assert_close("out", out, want_o, tol_o)
    assert_close("lse", lse, want_l, tol_l)
    return out, lse, want_o, want_l


# -- forward features ---------------------------------------------------------------------------
CASES = [
    # (B, Sq, Sk, Hq, Hk, D, kwargs)
    (2, 17, 17, 4, 4, 16, {}),
    (1, 1, 1, 1, 1, 1, {}),
    (2, 5, 19, 4, 2, 8, {"causal": True}),              # Sq < Sk: bottom-right
    (1, 19, 7, 2, 2, 8, {"causal": True}),              # Sq > Sk: top rows see nothing
    (1, 13, 13, 2, 1, 12, {"window": (0, 0)}),
    (1, 11, 16, 3, 3, 8, {"window": (3, -1)}),
    (1, 11, 9, 3, 3, 8, {"window": (-1, 2)}),
    (1, 12, 15, 2, 2, 8, {"window": (4, 2)}),
    (1, 12, 15, 2, 2, 8, {"window": (2, 5), "causal": True}),
    (2, 9, 14, 4, 4, 8, {"softcap": 2.0, "scale": 0.9}),
    (2, 9, 14, 4, 2, 8, {"alibi": "h"}),
    (2, 9, 14, 4, 1, 8, {"alibi": "bh", "causal": True}),   # MQA
    (1, 7, 10, 6, 2, 24, {"softcap": 1.5, "alibi": "h", "window": (3, 1)}),
    (1, 113, 113, 2, 1, 5, {"causal": True, "window": (17, -1)}),
]


def _materialise(kw, b, hq):
    kw = dict(kw)
    if kw.get("alibi") == "h":
        kw["alibi"] = torch.rand(hq) * 0.5
    elif kw.get("alibi") == "bh":
        kw["alibi"] = torch.rand(b, hq) * 0.5
    return kw


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[:6]}-{sorted(c[6])}")
def test_forward_fp64(case):
    b, sq, sk, hq, hk, d, kw = case
    q, k, v = rand_qkv(b, sq, sk, hq, hk, d, torch.float64)
    check_vs_oracle(q, k, v, **_materialise(kw, b, hq))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[12]], ids=["plain", "causal", "mixed"])
def test_forward_low_precision(dtype, case):
    b, sq, sk, hq, hk, d, kw = case
    q, k, v = rand_qkv(b, sq, sk, hq, hk, d, dtype, noncontig=True)
    check_vs_oracle(q, k, v, **_materialise(kw, b, hq))


def test_fully_masked_rows_give_zero_and_neg_inf():
    # Sq > Sk causal: rows i < Sq - Sk see no key. Also window (0,0) with Sq > Sk.
    q, k, v = rand_qkv(1, 9, 4, 2, 2, 8, torch.float32)
    out, lse = call_ref(q, k, v, causal=True)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert (out[:, :5] == 0).all(), "fully-masked rows must be exactly 0"
    assert torch.isneginf(lse[:, :, :5]).all() and torch.isfinite(lse[:, :, 5:]).all()
    # No keys at all.
    q, k, v = rand_qkv(1, 3, 0, 2, 2, 8, torch.float32)
    out, lse = call_ref(q, k, v)
    assert (out == 0).all() and torch.isneginf(lse).all()


def test_lse_is_log_sum_exp_of_visible_scores():
    q, k, v = rand_qkv(1, 6, 8, 1, 1, 4, torch.float64)
    _, lse = call_ref(q, k, v, window=(2, 0))
    for i in range(6):
        js = [j for j in range(8) if 0 <= i + 2 - j <= 2]
        s = torch.stack([(q[0, i, 0] @ k[0, j, 0]) * 0.5 for j in js])
        assert abs(lse[0, 0, i].item() - math.log(sum(math.exp(x) for x in s.tolist()))) < 1e-6


def test_default_scale_via_public_api():
    q, k, v = rand_qkv(1, 5, 6, 2, 2, 9, torch.float64)
    out = pk.attention(q, k, v)
    want, _ = naive_attention(q, k, v, scale=9 ** -0.5)
    assert_close("out", out, want, 1e-10)


# -- varlen -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", (torch.float64, torch.bfloat16))
@pytest.mark.parametrize("kw", [{}, {"causal": True}, {"window": (2, 1), "alibi": "bh"}])
def test_varlen(dtype, kw):
    lens_q = [3, 0, 1, 7]
    lens_k = [5, 4, 0, 7]           # seq 1 has no query, seq 2 no key
    hq, hk, d = 4, 2, 8
    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32)
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32)
    q = torch.randn(sum(lens_q), hq, d, dtype=dtype)
    k = torch.randn(sum(lens_k), hk, d, dtype=dtype)
    v = torch.randn(sum(lens_k), hk, d, dtype=dtype)
    kw = _materialise(kw, len(lens_q), hq)
    alibi = kw.get("alibi")
    out, lse = ref.varlen_attention(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k),
                                    kw.get("causal", False), d ** -0.5,
                                    *kw.get("window", (-1, -1)), 0.0, alibi)
    assert out.shape == q.shape and lse.shape == (hq, q.shape[0])
    for bi in range(len(lens_q)):
        q0, q1 = int(cu_q[bi]), int(cu_q[bi + 1])
        k0, k1 = int(cu_k[bi]), int(cu_k[bi + 1])
        if q1 == q0:
            continue
        sub = dict(kw)
        if alibi is not None:
            sub["alibi"] = alibi[bi]
        want_o, want_l = naive_attention(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], **sub)
        tol = 1e-10 if dtype == torch.float64 else 2e-2
        assert_close(f"seq {bi} out", out[q0:q1], want_o[0], tol)
        assert_close(f"seq {bi} lse", lse[:, q0:q1], want_l[0], 1e-5 * (1 + 10))
        if k1 == k0:
            assert (out[q0:q1] == 0).all() and torch.isneginf(lse[:, q0:q1]).all()


# -- backward -----------------------------------------------------------------------------------
def oracle_grads(q, k, v, dout, dlse=None, **kw):
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    o, l = naive_attention(qd, kd, vd, **kw)
    outs, grads = [o], [dout.double()]
    if dlse is not None:
        outs.append(l)
        grads.append(dlse.double())
    return torch.autograd.grad(outs, (qd, kd, vd), grads)


BWD_CASES = [
    (2, 7, 7, 2, 2, 8, {}),
    (1, 5, 11, 4, 2, 8, {"causal": True}),
    (1, 9, 6, 4, 1, 8, {"causal": True}),            # fully masked rows, MQA
    (1, 8, 10, 2, 2, 12, {"window": (3, 1), "softcap": 1.7, "alibi": "h"}),
    (2, 6, 6, 2, 1, 8, {"window": (0, 0), "alibi": "bh"}),
]


@pytest.mark.parametrize("case", BWD_CASES, ids=lambda c: f"{c[:6]}-{sorted(c[6])}")
def test_backward_reference_fp64(case):
    b, sq, sk, hq, hk, d, kw = case
    kw = _materialise(kw, b, hq)
    q, k, v = rand_qkv(b, sq, sk, hq, hk, d, torch.float64)
    dout = torch.randn(b, sq, hq, d, dtype=torch.float64)
    out, lse = call_ref(q, k, v, **kw)
    dq, dk, dv = ref.attention_backward(dout, q, k, v, out, lse, kw.get("causal", False),
                                        kw.get("scale", d ** -0.5), *kw.get("window", (-1, -1)),
                                        kw.get("softcap", 0.0), kw.get("alibi"))
    wq, wk, wv = oracle_grads(q, k, v, dout, **kw)
    for name, g, w in (("dq", dq, wq), ("dk", dk, wk), ("dv", dv, wv)):
        assert g.shape == w.shape
        assert_close(name, g, w, 1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gqa", [1, 2], ids=["mha", "gqa"])
def test_public_attention_backward_end_to_end(dtype, gqa):
    b, sq, sk, hq, d = 2, 9, 13, 4, 16
    q, k, v = rand_qkv(b, sq, sk, hq, hq // gqa, d, dtype)
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    dout = torch.randn(b, sq, hq, d, dtype=dtype)
    pk.attention(q, k, v, causal=True).backward(dout)
    wq, wk, wv = oracle_grads(q, k, v, dout, causal=True)
    # Baseline: autograd through the same formula in the input dtype.
    qb, kb, vb = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    ob, _ = naive_attention(qb, kb, vb, causal=True, dtype=dtype)
    bq, bk, bv = torch.autograd.grad(ob, (qb, kb, vb), dout)
    for name, g, w, bl in (("dq", q.grad, wq, bq), ("dk", k.grad, wk, bk), ("dv", v.grad, wv, bv)):
        assert g.dtype == dtype and g.shape == w.shape
        tol = 3 * (bl.double() - w).abs().max().item() + FLOOR[dtype]
        assert_close(name, g, w, tol)


@pytest.mark.parametrize("gqa", [1, 2])
def test_lse_gradient_path(gqa):
    b, sq, sk, hq, d = 1, 6, 9, 4, 8
    q, k, v = rand_qkv(b, sq, sk, hq, hq // gqa, d, torch.float32)
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    out, lse = pk.attention(q, k, v, causal=True, softcap=3.0, return_lse=True)
    assert lse.shape == (b, hq, sq) and lse.dtype == torch.float32
    w_o, w_l = torch.randn_like(out), torch.randn_like(lse)
    ((out * w_o).sum() + (lse * w_l).sum()).backward()
    wq, wk, wv = oracle_grads(q, k, v, w_o, w_l, causal=True, softcap=3.0)
    for name, g, w in (("dq", q.grad, wq), ("dk", k.grad, wk), ("dv", v.grad, wv)):
        assert_close(name, g, w, 1e-4)
    # The lse term matters: dropping it would give a different dq.
    wq_no, _, _ = oracle_grads(q, k, v, w_o, None, causal=True, softcap=3.0)
    assert (wq_no - wq).abs().max() > 1e-2


def test_varlen_backward_reference_fp64():
    lens_q, lens_k = [4, 0, 3], [6, 2, 3]
    hq, hk, d = 2, 1, 8
    cu_q = torch.tensor([0, 4, 4, 7], dtype=torch.int32)
    cu_k = torch.tensor([0, 6, 8, 11], dtype=torch.int32)
    q = torch.randn(7, hq, d, dtype=torch.float64)
    k = torch.randn(11, hk, d, dtype=torch.float64)
    v = torch.randn(11, hk, d, dtype=torch.float64)
    dout = torch.randn_like(q)
    dq, dk, dv = ref.varlen_attention_backward(dout, q, k, v, None, None, cu_q, cu_k, 4, 6, True,
                                               d ** -0.5, -1, -1, 0.0, None)
    for bi in range(3):
        q0, q1, k0, k1 = int(cu_q[bi]), int(cu_q[bi + 1]), int(cu_k[bi]), int(cu_k[bi + 1])
        if q1 == q0:
            assert (dk[k0:k1] == 0).all() and (dv[k0:k1] == 0).all()
            continue
        wq, wk, wv = oracle_grads(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1],
                                  dout[None, q0:q1], causal=True)
        assert_close("dq", dq[q0:q1], wq[0], 1e-9)
        assert_close("dk", dk[k0:k1], wk[0], 1e-9)
        assert_close("dv", dv[k0:k1], wv[0], 1e-9)
