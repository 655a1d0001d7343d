"""Issue 14, "never silently wrong": the Triton grouped_matmul kernel never trusts group_sizes.

The kernel is called directly under the interpreter (pk.grouped_matmul would reject these
sizes on the CPU eager path before any kernel runs). ``out`` starts as a finite sentinel so a
row the kernel left unwritten shows as 7.0, not NaN: invalid sizes (negative, or a sum other
than T) must turn every row NaN; valid sizes, empty groups included, stay exact.
"""
from __future__ import annotations

import pytest
import torch

from polykernels import reference as ref
from polykernels.triton.matmul import grouped
from test_matmul_triton_helpers import check

SENTINEL = 7.0
T, K, N = 40, 24, 10

INVALID = {
    "sum_less": [10, 0, 20],                # 30 < T: trailing rows would stay unwritten
    "sum_more": [30, 0, 25],                # 55 > T: rows past T would be read and written
    "negative": [50, -20, 10],              # sum == T, but a negative size
    "one_too_big": [0, T + 1, -1],          # sum == T, a size past T
    "int64_wrap": [2**62, 2**62, 2**62, 2**62 + T],  # sums to T modulo 2**64 (int64 only)
}
VALID = [[0, 17, 0, 23], [T, 0, 0], [1, 0, 39]]


def _inputs(dtype, e):
    x = torch.randn(T, K, dtype=dtype)
    w = torch.randn(e, N, K, dtype=dtype).transpose(1, 2)  # [E, K, N] strided view
    return x, w, torch.full((T, N), SENTINEL, dtype=dtype)


def _baseline(x, w, sizes):
    out, start = [], 0
    for e, n in enumerate(sizes):
        out.append(x[start:start + n] @ w[e])
        start += n
    return torch.cat(out)


DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_group_sizes_give_all_nan(dtype, case):
    sizes = INVALID[case]
    index_dtype = torch.int64 if case == "int64_wrap" else torch.int32
    x, w, out = _inputs(dtype, len(sizes))
    got = grouped.grouped_matmul(x, w, torch.tensor(sizes, dtype=index_dtype), out=out)
    assert got.data_ptr() == out.data_ptr()
    unwritten = int((got == SENTINEL).sum())
    finite = int(torch.isfinite(got).sum())
    assert got.isnan().all(), f"{case} {sizes}: {unwritten} elements unwritten, {finite} finite"


def test_no_experts_gives_all_nan():
    x, w, out = _inputs(torch.float32, 0)
    got = grouped.grouped_matmul(x, w, torch.zeros(0, dtype=torch.int32), out=out)
    assert got.isnan().all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sizes", VALID, ids=str)
def test_valid_group_sizes_stay_exact(dtype, sizes):
    x, w, out = _inputs(dtype, len(sizes))
    gs = torch.tensor(sizes, dtype=torch.int64)
    got = grouped.grouped_matmul(x, w, gs, out=out)
    check(got, ref.grouped_matmul(x.double(), w.double(), gs), _baseline(x, w, sizes),
          f"grouped {dtype} {sizes}")


def test_strided_group_sizes_are_read_with_their_stride():
    # A non-contiguous sizes view: reading it as contiguous would see the wrong values.
    sizes = [5, 0, 35]
    x, w, out = _inputs(torch.float32, 3)
    gs = torch.tensor([[s, -99] for s in sizes], dtype=torch.int32)[:, 0]
    got = grouped.grouped_matmul(x, w, gs, out=out)
    check(got, ref.grouped_matmul(x.double(), w.double(), gs.contiguous()), _baseline(x, w, sizes),
          "grouped strided sizes")
