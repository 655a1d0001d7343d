"""fp8 KV-cache scales given as tensors: one per tensor ([1]) or one per KV head ([heads_kv]),
as vLLM passes them, on paged_attention, varlen_paged_attention and write_kv_cache.

Every CPU impl (C++, reference) and the Triton kernels under the interpreter are compared
with the reference. The reference itself is checked against an independent formulation:
dequantise each head with its own float scale and run the float-scale path head by head.
Outputs are NaN-poisoned where the impl takes an ``out``; cache writes are compared bit for bit.
"""
from __future__ import annotations

import pytest
import torch

import polykernels as pk
from polykernels import _extension
from polykernels.ops.paged import (paged_attention_args, varlen_paged_attention_args,
                                   write_kv_cache_args)
from polykernels.reference import paged_ref

FP8 = torch.float8_e4m3fn
HKV, HQ, D, BS, NB = 3, 6, 32, 8, 24
needs_cpp = pytest.mark.skipif(_extension.unavailable_reason() is not None,
                               reason=f"{_extension.unavailable_reason()}")


def _caches(k_scales, v_scales):
    """fp8 caches whose heads have very different magnitudes, stored as value / head scale."""
    mag = torch.tensor([0.2, 3.0, 40.0]).view(1, 1, HKV, 1)
    k, v = torch.randn(NB, BS, HKV, D) * mag, torch.randn(NB, BS, HKV, D) * mag
    kc = (k / k_scales.view(1, 1, HKV, 1)).clamp(-448, 448).to(FP8)
    vc = (v / v_scales.view(1, 1, HKV, 1)).clamp(-448, 448).to(FP8)
    return kc, vc


def _scales():
    return torch.rand(HKV) * 0.2 + 0.01, torch.rand(HKV) * 0.2 + 0.01


def _batch(dtype):
    bt = torch.randperm(NB)[:4 * 6].view(4, 6).to(torch.int32)
    seq_lens = torch.tensor([41, 0, 19, 8], dtype=torch.int32)
    cu = torch.tensor([0, 5, 5, 8, 9], dtype=torch.int32)   # q_lens 5, 0, 3, 1
    q = torch.randn(9, HQ, D).to(dtype)
    return q, bt, seq_lens, cu


def _close(got, want, dtype):
    tol = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    scale = want.float().abs().max().item() + 1.0
    err = (got.float() - want.float()).abs().max().item()
    assert err <= tol * scale, f"max error {err:.3g} > {tol * scale:.3g}"


def test_reference_per_head_scales_match_head_by_head_float_scales():
    ks, vs = _scales()
    kc, vc = _caches(ks, vs)
    q, bt, seq_lens, cu = _batch(torch.float32)
    out, lse = paged_ref.varlen_paged_attention(
        *varlen_paged_attention_args(q, kc, vc, bt, seq_lens, cu, k_scale=ks, v_scale=vs))
    group = HQ // HKV
    for h in range(HKV):   # one KV head at a time, with its own scale as a plain float
        heads = slice(h * group, (h + 1) * group)
        o, l = paged_ref.varlen_paged_attention(
            q[:, heads].contiguous(), kc[:, :, h:h + 1].contiguous(), vc[:, :, h:h + 1].contiguous(),
            bt, seq_lens, cu, 5, D ** -0.5, -1, -1, 0.0, None, float(ks[h]), float(vs[h]))
        torch.testing.assert_close(out[:, heads], o, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(lse[heads], l, rtol=1e-6, atol=1e-6)
    # and the per-head scales matter here (a single scale would be far off)
    wrong, _ = paged_ref.varlen_paged_attention(q, kc, vc, bt, seq_lens, cu, 5, D ** -0.5, -1, -1,
                                                0.0, None, float(ks.mean()), float(vs.mean()))
    assert (wrong - out).abs().max() > 0.1


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("per_head", [True, False])
def test_cpp_paged_ops_tensor_scales(dtype, per_head):
    torch.manual_seed(1)
    ks, vs = _scales()
    if not per_head:
        ks, vs = ks[:1].expand(HKV).contiguous(), vs[:1].expand(HKV).contiguous()
    kc, vc = _caches(ks, vs)
    q, bt, seq_lens, cu = _batch(dtype)
    given = (ks, vs) if per_head else (ks[:1], vs[:1])
    args = varlen_paged_attention_args(q, kc, vc, bt, seq_lens, cu, k_scale=given[0], v_scale=given[1])
    want = paged_ref.varlen_paged_attention(*args)
    out, lse = torch.full_like(q, float("nan")), torch.full((HQ, q.shape[0]), float("nan"))
    torch.ops.polykernels_C.cpu_varlen_paged_attention(*args[:-1], out=out, lse=lse, sinks=args[-1])
    _close(out, want[0], dtype)
    torch.testing.assert_close(lse, want[1], rtol=1e-5, atol=1e-5)
    # uniform paged_attention: the decode rows (q_len 1) of the same caches
    q1 = q[[4, 7, 8, 8]].unsqueeze(1)
    sl1 = torch.tensor([41, 17, 19, 8], dtype=torch.int32)
    uargs = paged_attention_args(q1, kc, vc, bt, sl1, k_scale=given[0], v_scale=given[1])
    with pk.use(paged_attention="cpp"):
        got = pk.paged_attention(q1, kc, vc, bt, sl1, k_scale=given[0], v_scale=given[1])
    _close(got, paged_ref.paged_attention(*uargs)[0], dtype)
    if not per_head:   # a one-element tensor means exactly what the same float means
        with pk.use(paged_attention="cpp"):
            as_float = pk.paged_attention(q1, kc, vc, bt, sl1, k_scale=float(ks[0]), v_scale=float(vs[0]))
        torch.testing.assert_close(got, as_float, rtol=0, atol=0)


@needs_cpp
@pytest.mark.parametrize("per_head", [True, False])
def test_cpp_write_kv_cache_tensor_scales_bit_exact(per_head):
    torch.manual_seed(2)
    ks, vs = _scales()
    if not per_head:
        ks, vs = ks[:1], vs[:1]
    k = torch.randn(37, HKV, D).to(torch.bfloat16) * torch.tensor([0.1, 2.0, 30.0]).view(1, HKV, 1).to(torch.bfloat16)
    v = torch.randn(37, HKV, D).to(torch.bfloat16)
    slots = torch.randperm(NB * BS)[:37]
    slots[5] = -1
    caches = [torch.zeros(NB, BS, HKV, D, dtype=FP8) for _ in range(4)]
    with pk.use(write_kv_cache="cpp"):
        pk.write_kv_cache(k, v, caches[0], caches[1], slots, k_scale=ks, v_scale=vs)
    paged_ref.write_kv_cache(*write_kv_cache_args(k, v, caches[2], caches[3], slots, k_scale=ks, v_scale=vs))
    assert torch.equal(caches[0].view(torch.uint8), caches[2].view(torch.uint8))
    assert torch.equal(caches[1].view(torch.uint8), caches[3].view(torch.uint8))
    assert caches[0].view(torch.uint8).any()


def test_scales_are_ignored_for_non_fp8_caches():
    kc, vc = torch.randn(NB, BS, HKV, D), torch.randn(NB, BS, HKV, D)
    q, bt, seq_lens, cu = _batch(torch.float32)
    args = varlen_paged_attention_args(q, kc, vc, bt, seq_lens, cu, k_scale=torch.full((HKV,), 7.0))
    assert args[-4:-1] == (1.0, 1.0, None)   # k_scale, v_scale, kv_scales (sinks last)
    a = pk.varlen_paged_attention(q, kc, vc, bt, seq_lens, cu, k_scale=torch.full((HKV,), 7.0))
    b = pk.varlen_paged_attention(q, kc, vc, bt, seq_lens, cu)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- Triton under the interpreter --------------------------------------------------------------
@pytest.fixture
def launcher(monkeypatch):
    L = pytest.importorskip("polykernels.triton.paged_attention.launcher")

    def nan_empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    monkeypatch.setattr(L, "_empty", nan_empty)
    return L


@pytest.mark.parametrize("splits", [1, 2])
def test_triton_paged_ops_per_head_scales(launcher, splits):
    torch.manual_seed(3)
    ks, vs = _scales()
    kc, vc = _caches(ks, vs)
    q, bt, seq_lens, cu = _batch(torch.float16)
    args = varlen_paged_attention_args(q, kc, vc, bt, seq_lens, cu, k_scale=ks, v_scale=vs)
    want = paged_ref.varlen_paged_attention(*args)
    out, lse = launcher.varlen_paged_attention(*args, num_splits=splits)
    _close(out, want[0], torch.float16)
    torch.testing.assert_close(lse, want[1], rtol=1e-4, atol=1e-4)
    q1 = q[[0, 7, 8]].unsqueeze(1)
    sl1 = torch.tensor([41, 17, 19], dtype=torch.int32)
    uargs = paged_attention_args(q1, kc, vc, bt[:3], sl1, k_scale=ks, v_scale=vs)
    got, _ = launcher.paged_attention(*uargs, num_splits=splits)
    _close(got, paged_ref.paged_attention(*uargs)[0], torch.float16)


def test_triton_write_kv_cache_per_head_scales(launcher):
    torch.manual_seed(4)
    ks, vs = _scales()
    k = torch.randn(21, HKV, D).to(torch.float16) * torch.tensor([0.1, 2.0, 30.0]).view(1, HKV, 1).half()
    v = torch.randn(21, HKV, D).to(torch.float16)
    slots = torch.randperm(NB * BS)[:21]
    got = [torch.zeros(NB, BS, HKV, D, dtype=FP8) for _ in range(2)]
    want = [torch.zeros(NB, BS, HKV, D, dtype=FP8) for _ in range(2)]
    launcher.write_kv_cache(*write_kv_cache_args(k, v, *got, slots, k_scale=ks, v_scale=vs))
    paged_ref.write_kv_cache(*write_kv_cache_args(k, v, *want, slots, k_scale=ks, v_scale=vs))
    for g, w in zip(got, want):   # division by the head scale in both; the interpreter rounds
        assert torch.equal(g.view(torch.uint8), w.view(torch.uint8))
