"""Valid non-contiguous index tensors (seq_lens, block_table, cu_seqlens_q/k, slot_mapping)
through the PUBLIC ops on CPU: the C++ impl must take them (no failover, no demotion) and give
what the contiguous call gives.

Each case runs with POLYKERNELS_STRICT=1 (a C++ error raises instead of failing over), once
pinned to "cpp" (an explicit choice never fails over either) and once unpinned; afterwards
``pk.explain`` for the strided input still chooses cpp@cpu (or, with measured selection, at
least keeps it as a candidate: not refused, not demoted, not dropped while being measured).
"""
import pytest
import torch

import polykernels as pk
from polykernels import _extension

pytestmark = pytest.mark.skipif(_extension.unavailable_reason() is not None,
                                reason=f"{_extension.unavailable_reason()}")


@pytest.fixture(autouse=True)
def _strict(monkeypatch):
    monkeypatch.setenv("POLYKERNELS_STRICT", "1")


def strided(t: torch.Tensor) -> torch.Tensor:
    """The same values as a stride-2 view (every other element of a wider buffer)."""
    buf = torch.full((t.shape[0] * 2, *t.shape[1:]), -7, dtype=t.dtype)
    buf[::2] = t
    return buf[::2]


def column(t: torch.Tensor) -> torch.Tensor:
    """The same values as column 1 of a 2-D [n, 3] tensor (stride 3)."""
    buf = torch.full((t.shape[0], 3), -7, dtype=t.dtype)
    buf[:, 1] = t
    return buf[:, 1]


def check_cpp_chosen(op, strided_args, kwargs=None):
    """cpp@cpu is still a runnable candidate for the strided input class (not refused, not
    demoted, not dropped while being measured) and is chosen unless dispatch measured a
    faster impl for this class."""
    d = pk.explain(op, *strided_args, **(kwargs or {}))
    assert "cpp@cpu" in [i.label for i in d.candidates], str(d)
    assert "cpp@cpu" not in d.refused, str(d)
    assert d.chosen.label == "cpp@cpu" or getattr(d, "how", "").startswith("measured"), str(d)


def same(a, b):
    assert torch.equal(a, b), f"max diff {(a.float() - b.float()).abs().max().item()}"


def paged_inputs():
    S, bs, hq, hk, d = 3, 16, 4, 2, 32
    lens = [5, 33, 64]
    nb = 14
    k_cache = torch.randn(nb, bs, hk, d, dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(nb, dtype=torch.int32)[:S * 4].view(S, 4).contiguous()
    q = torch.randn(S, 1, hq, d, dtype=torch.bfloat16)
    return q, k_cache, v_cache, table, torch.tensor(lens, dtype=torch.int32)


@pytest.mark.parametrize("layout", ["seq_lens strided", "seq_lens column", "block_table slice",
                                    "block_table transposed", "both"])
def test_paged_attention_strided_index(layout):
    q, kc, vc, table, lens = paged_inputs()
    with pk.use(paged_attention="cpp"):
        want = pk.paged_attention(q, kc, vc, table, lens)
    if layout in ("block_table slice", "both"):  # rows of a wider table: stride(0) = 7
        wide = torch.full((table.shape[0], 7), -1, dtype=torch.int32)
        wide[:, 2:6] = table
        table = wide[:, 2:6]
    if layout == "block_table transposed":
        table = table.t().contiguous().t()
    if layout == "seq_lens strided":
        lens = strided(lens)
    if layout in ("seq_lens column", "both"):
        lens = column(lens)
    assert not (lens.is_contiguous() and table.is_contiguous())
    with pk.use(paged_attention="cpp"):
        same(pk.paged_attention(q, kc, vc, table, lens), want)
    same(pk.paged_attention(q, kc, vc, table, lens), want)
    check_cpp_chosen("paged_attention", (q, kc, vc, table, lens))


@pytest.mark.parametrize("layout", ["strided", "column", "q only"])
def test_varlen_attention_strided_cu_seqlens(layout):
    lens_q, lens_k = [5, 1, 17], [9, 1, 30]
    cu_q = torch.tensor([0, 5, 6, 23], dtype=torch.int32)
    cu_k = torch.tensor([0, 9, 10, 40], dtype=torch.int32)
    q = torch.randn(23, 4, 32, dtype=torch.bfloat16)
    k, v = torch.randn(40, 2, 32, dtype=torch.bfloat16), torch.randn(40, 2, 32, dtype=torch.bfloat16)
    mq, mk = max(lens_q), max(lens_k)
    with pk.use(varlen_attention="cpp"):
        want = pk.varlen_attention(q, k, v, cu_q, cu_k, mq, mk, causal=True)
    view = column if layout == "column" else strided
    sq, sk = view(cu_q), (cu_k if layout == "q only" else view(cu_k))
    with pk.use(varlen_attention="cpp"):
        same(pk.varlen_attention(q, k, v, sq, sk, mq, mk, causal=True), want)
    same(pk.varlen_attention(q, k, v, sq, sk, mq, mk, causal=True), want)
    check_cpp_chosen("varlen_attention", (q, k, v, sq, sk, mq, mk), dict(causal=True))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("view", [strided, column], ids=["strided", "column"])
def test_write_kv_cache_strided_slot_mapping(dtype, view):
    T, nb, bs, hk, d = 9, 4, 16, 2, 32
    k = torch.randn(T, hk, d, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    slots = torch.randperm(nb * bs)[:T].to(dtype)
    slots[3] = -1  # a padding token
    kc0, vc0 = torch.zeros(nb, bs, hk, d, dtype=torch.bfloat16), torch.zeros(nb, bs, hk, d, dtype=torch.bfloat16)
    with pk.use(write_kv_cache="cpp"):
        pk.write_kv_cache(k, v, kc0, vc0, slots)
    assert kc0.abs().sum() > 0
    s = view(slots)
    assert not s.is_contiguous()
    for pin in ({"write_kv_cache": "cpp"}, {}):
        kc, vc = torch.zeros_like(kc0), torch.zeros_like(vc0)
        with pk.use(**pin):
            pk.write_kv_cache(k, v, kc, vc, s)
        same(kc, kc0)
        same(vc, vc0)
    check_cpp_chosen("write_kv_cache", (k, v, kc0, vc0, s))
