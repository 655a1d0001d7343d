"""Triton flash attention (dense) vs the fp64 reference, under TRITON_INTERPRET=1.

Forward and backward on a covering set of feature combinations (causal, windows, softcap,
ALiBi [H] and [B, H], GQA/MQA), dtypes, awkward lengths (1, 17, 113, Sq != Sk both ways),
head dims incl. 80/192/256, and non-contiguous layouts. Outputs are preallocated NaN-filled
buffers, so any element the kernels fail to write shows up.
"""
from __future__ import annotations

import pytest
import torch

from polykernels import reference as ref
from polykernels.triton.flash_attention import impl, launch

from test_attention_triton_helpers import assert_close_budget, assert_lse, make_qkv, torch_same_dtype

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32

# (b, sq, sk, hq, hk, d, dtype, causal, (wl, wr), softcap, alibi, layout)
CASES = [
    (1, 1, 1, 1, 1, 64, F16, False, (-1, -1), 0.0, None, "bshd"),
    (3, 17, 17, 4, 4, 64, BF16, True, (-1, -1), 0.0, None, "bshd"),
    (1, 113, 113, 4, 1, 128, F32, True, (-1, -1), 0.0, None, "bhsd"),        # MQA
    (3, 113, 40, 6, 2, 64, F16, False, (-1, -1), 0.0, None, "strided"),      # Sq > Sk, GQA 3
    (1, 40, 113, 4, 2, 80, BF16, True, (16, -1), 0.0, None, "bshd"),         # Sq < Sk, D80
    (2, 17, 113, 2, 2, 192, F16, False, (-1, -1), 30.0, None, "bhsd"),       # D192, softcap
    (1, 113, 113, 4, 4, 32, F32, False, (20, 10), 0.0, "h", "bshd"),         # local window, alibi
    (2, 65, 65, 4, 2, 32, BF16, True, (-1, -1), 5.0, "bh", "strided"),       # all features
    (1, 113, 17, 2, 2, 64, F16, True, (-1, -1), 0.0, None, "bshd"),          # fully masked rows
    (1, 1, 113, 8, 2, 128, BF16, True, (-1, -1), 0.0, "h", "bshd"),          # decode-like
    (1, 33, 33, 2, 2, 16, F16, False, (0, 0), 0.0, None, "bshd"),            # diagonal only
    (1, 50, 70, 2, 1, 64, F32, False, (-1, 0), 0.0, None, "bhsd"),           # right=0 w/o causal
    (1, 60, 60, 2, 2, 256, BF16, False, (-1, -1), 0.0, None, "bshd"),        # D256
    (1, 250, 300, 2, 1, 64, F16, True, (64, -1), 0.0, None, "bshd"),         # larger, sliding
    (3, 130, 130, 4, 4, 96, F32, False, (-1, -1), 0.0, None, "bshd"),        # larger
]


def _ids(c):
    b, sq, sk, hq, hk, d, dt, causal, w, sc, al, lay = c
    return (f"b{b}-q{sq}-k{sk}-h{hq}/{hk}-d{d}-{str(dt)[6:]}-{'causal' if causal else 'full'}"
            f"-w{w[0]}_{w[1]}-cap{sc:g}-alibi{al}-{lay}")


def _alibi(kind, b, h, device="cpu"):
    if kind is None:
        return None
    return torch.rand(h, device=device) if kind == "h" else torch.rand(b, h, device=device)


def check_forward_backward(case, device="cpu"):
    """Forward + backward of one case vs the fp64 reference, outputs poisoned with NaN."""
    b, sq, sk, hq, hk, d, dt, causal, (wl, wr), softcap, al, layout = case
    q, k, v = make_qkv(b, sq, sk, hq, hk, d, dt, layout, device)
    alibi = _alibi(al, b, hq, device)
    scale = d ** -0.5
    args = (causal, scale, wl, wr, softcap, alibi)

    out = torch.full(q.shape, float("nan"), dtype=q.dtype, device=device)
    lse = torch.full((b, hq, sq), float("nan"), device=device)
    got, got_lse = launch.forward(q, k, v, None, None, 0, 0, *args, out=out, lse=lse)
    assert got.data_ptr() == out.data_ptr() and got.dtype == dt
    want, want_lse = ref.attention(q.double(), k.double(), v.double(), *args)
    base = torch_same_dtype(q, k, v, *args)
    assert_close_budget("out", got, want, base, 2, dt)
    assert_lse(got_lse, want_lse)

    dout = torch.randn_like(got)
    grads = [torch.full(t.shape, float("nan"), dtype=t.dtype, device=device) for t in (q, k, v)]
    dq, dk, dv = launch.backward(dout, q, k, v, got, got_lse, None, None, 0, 0, *args,
                                 dq=grads[0], dk=grads[1], dv=grads[2])
    want_g = ref.attention_backward(dout.double(), q.double(), k.double(), v.double(), None, None, *args)
    qb, kb, vb = (t.detach().clone().requires_grad_() for t in (q, k, v))
    torch_same_dtype(qb, kb, vb, *args).backward(dout)
    for name, g, w, bl in zip(("dq", "dk", "dv"), (dq, dk, dv), want_g, (qb.grad, kb.grad, vb.grad)):
        assert g.shape == w.shape and g.dtype == dt
        assert_close_budget(name, g, w, bl, 3, dt)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_forward_backward(case):
    check_forward_backward(case)


# On a GPU (-m gpu; compiled kernels, the vendor configs): the same cases plus sizes that
# cross many blocks of the real tile shapes.
GPU_CASES = CASES + [
    (2, 1000, 1000, 8, 2, 128, BF16, True, (-1, -1), 0.0, None, "bshd"),
    (1, 2048, 1500, 4, 4, 64, F16, False, (256, 64), 0.0, "h", "bhsd"),
    (2, 777, 1024, 4, 1, 256, BF16, True, (-1, -1), 20.0, None, "bshd"),
    (1, 513, 513, 4, 2, 80, F32, True, (-1, -1), 0.0, "bh", "strided"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=_ids)
def test_forward_backward_gpu(case, monkeypatch):
    # The vendor defaults (what the codegen test checks); autotuning every candidate would
    # triple the compile time of the GPU session.
    monkeypatch.setenv("POLYKERNELS_AUTOTUNE", "0")
    check_forward_backward(case, "cuda")


def test_registered_signatures_match_reference():
    """The impl functions (what dispatch calls) give what the launcher gives, with the
    internal positional signatures."""
    q, k, v = make_qkv(2, 20, 31, 4, 2, 32, F32)
    args = (True, 0.3, 8, -1, 0.0, None)
    out, lse = impl.attention(q, k, v, *args)
    want, want_lse = ref.attention(q.double(), k.double(), v.double(), *args)
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=0)
    assert_lse(lse, want_lse)
    dout = torch.randn_like(out)
    g = impl.attention_backward(dout, q, k, v, out, lse, *args)
    w = ref.attention_backward(dout.double(), q.double(), k.double(), v.double(), None, None, *args)
    for a, e in zip(g, w):
        torch.testing.assert_close(a.double(), e, atol=5e-5, rtol=0)


def test_backward_zero_stride_dout():
    """dout as autograd hands it for out.sum(): an expanded scalar (all strides 0)."""
    q, k, v = make_qkv(2, 20, 25, 2, 1, 16, F32)
    args = (True, 0.25, -1, -1, 0.0, None)
    out, lse = impl.attention(q, k, v, *args)
    dout = torch.ones(1).expand(q.shape)
    got = impl.attention_backward(dout, q, k, v, out, lse, *args)
    want = ref.attention_backward(dout.double(), q.double(), k.double(), v.double(), None, None, *args)
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e, atol=5e-5, rtol=0)


def test_empty_key_sequence():
    """Sk = 0: every row fully masked (out 0, lse -inf), all gradients 0."""
    q, k, v = make_qkv(1, 5, 0, 2, 2, 32, F16)
    out, lse = impl.attention(q, k, v, False, 0.2, -1, -1, 0.0, None)
    assert torch.equal(out, torch.zeros_like(q)) and torch.isneginf(lse).all()
    dq, dk, dv = impl.attention_backward(torch.randn_like(q), q, k, v, out, lse, False, 0.2, -1, -1, 0.0, None)
    assert torch.equal(dq, torch.zeros_like(q)) and dk.shape == k.shape and dv.shape == v.shape


def _t(*shape, dtype=F16, device="cpu"):
    return torch.zeros(*shape, dtype=dtype, device=device)


@pytest.mark.parametrize("qkv, alibi, why", [
    ((_t(1, 4, 2, 320), _t(1, 4, 2, 320), _t(1, 4, 2, 320)), None, "head_dim 320 > 256"),
    ((_t(1, 4, 2, 64, dtype=torch.float64),) * 3, None, "not in fp16/bf16/fp32"),
    ((_t(1, 4, 2, 64), _t(1, 4, 2, 64, dtype=BF16), _t(1, 4, 2, 64)), None, "mixed dtypes"),
    ((_t(1, 4, 2, 64), _t(1, 4, 2, 32), _t(1, 4, 2, 64)), None, "head dims differ"),   # q vs k
    ((_t(1, 4, 2, 64), _t(1, 4, 2, 64), _t(1, 4, 2, 320)), None, "value head_dim 320 > 256"),
    ((_t(1, 4, 2, 64),) * 3, torch.zeros(2, dtype=torch.float64), "alibi_slopes dtype"),
    ((_t(1, 4, 2, 64, device="meta"),) * 3, None, "not a CUDA/ROCm GPU"),
    ((_t(40000, 1, 2, 16),) * 3, None, "dimension > 32768"),
])
def test_supports_refuses_with_reason(qkv, alibi, why):
    reason = impl.attention_supports(*qkv, False, 0.1, -1, -1, 0.0, alibi)
    assert reason is not None and why in reason, reason


def test_supports_accepts_and_cpu_needs_interpreter(monkeypatch):
    qkv = (_t(1, 4, 2, 64),) * 3
    assert impl.attention_supports(*qkv, True, 0.1, -1, -1, 0.0, None) is None
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET" in impl.attention_supports(*qkv, True, 0.1, -1, -1, 0.0, None)
