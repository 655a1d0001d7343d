"""The C++ CPU merge_attention_states kernel (``torch.ops.polykernels_C``, impl "cpp") against
a float64 merge written here, and through dispatch.

out = (e^{lse_a - m} out_a + e^{lse_b - m} out_b) / (e^{lse_a - m} + e^{lse_b - m}),
lse = m + log(e^{lse_a - m} + e^{lse_b - m}); a side with lse -inf contributes nothing, both
-inf gives out 0 and lse -inf. Tolerance: 2x the error of the same merge done by torch in the
input dtype, plus a floor.
"""
from __future__ import annotations

import math

import pytest
import torch

import polykernels as pk
from polykernels import _extension
from test_reference_attention import assert_close

pytestmark = pytest.mark.skipif(_extension.unavailable_reason() is not None,
                                reason=f"{_extension.unavailable_reason()} (test_extension.py "
                                       "fails for this separately)")
FLOOR = {torch.float32: 1e-6, torch.bfloat16: 4e-3, torch.float16: 5e-4}


def merge64(out_a, lse_a, out_b, lse_b, dtype=torch.float64):
    """Elementwise merge in ``dtype`` (fp64: the oracle; input dtype: the baseline)."""
    la, lb = lse_a.to(dtype), lse_b.to(dtype)
    m = torch.maximum(la, lb)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    wa, wb = torch.exp(la - m), torch.exp(lb - m)
    den = wa + wb
    lse = torch.log(den) + m
    den = torch.where(den == 0, torch.ones_like(den), den)
    wa = (wa / den).transpose(-1, -2)[..., None]
    wb = (wb / den).transpose(-1, -2)[..., None]
    oa = torch.where(wa > 0, out_a.to(dtype), torch.zeros((), dtype=dtype))
    ob = torch.where(wb > 0, out_b.to(dtype), torch.zeros((), dtype=dtype))
    return oa * wa + ob * wb, lse


def make_states(lead, s, h, d, dtype, noncontig, neg_inf):
    shape = (*lead, s, h, d)
    if noncontig:   # [.., H, S, D] in memory, viewed as [.., S, H, D]; lse strided too
        out_a = torch.randn(*lead, h, s, d, dtype=dtype).transpose(-2, -3)
        out_b = torch.randn(*lead, h, s, d * 2, dtype=dtype)[..., ::2].transpose(-2, -3)
        lse_a = torch.randn(*lead, s, h).transpose(-1, -2) * 3
        lse_b = (torch.randn(*lead, h, s * 2) * 3)[..., ::2]
    else:
        out_a, out_b = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
        lse_a = torch.randn(*lead, h, s) * 3
        lse_b = torch.randn(*lead, h, s) * 3
    if neg_inf:
        lse_a[..., 0, 0] = -math.inf                         # only b
        lse_b[..., 0, 1 % s] = -math.inf                     # only a
        lse_a[..., h - 1, s - 1] = lse_b[..., h - 1, s - 1] = -math.inf   # neither
        lse_b[..., 0, 0] = 50.0                              # large lse: no overflow
        out_a[..., 0, 0, :] = math.nan   # a side with lse -inf contributes nothing, not even NaN
    return out_a, lse_a, out_b, lse_b


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("lead", [(), (2,)], ids=["3d", "4d"])
@pytest.mark.parametrize("noncontig", [False, True], ids=["contig", "strided"])
@pytest.mark.parametrize("neg_inf", [False, True], ids=["finite", "neginf"])
def test_cpp_merge_matches_oracle(dtype, lead, noncontig, neg_inf):
    s, h, d = 13, 3, 40
    out_a, lse_a, out_b, lse_b = make_states(lead, s, h, d, dtype, noncontig, neg_inf)
    assert noncontig == (not out_a.is_contiguous())
    out, lse = torch.ops.polykernels_C.merge_attention_states(out_a, lse_a, out_b, lse_b)
    assert out.shape == out_a.shape and out.dtype == dtype
    assert lse.shape == lse_a.shape and lse.dtype == torch.float32
    want_o, want_l = merge64(out_a, lse_a, out_b, lse_b)
    base_o, _ = merge64(out_a, lse_a, out_b, lse_b, dtype=dtype if dtype == torch.float32 else torch.float32)
    base_o = base_o.to(dtype)
    tol = 2 * (base_o.double() - want_o).abs().max().item() + FLOOR[dtype]
    assert_close("out", out, want_o, tol)
    assert_close("lse", lse, want_l, 1e-5 * (1 + want_l[torch.isfinite(want_l)].abs().max().item()))
    if neg_inf:
        idx = (..., s - 1, h - 1, slice(None))
        assert (out[idx] == 0).all() and torch.isneginf(lse[..., h - 1, s - 1]).all()
        assert not torch.isnan(out).any() and not torch.isnan(lse).any()


def test_cpp_merge_two_halves_equals_whole():
    q = torch.randn(1, 9, 2, 16)
    k = torch.randn(1, 20, 2, 16)
    v = torch.randn(1, 20, 2, 16)
    scale = 0.25
    o_a, l_a = pk.reference.attention(q, k[:, :7], v[:, :7], False, scale, -1, -1, 0.0, None)
    o_b, l_b = pk.reference.attention(q, k[:, 7:], v[:, 7:], False, scale, -1, -1, 0.0, None)
    whole_o, whole_l = pk.reference.attention(q, k, v, False, scale, -1, -1, 0.0, None)
    out, lse = torch.ops.polykernels_C.merge_attention_states(o_a, l_a, o_b, l_b)
    assert_close("out", out, whole_o, 1e-5)
    assert_close("lse", lse, whole_l, 1e-5)


def test_dispatch_picks_cpp_on_cpu_and_matches_reference():
    out_a, lse_a, out_b, lse_b = make_states((2,), 5, 4, 8, torch.bfloat16, True, True)
    d = pk.explain("merge_attention_states", out_a, lse_a, out_b, lse_b)
    assert d.chosen.label == "cpp@cpu", str(d)
    got = pk.merge_attention_states(out_a, lse_a, out_b, lse_b)
    with pk.use(merge_attention_states="reference"):
        want = pk.merge_attention_states(out_a, lse_a, out_b, lse_b)
    assert_close("out", got[0], want[0].float(), 1e-2)
    assert_close("lse", got[1], want[1], 1e-5 * 10)
    # fp64 is not a cpp dtype: refused with a reason, the reference runs
    d64 = pk.explain("merge_attention_states", out_a.double(), lse_a, out_b.double(), lse_b)
    assert d64.chosen.name == "reference" and "float64" in d64.refused["cpp@cpu"]
