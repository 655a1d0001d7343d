"""A key a query cannot see contributes nothing to it, not 0 * V: NaN or inf in a V row hidden
by the causal mask, a sliding window or a sequence boundary must not reach the rows that cannot
see it (issue 14). Rows that do see it get NaN (inf for an infinity), as the sums would.

Each CPU impl (C++ on every ISA path, the torch provider, the reference) and the Triton kernels
(under TRITON_INTERPRET=1, which conftest sets) against a run with the same inputs where the
non-finite V rows are replaced by finite values: the rows that cannot see them must match that
run exactly (same impl, same arithmetic)."""
from __future__ import annotations

import pytest
import torch

from polykernels.dispatch import registry

NAN, INF = float("nan"), float("inf")
_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
        torch.float16: dict(rtol=2e-3, atol=2e-3)}
CPU_BACKENDS = ("cpu", "torch", "reference")
# Triton registers one kernel for both GPU vendors; on CPU tensors it runs in the interpreter.
TRITON = ("nvidia",)


def _impls(op, args, backends=CPU_BACKENDS):
    registry.ensure_loaded()
    labels = [i for i in registry.impls[op] if i.backend in backends]
    return [i for i in labels if i.supports(*args) is None]


def _poison(v, rows, value):
    bad = v.clone()
    bad[..., rows, :, :] = value   # v [B, S, H, D] / [T, H, D]: rows index the sequence dim
    return bad


def _check(op, build, hidden_rows, seeing_rows, isa_name, backends=CPU_BACKENDS):
    """build(v) -> internal args; hidden_rows / seeing_rows index the output's token dim."""
    clean_args = build(None)
    impls = _impls(op, clean_args, backends)
    assert any(i.name == ("triton" if backends == TRITON else "reference") for i in impls)
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


def _attention_case(dtype, case, batch=2):
    sq, sk = (70, 70) if case != "causal sq<sk" else (37, 70)
    q, k = torch.randn(batch, sq, 4, 16, dtype=dtype), torch.randn(batch, sk, 2, 16, dtype=dtype)
    v = torch.randn(batch, sk, 2, 16, dtype=dtype)
    poisoned = 45                            # key position (sq<sk: query row 45 - 33 = 12 sees it)
    window = (5, 0) if case == "window" else (-1, -1)

    def build(value):
        vv = v if value is None else _poison(v, [poisoned], value)
        return (q, k, vv, True, 0.25, window[0], window[1], 0.0, None)
    shift = sk - sq                          # bottom-right causal: query i sees keys <= i + shift
    rows = torch.arange(sq)
    sees = (rows + shift >= poisoned) & ((rows + shift - poisoned <= window[0]) | (window[0] < 0))
    return build, rows[~sees], rows[sees]


def _varlen_case(dtype=torch.float32):
    lens = [5, 40, 1, 33]
    cu = torch.tensor([0, 5, 45, 46, 79], dtype=torch.int32)
    q, k, v = (torch.randn(79, h, 16, dtype=dtype) for h in (4, 2, 2))
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


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_cpp_single_query(isa, dtype):
    """One query per sequence (decode over a dense cache), where the C++ kernels skip the scan
    of V for non-finite values: a window hides the poisoned key, or the query sees it."""
    q = torch.randn(2, 1, 4, 16, dtype=dtype)
    k, v = torch.randn(2, 70, 2, 16, dtype=dtype), torch.randn(2, 70, 2, 16, dtype=dtype)
    cpp = next(i for i in _impls("attention", (q, k, v, True, 0.25, 5, 0, 0.0, None)) if i.name == "cpp")
    for value in (NAN, INF):
        bad = _poison(v, [45], value)
        hidden = cpp.fn(q, k, bad, True, 0.25, 5, 0, 0.0, None)[0]        # sees keys 64..69
        torch.testing.assert_close(hidden, cpp.fn(q, k, v, True, 0.25, 5, 0, 0.0, None)[0], **_TOL[dtype])
        seen = cpp.fn(q, k, bad, True, 0.25, -1, -1, 0.0, None)[0]        # sees every key
        assert bool(seen.isnan().all() if value != value else (~seen.isfinite()).all())


def test_varlen_sequence_boundaries_and_causal():
    _check("varlen_attention", *_varlen_case(), None)


def test_varlen_cpp(isa):
    _check("varlen_attention", *_varlen_case(), isa)


# -- Triton (interpreter) ---------------------------------------------------------------------
# Its tiles are 32 x 32 there: the poisoned keys sit in partly masked key blocks (the causal
# diagonal, the window edge, the sequence boundaries), where the leak is.
TRITON_DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# (the forward zeroes non-finite V entries on partly masked blocks and makes the rows that
# see one NaN: a row that sees an infinity gets NaN, not inf, which the check accepts)
@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_attention_triton(dtype, case):
    _check("attention", *_attention_case(dtype, case, batch=1), None, TRITON)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_varlen_triton(dtype):
    _check("varlen_attention", *_varlen_case(dtype), None, TRITON)


def _triton_backward(q, k, v, clean_v, window, causal=True):
    """Triton (dq, dk, dv) for V = v, with out / lse from the forward on clean_v: what a
    forward that does not leak gives (lse does not depend on V; out of the rows that cannot
    see the poisoned keys does not either), so the backward is tested on its own."""
    args = (causal, 0.3, *window, 0.0, None)
    fwd = _impls("attention", (q, k, v, *args), TRITON)[0]
    bwd = _impls("attention_backward", (q, q, k, v, q, None, *args), TRITON)[0]
    out, lse = fwd.fn(q, k, clean_v, *args)
    return bwd.fn(torch.ones_like(out), q, k, v, out, lse, *args)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_triton_backward_keeps_masked_rows_finite(dtype):
    """dq of rows that cannot see a NaN V row matches the clean run (their dP there is 0, not
    dO . NaN); dv does not read V at all. Rows that see it get NaN."""
    q, k, v = (torch.randn(1, 70, 2, 16, dtype=dtype) for _ in range(3))
    bad = v.clone()
    bad[0, 45] = NAN
    dq0, _, dv0 = _triton_backward(q, k, v, v, (-1, -1))
    dq, _, dv = _triton_backward(q, k, bad, v, (-1, -1))
    torch.testing.assert_close(dq[0, :45], dq0[0, :45], **_TOL[dtype])
    assert dq[0, 45:].isnan().all()
    torch.testing.assert_close(dv, dv0, **_TOL[dtype])


def test_triton_backward_key_no_row_sees():
    """NaN / inf V rows that no query sees (causal sq < sk with a window: keys 0..27 are out
    of every row's window, but inside a key block the kernels visit) change no gradient: dk of
    those keys is 0, not a sum of 0 * NaN."""
    q = torch.randn(1, 37, 2, 16, dtype=torch.float16)
    k, v = (torch.randn(1, 70, 2, 16, dtype=torch.float16) for _ in range(2))
    bad = v.clone()
    bad[0, 10] = NAN
    bad[0, 20] = INF
    grads0 = _triton_backward(q, k, v, v, (5, 0))
    grads = _triton_backward(q, k, bad, v, (5, 0))
    for got, want in zip(grads, grads0):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


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


# -- the Triton paged kernel (interpreter here) ------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("window_left", [-1, 4])
@pytest.mark.parametrize("splits", [1, 2])
def test_paged_triton_multi_token(dtype, window_left, splits):
    """q_len 3 (speculative decoding rows): the new tokens' V rows are hidden from the earlier
    tokens of their sequence, and a window hides old keys. Rows that cannot see a poisoned V
    row match the clean run exactly; rows that see one are not finite."""
    L = pytest.importorskip("polykernels.triton.paged_attention.launcher")
    bs = 4
    k = torch.randn(8, bs, 2, 16, dtype=dtype)
    v = torch.randn(8, bs, 2, 16, dtype=dtype)
    table = torch.arange(8, dtype=torch.int32).reshape(2, 4)
    seq_lens = torch.tensor([10, 13], dtype=torch.int32)
    q = torch.randn(2, 3, 4, 16, dtype=dtype)

    def run(vv):
        return L.paged_attention(q, k, vv, table, seq_lens, 0.25, window_left, -1, 0.0, None,
                                 None, None, num_splits=splits)[0]

    clean = run(v)
    for value in (NAN, INF):
        bad = v.clone()
        bad[2, 1] = value   # sequence 0, position 9: its last token; tokens 0, 1 cannot see it
        bad[4, 0] = value   # sequence 1, position 0: outside a window of 4
        out = run(bad)
        torch.testing.assert_close(out[0, :2], clean[0, :2], rtol=0, atol=0)
        assert not out[0, 2].isfinite().any()
        if window_left >= 0:
            torch.testing.assert_close(out[1], clean[1], rtol=0, atol=0)
        else:
            assert not out[1].isfinite().any()
