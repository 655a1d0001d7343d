"""A key a query cannot see contributes nothing to it, not 0 * V: NaN or inf in a V row hidden
by the causal mask, a sliding window or a sequence boundary must not reach the rows that cannot
see it (issue 14). Rows that do see it get NaN (inf for an infinity), as the sums would.

Each CPU impl (C++ on every ISA path, the torch provider, the reference) against a run with the
same inputs where the non-finite V rows are replaced by finite values: the rows that cannot see
them must match that run exactly (same impl, same arithmetic)."""
from __future__ import annotations

import pytest
import torch

from polykernels.dispatch import registry

NAN, INF = float("nan"), float("inf")
_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def _impls(op, args):
    registry.ensure_loaded()
    labels = [i for i in registry.impls[op] if i.backend in ("cpu", "torch", "reference")]
    return [i for i in labels if i.supports(*args) is None]


def _poison(v, rows, value):
    bad = v.clone()
    bad[..., rows, :, :] = value   # v [B, S, H, D] / [T, H, D]: rows index the sequence dim
    return bad


def _check(op, build, hidden_rows, seeing_rows, isa_name):
    """build(v) -> internal args; hidden_rows / seeing_rows index the output's token dim."""
    clean_args = build(None)
    impls = _impls(op, clean_args)
    assert any(i.name == "reference" for i in impls)
    for impl in impls:
        if (impl.name == "cpp") != (isa_name is not None):
            continue   # cpp runs in the tests with the `isa` fixture, the others once
        clean = impl.fn(*clean_args)[0]
        for value in (NAN, INF):
            out = impl.fn(*build(value))[0]
            # close, not equal: an impl may take another path for non-finite V (summation order)
            torch.testing.assert_close(out.index_select(-3, hidden_rows),
                                       clean.index_select(-3, hidden_rows),
                                       **_TOL[clean.dtype],
                                       msg=lambda m: f"{impl.label} ({value} in V): {m}")
            seen = out.index_select(-3, seeing_rows)
            assert bool(seen.isnan().any() if value != value else (~seen.isfinite()).any()), impl.label


def _attention_case(dtype, case):
    sq, sk = (70, 70) if case != "causal sq<sk" else (37, 70)
    q, k = torch.randn(2, sq, 4, 16, dtype=dtype), torch.randn(2, sk, 2, 16, dtype=dtype)
    v = torch.randn(2, sk, 2, 16, dtype=dtype)
    poisoned = 45                            # key position (sq<sk: query row 45 - 33 = 12 sees it)
    window = (5, 0) if case == "window" else (-1, -1)

    def build(value):
        vv = v if value is None else _poison(v, [poisoned], value)
        return (q, k, vv, True, 0.25, window[0], window[1], 0.0, None)
    shift = sk - sq                          # bottom-right causal: query i sees keys <= i + shift
    rows = torch.arange(sq)
    sees = (rows + shift >= poisoned) & ((rows + shift - poisoned <= window[0]) | (window[0] < 0))
    return build, rows[~sees], rows[sees]


def _varlen_case():
    lens = [5, 40, 1, 33]
    cu = torch.tensor([0, 5, 45, 46, 79], dtype=torch.int32)
    q, k, v = torch.randn(79, 4, 16), torch.randn(79, 2, 16), torch.randn(79, 2, 16)
    poisoned = [20, 60]                      # inside sequence 1 and sequence 3

    def build(value):
        vv = v if value is None else _poison(v[None], poisoned, value)[0]
        return (q, k, vv, cu, cu, max(lens), max(lens), True, 0.25, -1, -1, 0.0, None)
    tok = torch.arange(79)
    sees = ((tok >= 20) & (tok < 45)) | (tok >= 60)
    return build, tok[~sees], tok[sees]


CASES = ["causal", "window", "causal sq<sk"]
DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_attention(dtype, case):
    _check("attention", *_attention_case(dtype, case), None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_attention_cpp(isa, dtype, case):
    _check("attention", *_attention_case(dtype, case), isa)


def test_varlen_sequence_boundaries_and_causal():
    _check("varlen_attention", *_varlen_case(), None)


def test_varlen_cpp(isa):
    _check("varlen_attention", *_varlen_case(), isa)


def test_reference_backward_keeps_masked_rows_finite():
    """dq of the rows that cannot see the NaN V row stays finite (their dP there is 0, not
    dO . NaN); the rows that see it are NaN."""
    from polykernels.reference import attention_ref
    q, k, v = torch.randn(1, 20, 2, 8), torch.randn(1, 20, 2, 8), torch.randn(1, 20, 2, 8)
    v[0, 15] = NAN
    out, lse = attention_ref.attention(q, k, v, True, 0.3, -1, -1, 0.0, None)
    dq, dk, dv = attention_ref.attention_backward(torch.randn_like(out), q, k, v, out, lse, True,
                                                  0.3, -1, -1, 0.0, None)
    assert dq[0, :15].isfinite().all() and dq[0, 15:].isnan().all()
