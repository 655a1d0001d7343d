"""V's head dim different from Q/K's (MLA-style 192 / 128, as FlashAttention-3 allows) on
attention and varlen_attention.

Where it runs: the reference (forward and backward) and the Triton forward (here under the
interpreter; codegen in test_codegen_attention.py's "mla" cases). The C++ engine, the torch
provider and the Triton backward refuse it with a reason (their tiles share one head dim):
the dispatcher then runs the next impl, which these tests check too.
"""
from __future__ import annotations

import pytest
import torch

import polykernels as pk
from polykernels import reference as ref
from polykernels.dispatch import registry
from polykernels.ops.attention import attention_args, varlen_attention_args
from polykernels.reference.attention_ref import attention_math

HQ, HK, D, DV = 4, 2, 40, 24
# a few units of the dtype's precision relative to the output's magnitude (P is rounded to the
# input dtype before the PV product in the kernel, as in FlashAttention)
TOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _naive(q, k, v, scale, causal):
    """float64 attention of one sequence [S, H, D] (GQA expanded), bottom-right causal."""
    sq, sk = q.shape[0], k.shape[0]
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1).double(), v.repeat_interleave(g, 1).double()
    s = torch.einsum("qhd,khd->hqk", q.double(), k) * scale
    if causal:
        i, j = torch.arange(sq)[:, None], torch.arange(sk)[None, :]
        s = s.masked_fill((i + sk - sq - j) < 0, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)   # a row that sees no key: 0
    return torch.einsum("hqk,khd->qhd", p, v)


def test_reference_matches_naive_dense_and_varlen():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 7, HQ, D), torch.randn(2, 9, HK, D), torch.randn(2, 9, HK, DV)
    out, _ = ref.attention(q.double(), k.double(), v.double(), True, 0.3, -1, -1, 0.0, None)
    assert out.shape == (2, 7, HQ, DV)
    for b in range(2):
        torch.testing.assert_close(out[b], _naive(q[b], k[b], v[b], 0.3, True))
    cu_q, cu_k = torch.tensor([0, 3, 3, 8], dtype=torch.int32), torch.tensor([0, 5, 6, 10], dtype=torch.int32)
    vq, vk, vv = torch.randn(8, HQ, D).double(), torch.randn(10, HK, D).double(), torch.randn(10, HK, DV).double()
    vout, _ = ref.varlen_attention(vq, vk, vv, cu_q, cu_k, 5, 5, True, 0.3, -1, -1, 0.0, None)
    assert vout.shape == (8, HQ, DV)
    torch.testing.assert_close(vout[:3], _naive(vq[:3], vk[:5], vv[:5], 0.3, True))
    torch.testing.assert_close(vout[3:], _naive(vq[3:], vk[6:], vv[6:], 0.3, True))


def test_public_op_runs_and_differentiates_with_dv():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 5, HQ, D, requires_grad=True), torch.randn(2, 8, HK, D, requires_grad=True),
               torch.randn(2, 8, HK, DV, requires_grad=True))
    out = pk.attention(q, k, v, causal=True, window=(4, 0))
    assert out.shape == (2, 5, HQ, DV)
    out.square().sum().backward()
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want, _ = attention_math(*leaves, True, D ** -0.5, 4, 0, 0.0, None)
    want.square().sum().backward()
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-6)
    for got, w in zip((q.grad, k.grad, v.grad), leaves):
        assert got.shape == w.shape
        torch.testing.assert_close(got.double(), w.grad, rtol=1e-4, atol=1e-5)


def test_impls_that_share_one_head_dim_refuse_by_reason():
    q, k, v = torch.randn(1, 3, HQ, D), torch.randn(1, 4, HK, D), torch.randn(1, 4, HK, DV)
    d = registry.explain("attention", attention_args(q, k, v))
    assert "head_dim" in d.refused["cpp@cpu"] and "head_dim" in d.refused["torch@torch"]
    assert d.chosen.name == "reference"


# -- Triton under the interpreter --------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("features", [False, True])
def test_triton_forward_dense_and_varlen(dtype, features):
    fi = pytest.importorskip("polykernels.triton.flash_attention.impl")
    torch.manual_seed(2)
    kw = dict(causal=True, window=(3, 0), softcap=20.0, alibi_slopes=torch.rand(HQ),
              sinks=torch.randn(HQ)) if features else dict(causal=False)
    q, k, v = torch.randn(2, 7, HQ, D).to(dtype), torch.randn(2, 9, HK, D).to(dtype), torch.randn(2, 9, HK, DV).to(dtype)
    args = attention_args(q, k, v, **kw)
    assert fi.attention_supports(*args) is None
    got, want = fi.attention(*args), ref.attention(*args)
    assert got[0].shape == (2, 7, HQ, DV)
    assert (got[0].float() - want[0].float()).abs().max() <= TOL[dtype] * (want[0].float().abs().max() + 1)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-4)
    cu_q, cu_k = torch.tensor([0, 3, 3, 8], dtype=torch.int32), torch.tensor([0, 5, 6, 10], dtype=torch.int32)
    vargs = varlen_attention_args(torch.randn(8, HQ, D).to(dtype), torch.randn(10, HK, D).to(dtype),
                                  torch.randn(10, HK, DV).to(dtype), cu_q, cu_k, 5, 5, **kw)
    vgot, vwant = fi.varlen_attention(*vargs), ref.varlen_attention(*vargs)
    assert vgot[0].shape == (8, HQ, DV)
    assert (vgot[0].float() - vwant[0].float()).abs().max() <= TOL[dtype] * (vwant[0].float().abs().max() + 1)
    torch.testing.assert_close(vgot[1], vwant[1], rtol=1e-4, atol=1e-4)


def test_triton_backward_refuses_dv():
    fi = pytest.importorskip("polykernels.triton.flash_attention.impl")
    q, k, v = torch.randn(1, 3, HQ, D).half(), torch.randn(1, 4, HK, D).half(), torch.randn(1, 4, HK, DV).half()
    o, l = ref.attention(q, k, v, False, 0.2, -1, -1, 0.0, None)
    reason = fi.attention_backward_supports(torch.randn_like(o), q, k, v, o, l, False, 0.2, -1, -1, 0.0, None)
    assert reason is not None and "head_dim" in reason
