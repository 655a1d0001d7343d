"""``out=`` on pk.paged_attention and pk.varlen_paged_attention: every impl writes the result
into the caller's buffer itself (the same tensor is returned), equal to the functional call;
strided buffers work; a bad buffer is refused before anything is written; torch.compile
traces the in-place op.
"""
from __future__ import annotations

import pytest
import torch

import polykernels as pk
from polykernels.dispatch import registry
from polykernels.ops.paged import paged_attention_args, varlen_paged_attention_args

HQ, HK, D, NB, BS = 4, 2, 32, 30, 8


def _inputs(dtype):
    torch.manual_seed(0)
    kc, vc = torch.randn(NB, BS, HK, D).to(dtype), torch.randn(NB, BS, HK, D).to(dtype)
    bt = torch.randperm(NB)[:24].view(3, 8).to(torch.int32)
    sl = torch.tensor([40, 0, 17], dtype=torch.int32)
    return kc, vc, bt, sl


def _nan(shape, dtype, strided):
    if not strided:
        return torch.full(shape, float("nan"), dtype=dtype)
    # the same shape with its last two dims swapped in memory
    return torch.full((*shape[:-2], shape[-1], shape[-2]), float("nan"), dtype=dtype).transpose(-1, -2)


def _impls(op, args):
    registry.ensure_loaded()
    return [i.name for i in registry.impls[op] if i.supports(*args) is None
            and (i.backend in ("cpu", "reference") or (i.name == "triton" and i.backend == "nvidia"))]


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_paged_out_every_impl(dtype, strided):
    kc, vc, bt, sl = _inputs(dtype)
    q = torch.randn(3, 2, HQ, D).to(dtype)
    sinks = torch.randn(HQ)
    want, want_lse = pk.paged_attention(q, kc, vc, bt, sl, sinks=sinks, return_lse=True)
    args = paged_attention_args(q, kc, vc, bt, sl, sinks=sinks)
    names = _impls("paged_attention_out", args + (want, None))
    assert {"cpp", "reference"} <= set(names) and ("triton" in names) == (dtype == torch.float16)
    for name in names:
        buf = _nan(q.shape, dtype, strided)
        with pk.use(paged_attention_out=name):
            got, lse = pk.paged_attention(q, kc, vc, bt, sl, sinks=sinks, return_lse=True, out=buf)
        assert got is buf, name
        tol = 0 if name == "cpp" else (2e-3 if dtype == torch.float16 else 1e-5)
        torch.testing.assert_close(buf, want, rtol=0, atol=tol, msg=name)
        torch.testing.assert_close(lse, want_lse, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("strided", [False, True])
def test_varlen_paged_out_every_impl(strided):
    kc, vc, bt, sl = _inputs(torch.float16)
    cu = torch.tensor([0, 2, 2, 5], dtype=torch.int32)
    q = torch.randn(5, HQ, D).half()
    want = pk.varlen_paged_attention(q, kc, vc, bt, sl, cu, window=(6, -1))
    args = varlen_paged_attention_args(q, kc, vc, bt, sl, cu, window=(6, -1))
    names = _impls("varlen_paged_attention_out", args + (want, None))
    assert {"cpp", "reference", "triton"} <= set(names)
    for name in names:
        buf = _nan(q.shape, torch.float16, strided)
        with pk.use(varlen_paged_attention_out=name):
            got = pk.varlen_paged_attention(q, kc, vc, bt, sl, cu, window=(6, -1), out=buf)
        assert got is buf
        torch.testing.assert_close(buf, want, rtol=0, atol=0 if name == "cpp" else 2e-3, msg=name)


@pytest.mark.parametrize("bad, pattern", [
    (lambda q: torch.empty(3, 2, HQ, D + 1), r"^out: expected a torch.float32 tensor of shape \(3, 2, 4, 32\)"),
    (lambda q: torch.empty(3, 2, HQ, D, dtype=torch.float16), r"^out: expected a torch.float32"),
    (lambda q: torch.empty(1, 1, 1, D).expand(3, 2, HQ, D), r"^out: expected a tensor with its own memory"),
    (lambda q: q, r"shares memory with out"),
    (lambda q: [0.0], r"^out"),
])
def test_bad_out_is_refused_before_any_write(bad, pattern):
    kc, vc, bt, sl = _inputs(torch.float32)
    q = torch.randn(3, 2, HQ, D)
    before = q.clone()
    with pytest.raises((ValueError, TypeError), match=pattern):
        pk.paged_attention(q, kc, vc, bt, sl, out=bad(q))
    assert torch.equal(q, before)


def test_out_under_torch_compile():
    kc, vc, bt, sl = _inputs(torch.float32)
    q = torch.randn(3, 2, HQ, D)
    want = pk.paged_attention(q, kc, vc, bt, sl)

    def step(q, kc, vc, bt, sl, buf):
        return pk.paged_attention(q, kc, vc, bt, sl, out=buf)
    torch._dynamo.reset()
    buf = torch.full_like(q, float("nan"))
    got = torch.compile(step, backend="eager", fullgraph=True)(q, kc, vc, bt, sl, buf)
    torch.testing.assert_close(buf, want, rtol=0, atol=0)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
