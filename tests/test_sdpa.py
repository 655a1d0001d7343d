"""pk.sdpa: torch.nn.functional.scaled_dot_product_attention's signature and semantics.

The oracle is torch's SDPA itself on float64 copies; the error budget (docs/testing.md) is 2x
the error of torch's SDPA in the input dtype plus a per-dtype floor. Masks that are one band
for every batch and head must run on polykernels' kernels (torch's SDPA is made to raise
while pk.sdpa runs); any other mask must give torch's own result.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import polykernels as pk
from polykernels.compat import sdpa as sdpa_mod

from test_attention_triton_helpers import assert_close_budget

DTYPES = [torch.float32, torch.bfloat16]
TORCH_SDPA = F.scaled_dot_product_attention


def compare(q, k, v, kernels_only=None, **kw):
    """pk.sdpa against torch's SDPA in fp64, budget from torch's SDPA in q's dtype. With
    ``kernels_only`` (pytest's monkeypatch), torch's SDPA raises while pk.sdpa runs: the call
    must have run on polykernels' kernels."""
    want = TORCH_SDPA(q.double(), k.double(), v.double(), **kw)
    base = TORCH_SDPA(q, k, v, **kw)
    if kernels_only is None:
        got = pk.sdpa(q, k, v, **kw)
    else:
        with kernels_only.context() as m:
            m.setattr(sdpa_mod.F, "scaled_dot_product_attention", _no_torch_sdpa)
            got = pk.sdpa(q, k, v, **kw)
    assert got.shape == want.shape and got.dtype == q.dtype
    assert_close_budget("sdpa", got, want, base, 2, q.dtype)
    return got


def _no_torch_sdpa(*args, **kwargs):
    raise AssertionError("pk.sdpa fell back to torch's SDPA")


def fast(q, k, v, monkeypatch, **kw):
    return compare(q, k, v, kernels_only=monkeypatch, **kw)


SHAPES = [  # b, h, L, S, e
    (2, 4, 17, 17, 64),
    (1, 3, 5, 23, 80),     # L < S
    (2, 2, 23, 5, 32),     # L > S
    (1, 4, 1, 13, 16),     # one query row
    (3, 1, 9, 1, 40),      # one key
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sdpa_matches_torch(shape, dtype, monkeypatch):
    b, h, L, S, e = shape
    q, k, v = (torch.randn(b, h, n, e, dtype=dtype) for n in (L, S, S))
    fast(q, k, v, monkeypatch)
    fast(q, k, v, monkeypatch, is_causal=True)        # torch's top-left causal
    fast(q, k, v, monkeypatch, scale=0.3)


@pytest.mark.parametrize("L,S", [(7, 12), (12, 7), (1, 5)])
def test_band_masks_run_on_the_kernels(L, S, monkeypatch):
    q, k, v = (torch.randn(2, 3, n, 16) for n in (L, S, S))
    ones = torch.ones(L, S, dtype=torch.bool)
    masks = {
        "top-left causal": ones.tril(),
        "bottom-right causal": ones.tril(S - L),
        "band": ones.tril(1) & ones.triu(-2),
        "all": ones,
        "none": ~ones,
        "batch-head broadcast [2,1,L,S]": ones.tril(S - L).expand(2, 1, L, S),
        "window [1,1,L,S]": (ones.tril(2) & ones.triu(-1))[None, None],
    }
    for name, m in masks.items():
        fast(q, k, v, monkeypatch, attn_mask=m)
        additive = torch.zeros(m.shape).masked_fill(~m, float("-inf"))
        fast(q, k, v, monkeypatch, attn_mask=additive)
    # finfo.min as "masked" (older transformers) where every row keeps a key; a float mask
    # of another dtype than q's (torch accepts it)
    m = ones.tril(max(S - L, 0))
    fast(q, k, v, monkeypatch, attn_mask=torch.zeros(L, S).masked_fill(~m, torch.finfo(torch.float32).min))
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    fast(qb, kb, vb, monkeypatch, attn_mask=torch.zeros(L, S).masked_fill(~m, float("-inf")))


def test_other_masks_give_torchs_result():
    q, k, v = (torch.randn(2, 3, n, 16) for n in (6, 10, 10))
    cases = [
        torch.rand(2, 1, 6, 10) > 0.4,                       # differs per batch
        torch.tensor([[1, 0, 1, 1, 0, 1, 1, 1, 1, 0]], dtype=torch.bool),  # key mask, no band
        torch.randn(6, 10),                                  # additive bias
        torch.zeros(6, 10).masked_fill(torch.ones(6, 10, dtype=torch.bool).triu(1),
                                       torch.finfo(torch.float32).min)
        .masked_fill(torch.arange(6)[:, None] == 0, torch.finfo(torch.float32).min),  # a row of min
    ]
    for m in cases:
        assert torch.allclose(pk.sdpa(q, k, v, attn_mask=m), TORCH_SDPA(q, k, v, attn_mask=m),
                              atol=1e-6, equal_nan=True)
    # a mask with a gradient keeps it (torch's path)
    bias = torch.randn(6, 10, requires_grad=True)
    pk.sdpa(q, k, v, attn_mask=bias).sum().backward()
    assert bias.grad is not None and bias.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gqa_broadcast_and_layouts(dtype, monkeypatch):
    # GQA with enable_gqa, causal L < S, non-contiguous (FlashAttention-layout views)
    q = torch.randn(2, 9, 8, 32, dtype=dtype).transpose(1, 2)
    k = torch.randn(2, 13, 2, 32, dtype=dtype).transpose(1, 2)
    v = torch.randn(2, 13, 2, 48, dtype=dtype)[..., ::2].transpose(1, 2)   # strided, Ev = 24
    fast(q, k, v, monkeypatch, is_causal=True, enable_gqa=True)
    # one key/value head broadcasts without enable_gqa (as in torch), and batch broadcasting
    fast(q, k[:1, :1], v[:1, :1], monkeypatch)
    # 3-D, 2-D and 5-D inputs
    fast(torch.randn(3, 5, 8, dtype=dtype), torch.randn(3, 7, 8, dtype=dtype),
         torch.randn(3, 7, 8, dtype=dtype), monkeypatch, is_causal=True)
    fast(torch.randn(5, 8, dtype=dtype), torch.randn(7, 8, dtype=dtype),
         torch.randn(7, 8, dtype=dtype), monkeypatch)
    fast(torch.randn(2, 2, 3, 5, 8, dtype=dtype), torch.randn(1, 2, 3, 6, 8, dtype=dtype),
         torch.randn(1, 2, 3, 6, 8, dtype=dtype), monkeypatch)


def test_backward_matches_torch():
    q, k, v = (torch.randn(2, 4, n, 16, requires_grad=True) for n in (7, 11, 11))
    g = torch.randn(2, 4, 7, 16)
    for kw in (dict(is_causal=True), dict(attn_mask=torch.ones(7, 11, dtype=torch.bool).tril(3))):
        (pk.sdpa(q, k, v, **kw) * g).sum().backward()
        got = [t.grad.clone() for t in (q, k, v)]
        for t in (q, k, v):
            t.grad = None
        qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
        (TORCH_SDPA(qd, kd, vd, **kw) * g.double()).sum().backward()
        for name, a, b in zip("qkv", got, (qd.grad, kd.grad, vd.grad)):
            assert torch.allclose(a.double(), b, atol=1e-5, rtol=1e-4), f"d{name} ({kw})"


def test_outside_the_kernels_range_uses_torch():
    q = torch.randn(1, 2, 4, 16, dtype=torch.float64)
    assert torch.equal(pk.sdpa(q, q, q, is_causal=True), TORCH_SDPA(q, q, q, is_causal=True))
    q = torch.randn(1, 2, 4, 320)
    assert torch.allclose(pk.sdpa(q, q, q), TORCH_SDPA(q, q, q), atol=1e-6)


def test_bad_arguments_name_the_argument():
    q = torch.randn(1, 4, 5, 16)
    k = torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match=r"^dropout_p: only 0.0"):
        pk.sdpa(q, q, q, dropout_p=0.1)
    with pytest.raises(ValueError, match=r"^attn_mask: must be None when is_causal"):
        pk.sdpa(q, q, q, attn_mask=torch.ones(5, 5, dtype=torch.bool), is_causal=True)
    with pytest.raises(ValueError, match=r"^key: heads \(2\).*enable_gqa=True"):
        pk.sdpa(q, k, k)
    with pytest.raises(ValueError, match=r"^key: heads \(3\) must divide"):
        pk.sdpa(q, torch.randn(1, 3, 5, 16), torch.randn(1, 3, 5, 16), enable_gqa=True)
    with pytest.raises(TypeError, match=r"^key: expected dtype"):
        pk.sdpa(q, q.bfloat16(), q)
    with pytest.raises(ValueError, match=r"^key: head_dim"):
        pk.sdpa(q, q[..., :8], q)
    with pytest.raises(ValueError, match=r"^value: seqlen"):
        pk.sdpa(q, q, q[:, :, :3])
    with pytest.raises(ValueError, match=r"^scale"):
        pk.sdpa(q, q, q, scale=float("nan"))
    with pytest.raises(TypeError, match=r"^is_causal"):
        pk.sdpa(q, q, q, is_causal=1)
    with pytest.raises(ValueError, match=r"^query, key, value: batch dims"):
        pk.sdpa(q.expand(2, 4, 5, 16), torch.randn(3, 4, 5, 16), torch.randn(3, 4, 5, 16))
