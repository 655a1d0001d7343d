"""Triton flash attention, varlen (packed ragged batches) vs the fp64 reference, under
TRITON_INTERPRET=1. Includes an empty query sequence and a query sequence with no keys."""
from __future__ import annotations

import pytest
import torch

from polykernels import reference as ref
from polykernels.triton.flash_attention import impl, launch

from test_attention_triton_helpers import assert_close_budget, assert_lse, torch_same_dtype

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32

# (seqlens_q, seqlens_k, hq, hk, d, dtype, causal, (wl, wr), softcap, alibi)
CASES = [
    ([17, 1, 113, 40], [17, 30, 113, 20], 4, 2, 64, F16, True, (-1, -1), 0.0, None),
    ([5, 0, 70, 33], [9, 12, 50, 0], 2, 1, 80, BF16, False, (-1, -1), 0.0, "bh"),
    ([33, 64, 1], [40, 64, 100], 4, 4, 32, F32, True, (10, -1), 8.0, "h"),
]


def _ids(c):
    return f"{len(c[0])}seqs-h{c[2]}/{c[3]}-d{c[4]}-{str(c[5])[6:]}-causal{c[6]}-w{c[7]}-cap{c[8]:g}-alibi{c[9]}"


def _cu(lens):
    return torch.tensor([0] + lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_varlen_forward_backward(case):
    check_varlen(case)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES + [
    ([1000, 1, 0, 513, 2048], [1200, 700, 30, 513, 2048], 8, 2, 128, BF16, True, (-1, -1), 0.0, None),
    ([300, 1024], [300, 1024], 4, 4, 256, F16, False, (128, 0), 15.0, "h"),
], ids=_ids)
def test_varlen_forward_backward_gpu(case, monkeypatch):
    monkeypatch.setenv("POLYKERNELS_AUTOTUNE", "0")  # vendor defaults, as in the dense GPU test
    check_varlen(case, "cuda")


def check_varlen(case, device="cpu"):
    lq, lk, hq, hk, d, dt, causal, (wl, wr), softcap, al = case
    b = len(lq)
    cu_q, cu_k = _cu(lq).to(device), _cu(lk).to(device)
    # q as a non-contiguous view (transposed [H, T, D]); k/v packed normally.
    q = torch.randn(hq, sum(lq), d, dtype=dt, device=device).transpose(0, 1)
    k = torch.randn(sum(lk), hk, d, dtype=dt, device=device)
    v = torch.randn(sum(lk), hk, d, dtype=dt, device=device)
    alibi = None if al is None else (torch.rand(hq, device=device) if al == "h"
                                     else torch.rand(b, hq, device=device))
    args = (causal, d ** -0.5, wl, wr, softcap, alibi)
    shape = (cu_q, cu_k, max(lq), max(lk))

    out = torch.full(q.shape, float("nan"), dtype=q.dtype, device=device)
    lse = torch.full((hq, sum(lq)), float("nan"), device=device)
    got, got_lse = launch.forward(q, k, v, *shape, *args, out=out, lse=lse)
    want, want_lse = ref.varlen_attention(q.double(), k.double(), v.double(), *shape, *args)
    assert_lse(got_lse, want_lse)

    dout = torch.randn_like(q)
    grads = [torch.full(t.shape, float("nan"), dtype=t.dtype, device=device) for t in (q, k, v)]
    dq, dk, dv = launch.backward(dout, q, k, v, got, got_lse, *shape, *args,
                                 dq=grads[0], dk=grads[1], dv=grads[2])
    want_g = ref.varlen_attention_backward(dout.double(), q.double(), k.double(), v.double(),
                                           None, None, *shape, *args)

    # Same-dtype torch baseline, sequence by sequence.
    base = torch.zeros_like(q)
    base_g = [torch.zeros_like(t) for t in (q, k, v)]
    for i in range(b):
        q0, q1, k0, k1 = cu_q[i].item(), cu_q[i + 1].item(), cu_k[i].item(), cu_k[i + 1].item()
        if q1 == q0 or k1 == k0:
            continue
        sl = None if alibi is None else (alibi if alibi.dim() == 1 else alibi[i])
        qs, ks, vs = (t[None, a:z].detach().clone().requires_grad_()
                      for t, a, z in ((q, q0, q1), (k, k0, k1), (v, k0, k1)))
        o = torch_same_dtype(qs, ks, vs, causal, args[1], wl, wr, softcap, sl)
        o.backward(dout[None, q0:q1])
        base[q0:q1] = o[0].detach()
        base_g[0][q0:q1], base_g[1][k0:k1], base_g[2][k0:k1] = qs.grad[0], ks.grad[0], vs.grad[0]

    assert_close_budget("out", got, want, base, 2, dt)
    for name, g, w, bl in zip(("dq", "dk", "dv"), (dq, dk, dv), want_g, base_g):
        assert_close_budget(name, g, w, bl, 3, dt)


def test_varlen_impl_signature():
    """impl.varlen_attention(_backward) with int64 cu_seqlens match the reference."""
    lq, lk = [3, 20], [7, 25]
    cu_q = torch.tensor([0, 3, 23])
    cu_k = torch.tensor([0, 7, 32])
    q, k, v = torch.randn(23, 2, 16), torch.randn(32, 1, 16), torch.randn(32, 1, 16)
    args = (cu_q, cu_k, 20, 25, True, 0.25, -1, -1, 0.0, None)
    out, lse = impl.varlen_attention(q, k, v, *args)
    want, want_lse = ref.varlen_attention(q.double(), k.double(), v.double(), *args)
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=0)
    assert_lse(lse, want_lse)
    dout = torch.randn_like(q)
    g = impl.varlen_attention_backward(dout, q, k, v, out, lse, *args)
    w = ref.varlen_attention_backward(dout.double(), q.double(), k.double(), v.double(), None, None, *args)
    for a, e in zip(g, w):
        torch.testing.assert_close(a.double(), e, atol=5e-5, rtol=0)


def test_varlen_strided_int32_cu_seqlens():
    """A strided int32 cu_seqlens view (e.g. every other entry of a longer tensor) must be read
    through its stride, not as if it were contiguous."""
    cu_q = torch.tensor([0, 99, 3, 99, 23], dtype=torch.int32)[::2]
    cu_k = torch.tensor([0, 99, 7, 99, 32], dtype=torch.int32)[::2]
    assert not cu_q.is_contiguous()
    q, k, v = torch.randn(23, 2, 16), torch.randn(32, 1, 16), torch.randn(32, 1, 16)
    args = (cu_q, cu_k, 20, 25, True, 0.25, -1, -1, 0.0, None)
    out, lse = impl.varlen_attention(q, k, v, *args)
    want, want_lse = ref.varlen_attention(q.double(), k.double(), v.double(),
                                          cu_q.contiguous(), cu_k.contiguous(), *args[2:])
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=0)
    assert_lse(lse, want_lse)
    dout = torch.randn_like(q)
    g = impl.varlen_attention_backward(dout, q, k, v, out, lse, *args)
    w = ref.varlen_attention_backward(dout.double(), q.double(), k.double(), v.double(), None, None,
                                      cu_q.contiguous(), cu_k.contiguous(), *args[2:])
    for a, e in zip(g, w):
        torch.testing.assert_close(a.double(), e, atol=5e-5, rtol=0)
