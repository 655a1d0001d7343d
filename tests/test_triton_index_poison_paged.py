"""The Triton paged kernels do not trust index values (issue 14; docs/dispatch.md, "Index
values"). On a GPU, and under torch.compile, nobody checks block tables, seq_lens or
cu_seqlens_q before the kernel runs, so the kernel checks what it reads: a wrong value never
addresses memory outside the tensors, and every row that depends on it is NaN (lse NaN),
never a plausible number; rows that do not depend on it stay exact.

The launchers are called directly (the public op refuses these values on the CPU before any
kernel runs), under TRITON_INTERPRET=1, with outputs pre-filled with a finite sentinel so a
row that no program wrote is told apart from a NaN one.
"""
from __future__ import annotations

import pytest
import torch

L = pytest.importorskip("polykernels.triton.paged_attention.launcher")

SENTINEL = 7.0
HQ, HKV, DIM, BS = 4, 2, 16, 4


@pytest.fixture(autouse=True)
def _sentinel_outputs(monkeypatch):
    def fill(shape, dtype, device):
        return torch.full(shape, SENTINEL, dtype=dtype, device=device)
    monkeypatch.setattr(L, "_empty", fill)


def _cache(num_blocks=12, dtype=torch.float16):
    k = torch.randn(num_blocks, BS, HKV, DIM, dtype=dtype)
    v = torch.randn(num_blocks, BS, HKV, DIM, dtype=dtype)
    return k, v


def _paged(q, k, v, table, seq_lens, splits):
    return L.paged_attention(q, k, v, table, seq_lens, DIM ** -0.5, -1, -1, 0.0, None, None, None,
                             num_splits=splits)


def _varlen(q, k, v, table, seq_lens, cu_q, max_q, splits):
    return L.varlen_paged_attention(q, k, v, table, seq_lens, cu_q, max_q, DIM ** -0.5, -1, -1,
                                    0.0, None, None, None, num_splits=splits)


def _table(num_seqs=3, cols=4):
    return torch.arange(num_seqs * cols, dtype=torch.int32).reshape(num_seqs, cols)


def _all_nan(out, lse):
    return bool(out.float().isnan().all()) and bool(lse.isnan().all())


PAGED_CASES = ["block id -1", "block id = num_blocks", "seq_len > table", "seq_len < 0",
               "seq_len < q_len"]


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("case", PAGED_CASES)
def test_paged_bad_index_poisons_that_sequence(case, splits):
    _paged_bad_index(case, splits, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("case", PAGED_CASES)
def test_paged_bad_index_gpu(case):
    """The compiled kernel on a real device (run with -m gpu, docs/gpu-validation.md)."""
    _paged_bad_index(case, 3, "cuda")


def _paged_bad_index(case, splits, device):
    k, v = (t.to(device) for t in _cache())
    q_len = 2
    q = torch.randn(3, q_len, HQ, DIM, dtype=torch.float16, device=device)
    table = _table().to(device)
    seq_lens = torch.tensor([9, 13, 16], dtype=torch.int32, device=device)
    good_out, good_lse = _paged(q, k, v, table, seq_lens, splits)
    assert not good_out.isnan().any() and not good_lse.isnan().any()

    bad_table, bad_lens = table.clone(), seq_lens.clone()
    if case == "block id -1":
        bad_table[1, 2] = -1
    elif case == "block id = num_blocks":
        bad_table[1, 0] = k.shape[0]
    elif case == "seq_len > table":
        bad_lens[1] = table.shape[1] * BS + 1
    elif case == "seq_len < 0":
        bad_lens[1] = -3
    else:
        bad_lens[1] = 1
    out, lse = _paged(q, k, v, bad_table, bad_lens, splits)
    assert _all_nan(out[1], lse[1]), case
    for s in (0, 2):   # the other sequences do not read the bad value: exact
        torch.testing.assert_close(out[s], good_out[s], rtol=0, atol=0)
        torch.testing.assert_close(lse[s], good_lse[s], rtol=0, atol=0)


def test_unused_table_entries_are_not_read():
    """Entries past a sequence's length are padding (vLLM fills them with anything): a bad id
    there is not an error."""
    k, v = _cache()
    q = torch.randn(3, 1, HQ, DIM, dtype=torch.float16)
    table, seq_lens = _table(), torch.tensor([5, 8, 16], dtype=torch.int32)
    padded = table.clone()
    padded[0, 2:] = -1
    padded[1, 2:] = 10 ** 6
    want = _paged(q, k, v, table, seq_lens, 1)
    got = _paged(q, k, v, padded, seq_lens, 1)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def _varlen_case():
    k, v = _cache()
    cu = torch.tensor([0, 3, 4, 9], dtype=torch.int32)          # q runs 3, 1, 5
    seq_lens = torch.tensor([7, 10, 14], dtype=torch.int32)
    q = torch.randn(9, HQ, DIM, dtype=torch.float16)
    return q, k, v, _table(), seq_lens, cu


@pytest.mark.parametrize("splits", [1, 2])
@pytest.mark.parametrize("case", ["decreasing", "first != 0", "last != total", "last > total"])
def test_varlen_bad_cu_seqlens_q_poisons_every_row(case, splits):
    q, k, v, table, seq_lens, cu = _varlen_case()
    good_out, good_lse = _varlen(q, k, v, table, seq_lens, cu, 5, splits)
    assert not good_out.isnan().any() and not good_lse.isnan().any()
    bad = cu.clone()
    if case == "decreasing":
        bad[1:3] = torch.tensor([5, 2], dtype=torch.int32)   # runs 5, -3, 7: 0-4 and 2-8 overlap
    elif case == "first != 0":
        bad[0] = 2
    elif case == "last != total":
        bad[-1] = 7                                          # rows 7, 8 in no run
    else:
        bad[-1] = 40
    out, lse = _varlen(q, k, v, table, seq_lens, bad, 5, splits)
    assert _all_nan(out, lse), f"{case}: {(~out.float().isnan()).sum().item()} values not NaN"


@pytest.mark.parametrize("splits", [1, 2])
def test_varlen_understated_max_seqlen_q(splits):
    """max_seqlen_q sizes the grid. Understated, the result is still exact while the row
    chunks cover every run (16 rows = 8 tokens of 2 heads here); a run past them would leave
    rows to no program, so the whole batch is NaN then, rows past the grid included."""
    q, k, v, table, seq_lens, cu = _varlen_case()
    want = _varlen(q, k, v, table, seq_lens, cu, 5, splits)
    torch.testing.assert_close(_varlen(q, k, v, table, seq_lens, cu, 2, splits), want, rtol=0, atol=0)
    torch.testing.assert_close(_varlen(q, k, v, table, seq_lens, cu, 0, splits), want, rtol=0, atol=0)

    k, v = _cache(num_blocks=20)
    q = torch.randn(20, HQ, DIM, dtype=torch.float16)
    cu = torch.tensor([0, 2, 3, 20], dtype=torch.int32)       # a run of 17 tokens = 34 rows
    table = _table(cols=6)
    seq_lens = torch.tensor([7, 10, 21], dtype=torch.int32)
    out, lse = _varlen(q, k, v, table, seq_lens, cu, 17, splits)
    assert not out.isnan().any()
    out, lse = _varlen(q, k, v, table, seq_lens, cu, 2, splits)
    assert _all_nan(out, lse), f"{(~out.float().isnan()).sum().item()} values not NaN"


@pytest.mark.parametrize("case", ["block id", "seq_len < q_len"])
def test_varlen_bad_paged_index_poisons_that_sequence(case):
    q, k, v, table, seq_lens, cu = _varlen_case()
    good_out, good_lse = _varlen(q, k, v, table, seq_lens, cu, 5, 1)
    bad_table, bad_lens = table.clone(), seq_lens.clone()
    if case == "block id":
        bad_table[2, 1] = 99
    else:
        bad_lens[2] = 4                                      # 5 queries, 4 keys
    out, lse = _varlen(q, k, v, bad_table, bad_lens, cu, 5, 1)
    assert _all_nan(out[4:9], lse[:, 4:9])
    torch.testing.assert_close(out[:4], good_out[:4], rtol=0, atol=0)
    torch.testing.assert_close(lse[:, :4], good_lse[:, :4], rtol=0, atol=0)


def test_write_kv_cache_out_of_range_slot_writes_nothing_out_of_bounds():
    """write_kv_cache has no output to poison: a slot outside the cache is not written (no
    out-of-bounds store); with the caches as views into a larger buffer, the memory around
    them is untouched. The rest of the batch is written."""
    blocks, t = 3, 4
    backing_k = torch.zeros(blocks + 2, BS, HKV, DIM, dtype=torch.float16)
    backing_v = torch.zeros_like(backing_k)
    kc, vc = backing_k[1:1 + blocks], backing_v[1:1 + blocks]
    knew = torch.randn(t, HKV, DIM, dtype=torch.float16)
    vnew = torch.randn(t, HKV, DIM, dtype=torch.float16)
    slots = torch.tensor([0, blocks * BS, 5, -1], dtype=torch.int64)   # slot 12 is past the end
    L.write_kv_cache(knew, vnew, kc, vc, slots, None, None)
    assert backing_k[0].abs().sum() == 0 and backing_k[-1].abs().sum() == 0
    assert backing_v[0].abs().sum() == 0 and backing_v[-1].abs().sum() == 0
    torch.testing.assert_close(kc[0, 0], knew[0], rtol=0, atol=0)
    torch.testing.assert_close(vc[1, 1], vnew[2], rtol=0, atol=0)
