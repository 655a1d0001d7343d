"""Varlen flash attention (Triton, under TRITON_INTERPRET=1) never trusts cu_seqlens /
max_seqlen (issue 14): on a GPU or under torch.compile no host check reads them, so the kernel
does. A batch that is not valid (first offset != 0, last != total tokens, decreasing offsets,
a sequence longer than max_seqlen) gives NaN in every output row and every lse entry, never a
plausible value, and no read or write outside the tensors.

The launcher is called directly: the public op would reject these values on CPU before any
kernel ran. Output buffers are pre-filled with a finite value (a row nobody writes would keep
it and fail the NaN check) and sit between guard regions that must stay untouched."""
from __future__ import annotations

import pytest
import torch

from polykernels import reference as ref
from polykernels.triton.flash_attention import launch

LENS_Q, LENS_K = [17, 40, 5, 33], [20, 45, 1, 36]   # 40 > one 32-row block (interpreter tiles)
TQ, TK, HQ, HK, D = sum(LENS_Q), sum(LENS_K), 2, 1, 16
MAX_Q, MAX_K = max(LENS_Q), max(LENS_K)
GUARD, SENTINEL, FILL = 64 * HQ * D, 7.0, 0.25   # guard: 64 token rows on each side


def _cu(lens, dtype=torch.int32):
    return torch.tensor([0] + lens).cumsum(0).to(dtype)


def _guarded(shape, dtype):
    """(whole buffer, the view the kernel gets): contiguous, exactly shaped, FILL inside,
    SENTINEL in the guard regions before and after."""
    n = torch.Size(shape).numel()
    whole = torch.full((n + 2 * GUARD,), SENTINEL, dtype=dtype)
    view = whole[GUARD:GUARD + n].view(shape)
    view.fill_(FILL)
    return whole, view


def _guards_intact(whole):
    return bool((whole[:GUARD] == SENTINEL).all() and (whole[-GUARD:] == SENTINEL).all())


def _inputs(dtype=torch.float16):
    q = torch.randn(TQ, HQ, D, dtype=dtype)
    k, v = torch.randn(TK, HK, D, dtype=dtype), torch.randn(TK, HK, D, dtype=dtype)
    return q, k, v


ARGS = (True, D ** -0.5, -1, -1, 0.0, None)   # causal, scale, window, softcap, alibi


def _forward(q, k, v, cu_q, cu_k, max_q, max_k):
    whole_o, out = _guarded((TQ, HQ, D), q.dtype)
    whole_l, lse = _guarded((HQ, TQ), torch.float32)
    got, got_lse = launch.forward(q, k, v, cu_q, cu_k, max_q, max_k, *ARGS, out=out, lse=lse)
    assert got.data_ptr() == out.data_ptr() and got_lse.data_ptr() == lse.data_ptr()
    assert _guards_intact(whole_o) and _guards_intact(whole_l), "write outside out / lse"
    return got, got_lse


@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64])
def test_valid_batch_is_exact(cu_dtype):
    """The checks change nothing for a valid batch: every row written, as the reference."""
    q, k, v = _inputs()
    cu_q, cu_k = _cu(LENS_Q, cu_dtype), _cu(LENS_K, cu_dtype)
    out, lse = _forward(q, k, v, cu_q, cu_k, MAX_Q, MAX_K)
    want, want_lse = ref.varlen_attention(q.double(), k.double(), v.double(), cu_q, cu_k, MAX_Q,
                                          MAX_K, *ARGS)
    torch.testing.assert_close(out.double(), want, atol=2e-3, rtol=0)
    torch.testing.assert_close(lse.double(), want_lse.double(), atol=1e-4, rtol=0)


def _bad(which, values, dtype=torch.int32):
    """(cu_q, cu_k, max_q, max_k) with ``which`` replaced by ``values``."""
    case = dict(cu_q=_cu(LENS_Q), cu_k=_cu(LENS_K), max_q=MAX_Q, max_k=MAX_K)
    case[which] = torch.tensor(values, dtype=dtype) if isinstance(values, list) else values
    return case["cu_q"], case["cu_k"], case["max_q"], case["max_k"]


BAD = {
    "q decreasing": _bad("cu_q", [0, 57, 17, 62, TQ]),
    "k decreasing": _bad("cu_k", [0, 20, 65, 50, TK]),
    "q last < total": _bad("cu_q", [0, 17, 57, 62, TQ - 9]),
    "q last > total": _bad("cu_q", [0, 17, 57, 62, TQ + 40]),
    "k last > total": _bad("cu_k", [0, 20, 65, 66, TK + 1000]),
    "q first != 0": _bad("cu_q", [3, 17, 57, 62, TQ]),
    "k first < 0": _bad("cu_k", [-30, 20, 65, 66, TK]),
    "q huge": _bad("cu_q", [0, 2**31 - 1, -2**31, 62, TQ]),
    "k int64 wraps to valid": _bad("cu_k", [0, 20, 65 + 2**32, 66, TK], torch.int64),
    # 40-token sequence: the grid (from max_seqlen_q) has one 32-row block per sequence, so
    # rows 32..39 of that sequence are covered by no program
    "max_q < seq, beyond grid": _bad("max_q", 20),
    "max_q < seq, inside grid": _bad("max_q", 35),
    "max_k < seq": _bad("max_k", 44),
    "max_q = 0": _bad("max_q", 0),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_invalid_batch_gives_nan_everywhere(case):
    q, k, v = _inputs()
    out, lse = _forward(q, k, v, *BAD[case])
    assert out.isnan().all(), f"{int((~out.isnan()).sum())} output values not NaN"
    assert lse.isnan().all(), f"{int((~lse.isnan()).sum())} lse values not NaN"


@pytest.mark.parametrize("case", ["q decreasing", "q last > total", "k last > total", "k first < 0",
                                  "q huge", "max_q < seq, beyond grid"])
def test_backward_stays_inside(case):
    """The backward kernels clamp the same way: whatever cu_seqlens holds, they write only
    inside dq / dk / dv (their values for a bad batch are not promised: the forward's NaN
    already marks the step)."""
    q, k, v = _inputs()
    cu_q, cu_k, max_q, max_k = BAD[case]
    out, lse = torch.randn_like(q), torch.zeros(HQ, TQ)
    bufs = [_guarded(t.shape, t.dtype) for t in (q, k, v)]
    launch.backward(torch.randn_like(q), q, k, v, out, lse, cu_q, cu_k, max_q, max_k, *ARGS,
                    dq=bufs[0][1], dk=bufs[1][1], dv=bufs[2][1])
    assert all(_guards_intact(whole) for whole, _ in bufs), "write outside dq / dk / dv"
