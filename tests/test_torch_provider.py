"""The ``torch`` provider (impl "torch", backend "torch"): torch's own kernels behind our ops,
against the fp64 reference on CPU.

Tolerance rule (docs/testing.md): error against the fp64 reference <= 2x the error of the same
computation done by torch in the input dtype (the einsum attention, GEMM + bias + activation
in the dtype, dequantise-then-linear, fp32 scaled GEMM math) + a small floor. Where that
baseline would be the provider's own kernel it is still an independent formulation, so the
rule keeps its meaning. Outputs are allocated by the impls (nothing to poison): shapes,
dtypes, finiteness and independence from the input layout are asserted instead.
"""
from __future__ import annotations

import gc
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import polykernels as pk
from polykernels import reference as ref
from polykernels.reference import quant
from polykernels.torch_provider import attention as tattn
from polykernels.torch_provider import matmul as tmm
from polykernels.torch_provider import quantized as tq
from test_attention_triton_helpers import assert_close_budget, assert_lse, make_qkv, torch_same_dtype
from test_matmul_cpp import strided_operands, torch_act
from test_matmul_triton_grouped import _baseline as grouped_baseline
from test_matmul_triton_helpers import check
from test_matmul_triton_quant import _operands, _scaled_baseline
from test_quantized_linear_cpp import dequant64

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ACTS = [None, "relu", "gelu", "gelu_tanh", "silu"]


def rand(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


def meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")


# -- registration, explicit choice ---------------------------------------------------------------
def test_registered_for_every_device_type():
    rows = {b["name"]: b for b in pk.backends()}
    torch_row = rows["torch"]
    assert torch_row["device_types"] == ("*",) and torch_row["available"]
    assert {"attention:torch", "attention_backward:torch", "varlen_attention:torch",
            "paged_attention:torch", "varlen_paged_attention:torch", "matmul:torch", "linear:torch",
            "scaled_matmul:torch", "grouped_matmul:torch",
            "quantized_linear:torch"} == set(torch_row["impls"])


def test_explain_lists_torch_for_cpu_matmul():
    a, b = rand(9, 40), rand(40, 24)
    d = pk.explain("matmul", a, b)
    assert "torch@torch" in [i.label for i in d.candidates], str(d)
    assert "torch@torch" in str(d)


def test_explicit_choice(monkeypatch):
    a, b, bias = rand(9, 40, dtype=torch.bfloat16), rand(40, 24, dtype=torch.bfloat16), rand(24)
    want = tmm.matmul(a, b, bias, "gelu", None)
    with pk.use(matmul="torch"):
        assert pk.explain("matmul", a, b).chosen.label == "torch@torch"
        assert torch.equal(pk.matmul(a, b, bias=bias, activation="gelu"), want)
    monkeypatch.setenv("POLYKERNELS_IMPL", "linear=torch")
    w = rand(24, 40, dtype=torch.bfloat16)
    assert torch.equal(pk.linear(a, w, bias, activation="silu"), tmm.linear(a, w, bias, "silu"))
    monkeypatch.delenv("POLYKERNELS_IMPL")
    q, k, v = make_qkv(1, 5, 9, 4, 2, 16, torch.float32)
    with pk.use(attention="torch"):
        out, lse = pk.attention(q, k, v, causal=True, return_lse=True)
    ro, rl = ref.attention(q, k, v, True, 0.25, -1, -1, 0.0, None)
    torch.testing.assert_close(out, ro, rtol=1e-5, atol=1e-5)
    with pk.use(attention="torch"), pytest.raises(pk.NoImplError, match="softcap"):
        pk.attention(q, k, v, softcap=5.0)
    # attention="torch" leaves the backward to automatic selection, which picks the torch
    # backward on CPU (test_backward_end_to_end); an explicit attention_backward still wins.
    q.requires_grad_()
    with pk.use(attention="torch"):
        pk.attention(q, k, v, causal=True).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    g = q.grad.clone()
    q.grad = None
    with pk.use(attention="torch", attention_backward="reference"):
        pk.attention(q, k, v, causal=True).sum().backward()
    torch.testing.assert_close(q.grad, g, rtol=1e-5, atol=1e-5)


# -- matmul / linear -----------------------------------------------------------------------------
SHAPES = [((), 1, 1, 1), ((), 7, 113, 5), ((2,), 113, 7, 203), ((2, 1), 7, 203, 113)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul(dtype):
    for batch, m, k, n in SHAPES:
        a, b = rand(*batch, m, k, dtype=dtype), rand(k, n, dtype=dtype)
        for act in ACTS:
            bias = rand(n, dtype=dtype) if act in (None, "gelu", "silu") else None
            out = tmm.matmul(a, b, bias, act, None)
            assert out.shape == (*batch, m, n) and out.dtype == dtype and out.is_contiguous()
            r64 = ref.matmul(a.double(), b.double(), None if bias is None else bias.double(),
                             act, torch.float64)
            y = torch.matmul(a, b)
            check(out, r64, torch_act(y if bias is None else y + bias, act),
                  f"matmul {dtype} {batch}x{m}x{k}x{n} act={act} bias={bias is not None}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_layouts_give_the_same_answer(dtype):
    """Transposed / sliced / batch-permuted operands vs contiguous copies of the same values."""
    m, k, n = 13, 45, 37
    cases = strided_operands(m, k, n, dtype)
    bias = rand(2 * n, dtype=dtype)[::2]
    for name, (a, b) in cases.items():
        out = tmm.matmul(a, b, bias, "gelu_tanh", None)
        dense = tmm.matmul(a.contiguous(), b.contiguous(), bias.contiguous(), "gelu_tanh", None)
        r64 = ref.matmul(a.double(), b.double(), bias.double(), "gelu_tanh", torch.float64)
        base = torch_act(torch.matmul(a, b) + bias, "gelu_tanh")
        check(out, r64, base, f"matmul {dtype} {name}")
        check(dense, r64, base, f"matmul {dtype} {name} (contiguous copy)")
        assert out.shape == dense.shape and out.is_contiguous()


@pytest.mark.parametrize("in_dtype,out_dtype", [(torch.bfloat16, torch.float32),
                                                (torch.float16, torch.float32),
                                                (torch.float32, torch.bfloat16),
                                                (torch.bfloat16, torch.float16)])
def test_matmul_out_dtype(in_dtype, out_dtype):
    a, b, bias = rand(2, 9, 203, dtype=in_dtype), rand(203, 41, dtype=in_dtype), rand(41, dtype=in_dtype)
    out = tmm.matmul(a, b, bias, "silu", out_dtype)
    assert out.dtype == out_dtype and out.shape == (2, 9, 41)
    r64 = ref.matmul(a.double(), b.double(), bias.double(), "silu", torch.float64)
    check(out, r64, F.silu(torch.matmul(a, b) + bias).to(out_dtype), f"{in_dtype}->{out_dtype}")
    if out_dtype == torch.float32:   # the contract's fp32 accumulation: no 16-bit rounding
        assert (out.double() - r64).abs().max().item() < 1e-4 * max(1.0, r64.abs().max().item())


def test_matmul_float64_and_degenerate():
    a, b, bias = rand(7, 113, dtype=torch.float64), rand(113, 5, dtype=torch.float64), rand(5)
    out = tmm.matmul(a, b, bias, "gelu", None)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref.matmul(a, b, bias, "gelu", None), rtol=1e-12, atol=1e-12)
    bias0 = bias.clone()
    torch.testing.assert_close(tmm.matmul(torch.empty(3, 0), torch.empty(0, 5), bias, "relu", None),
                               F.relu(bias).expand(3, 5), rtol=0, atol=0)
    assert torch.equal(bias, bias0), "the in-place epilogue wrote into the caller's bias"
    assert tmm.matmul(torch.empty(0, 4), rand(4, 5), None, None, None).shape == (0, 5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear(dtype):
    for xs, n in [((1,), 1), ((7, 113), 19), ((2, 3, 203), 7), ((113, 40), 113)]:
        k = xs[-1]
        x = rand(*xs, dtype=dtype)
        for wname, w in [("w", rand(n, k, dtype=dtype)), ("w view", rand(k, n, dtype=dtype).t())]:
            for act, bias in [("gelu", rand(n, dtype=dtype)), (None, None), ("relu", rand(n))]:
                out = tmm.linear(x, w, bias, act)
                assert out.shape == (*xs[:-1], n) and out.dtype == dtype and out.is_contiguous()
                r64 = ref.linear(x.double(), w.double(), None if bias is None else bias.double(), act)
                base = torch_act(F.linear(x, w, None if bias is None else bias.to(dtype)), act)
                check(out, r64, base, f"linear {dtype} {xs} N={n} {wname} act={act}")


# -- attention -----------------------------------------------------------------------------------
# (b, sq, sk, hq, hkv, d, causal, layout): size 1, Sq < Sk and Sq > Sk under causal (bottom-right,
# the latter with fully masked rows), GQA / MQA, head dims 1 / 80 / 203, strided views.
ATTN_CASES = [
    (1, 1, 1, 1, 1, 1, False, "bshd"),
    (2, 7, 113, 4, 2, 80, True, "bhsd"),
    (1, 113, 7, 3, 1, 64, True, "strided"),
    (1, 33, 33, 2, 2, 203, True, "bshd"),
    (2, 17, 40, 6, 3, 16, False, "strided"),
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention(dtype):
    for b, sq, sk, hq, hk, d, causal, layout in ATTN_CASES:
        q, k, v = make_qkv(b, sq, sk, hq, hk, d, dtype, layout)
        scale = d ** -0.5
        assert tattn.attention_supports(q, k, v, causal, scale, -1, -1, 0.0, None) is None
        out, lse = tattn.attention(q, k, v, causal, scale, -1, -1, 0.0, None)
        assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
        assert lse.shape == (b, hq, sq) and lse.dtype == torch.float32
        ro, rl = ref.attention(q.double(), k.double(), v.double(), causal, scale, -1, -1, 0.0, None)
        name = f"attention {dtype} {(b, sq, sk, hq, hk, d)} causal={causal} {layout}"
        assert_close_budget(name, out, ro, torch_same_dtype(q, k, v, causal, scale, -1, -1, 0.0, None),
                            2.0, dtype)
        assert_lse(lse, rl.float())
        if causal and sq > sk:
            assert torch.isinf(lse[..., : sq - sk]).all() and (out[:, : sq - sk] == 0).all()


def test_attention_float64_window_and_empty():
    q, k, v = make_qkv(1, 9, 20, 4, 1, 32, torch.float64)
    out, lse = tattn.attention(q, k, v, True, 0.3, -1, -1, 0.0, None)
    ro, rl = ref.attention(q, k, v, True, 0.3, -1, -1, 0.0, None)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ro, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, rl, rtol=1e-6, atol=1e-6)
    # window (-1, 0) without the causal flag is the causal mask
    q, k, v = make_qkv(1, 5, 11, 2, 2, 8, torch.float32)
    assert tattn.attention_supports(q, k, v, False, 0.3, -1, 0, 0.0, None) is None
    out, _ = tattn.attention(q, k, v, False, 0.3, -1, 0, 0.0, None)
    torch.testing.assert_close(out, ref.attention(q, k, v, True, 0.3, -1, -1, 0.0, None)[0])
    # empty sequences never reach the kernel (it dies of SIGFPE on them)
    for sq, sk in [(0, 5), (5, 0), (0, 0)]:
        q, k, v = torch.randn(2, sq, 3, 8), torch.randn(2, sk, 3, 8), torch.randn(2, sk, 3, 8)
        out, lse = tattn.attention(q, k, v, False, 0.3, -1, -1, 0.0, None)
        assert out.shape == (2, sq, 3, 8) and (out == 0).all()
        assert lse.shape == (2, 3, sq) and torch.isinf(lse).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_varlen_attention(dtype):
    lens_q, lens_k = [3, 0, 17, 9], [8, 4, 5, 0]    # Sq > Sk causal, an empty q, an empty k
    cq = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32)
    ck = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32)
    q = rand(sum(lens_q), 4, 2 * 24, dtype=dtype)[..., ::2][..., :24].contiguous()
    k, v = rand(sum(lens_k), 2, 24, dtype=dtype), rand(sum(lens_k), 2, 24, dtype=dtype)
    args = (q, k, v, cq, ck, max(lens_q), max(lens_k), True, 0.2, -1, -1, 0.0, None)
    assert tattn.varlen_attention_supports(*args) is None
    out, lse = tattn.varlen_attention(*args)
    assert out.shape == q.shape and out.is_contiguous()
    assert lse.shape == (4, sum(lens_q)) and lse.dtype == torch.float32
    ro, rl = ref.varlen_attention(q.double(), k.double(), v.double(), *args[3:])
    assert_lse(lse, rl.float())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), ro, rtol=tol, atol=tol)


# -- attention backward --------------------------------------------------------------------------
# The forward's cases plus GQA 4/2 with Sq > Sk causal, a square causal 113 with MQA and a single
# key; dout gets the layout of the q views ("bhsd": transposed, "strided": sliced, both with a
# unit head-dim stride).
BWD_CASES = ATTN_CASES + [
    (1, 113, 7, 4, 2, 64, True, "strided"),
    (1, 113, 113, 2, 1, 32, True, "bshd"),
    (1, 7, 1, 3, 3, 203, True, "bhsd"),
]


def _dout_like(q, layout):
    """A random dout [B, Sq, Hq, D] with the layout of the q views (unit head-dim stride)."""
    b, sq, hq, d = q.shape
    if layout == "bhsd":
        return torch.randn(b, hq, sq, d, dtype=q.dtype).transpose(1, 2)
    if layout == "strided":
        return torch.randn(b, 2 * sq + 1, hq, d + 8, dtype=q.dtype)[:, 1::2, :, 3:3 + d]
    return torch.randn(b, sq, hq, d, dtype=q.dtype)


def _torch_grads(q, k, v, dout, causal, scale):
    """The same-dtype baseline: autograd through the einsum attention in the inputs' dtype."""
    qb, kb, vb = (t.detach().clone().requires_grad_() for t in (q, k, v))
    torch_same_dtype(qb, kb, vb, causal, scale, -1, -1, 0.0, None).backward(dout)
    return qb.grad, kb.grad, vb.grad


@pytest.mark.parametrize("dtype,kernel_dtype", [
    (torch.float32, "auto"), (torch.bfloat16, "native"), (torch.bfloat16, "fp32"),
    (torch.float16, "native"), (torch.float16, "fp32")])
def test_attention_backward(dtype, kernel_dtype, monkeypatch):
    """Against the fp64 reference backward (out / lse from the reference forward), within 3x
    the same-dtype torch autograd error; bf16 / fp16 through both kernel dtypes (this
    machine's choice is one of them: _backward_dtype)."""
    if kernel_dtype != "auto":
        ct = dtype if kernel_dtype == "native" else torch.float32
        monkeypatch.setattr(tattn, "_backward_dtype", lambda dt: ct)
    for b, sq, sk, hq, hk, d, causal, layout in BWD_CASES:
        q, k, v = make_qkv(b, sq, sk, hq, hk, d, dtype, layout)
        dout = _dout_like(q, layout)
        scale = d ** -0.5
        out, lse = ref.attention(q, k, v, causal, scale, -1, -1, 0.0, None)
        args = (dout, q, k, v, out, lse, causal, scale, -1, -1, 0.0, None)
        assert tattn.attention_backward_supports(*args, None) is None
        got = tattn.attention_backward(*args, torch.zeros_like(lse))
        want = ref.attention_backward(dout.double(), q.double(), k.double(), v.double(), None, None,
                                      causal, scale, -1, -1, 0.0, None)
        base = _torch_grads(q, k, v, dout, causal, scale)
        name = f"{dtype} ({kernel_dtype}) {(b, sq, sk, hq, hk, d)} causal={causal} {layout}"
        for gname, g, w, bl, t in zip(("dq", "dk", "dv"), got, want, base, (q, k, v)):
            assert g.shape == t.shape and g.dtype == dtype and g.is_contiguous(), f"{gname} {name}"
            assert torch.isfinite(g).all(), f"{gname} {name}: not finite"
            assert_close_budget(f"{gname} {name}", g, w, bl, 3.0, dtype)
        if causal and sq > sk:   # rows that see no key (lse -inf) get exactly 0
            assert (got[0][:, : sq - sk] == 0).all()


def test_backward_dtype_follows_onednn():
    """bf16 / fp16 run natively only where oneDNN has their GEMMs (else fp32 copies)."""
    fast = {torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported(),
            torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported()}
    for dt, native in fast.items():
        assert tattn._backward_dtype(dt) == (dt if native else torch.float32)
    for dt in (torch.float32, torch.float64):
        assert tattn._backward_dtype(dt) == dt


def test_attention_backward_float64_window_zero_stride_and_empty():
    # fp64: the kernel reads lse in fp64, so ours (fp32) is recomputed; gradients stay fp64-exact
    for sq, sk in [(9, 20), (20, 9), (16, 16)]:
        q, k, v = make_qkv(1, sq, sk, 4, 1, 32, torch.float64, "bhsd")
        q, k, v = q * 3, k * 3, v
        out, lse = ref.attention(q, k, v, True, 0.3, -1, -1, 0.0, None)
        dout = torch.randn_like(out)
        got = tattn.attention_backward(dout, q, k, v, out, lse, True, 0.3, -1, -1, 0.0, None, None)
        want = ref.attention_backward(dout, q, k, v, None, None, True, 0.3, -1, -1, 0.0, None)
        for g, w in zip(got, want):
            assert g.dtype == torch.float64
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    # window (-1, 0) without the causal flag is the causal mask; dout as autograd hands it for
    # out.sum() (an expanded scalar, all strides 0); an out with a strided head dim (copied)
    q, k, v = make_qkv(2, 5, 11, 2, 2, 8, torch.float32)
    out, lse = ref.attention(q, k, v, True, 0.3, -1, -1, 0.0, None)
    out_strided = torch.zeros(*out.shape[:-1], 2 * out.shape[-1])[..., ::2].copy_(out)
    dout = torch.ones(1).expand(q.shape)
    args = (dout, q, k, v, out_strided, lse, False, 0.3, -1, 0, 0.0, None)
    assert tattn.attention_backward_supports(*args, None) is None
    got = tattn.attention_backward(*args, None)
    want = ref.attention_backward(dout, q, k, v, None, None, True, 0.3, -1, -1, 0.0, None)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    # empty problems never reach the kernel (it divides by zero on them): zero gradients
    for b, sq, sk in [(2, 0, 5), (2, 5, 0), (2, 0, 0), (0, 5, 5)]:
        q, k, v = torch.randn(b, sq, 4, 8), torch.randn(b, sk, 2, 8), torch.randn(b, sk, 2, 8)
        out, lse = ref.attention(q, k, v, True, 0.3, -1, -1, 0.0, None)
        got = tattn.attention_backward(torch.randn_like(out), q, k, v, out, lse, True, 0.3, -1, -1,
                                       0.0, None, torch.zeros_like(lse))
        for g, t in zip(got, (q, k, v)):
            assert g.shape == t.shape and g.dtype == t.dtype and (g == 0).all()


def _count_kernel_calls(monkeypatch):
    calls = []
    real = tattn._flash_backward
    monkeypatch.setattr(tattn, "_flash_backward", lambda *a: calls.append(1) or real(*a))
    return calls


def test_attention_backward_dlse(monkeypatch):
    """Autograd always passes dlse (zeros when lse is unused): zeros run the kernel and give
    what dlse=None gives; a nonzero dlse (torch's kernel has no input for it) is folded exactly,
    by the reference's formulas."""
    calls = _count_kernel_calls(monkeypatch)
    for sq, sk, causal in [(7, 19, True), (19, 7, True), (12, 12, False)]:
        q, k, v = make_qkv(2, sq, sk, 4, 2, 24, torch.float32)
        out, lse = ref.attention(q, k, v, causal, 0.2, -1, -1, 0.0, None)
        dout = torch.randn_like(out)
        args = (dout, q, k, v, out, lse, causal, 0.2, -1, -1, 0.0, None)
        n = len(calls)
        plain = tattn.attention_backward(*args, None)
        zero = tattn.attention_backward(*args, torch.zeros_like(lse))
        assert len(calls) == n + 2
        for a, z in zip(plain, zero):
            assert torch.equal(a, z)
        dlse = torch.randn_like(lse).masked_fill(torch.isinf(lse), 0.0)
        assert tattn.attention_backward_supports(*args, dlse) is None
        got = tattn.attention_backward(*args, dlse)
        assert len(calls) == n + 2
        want = ref.attention_backward(dout.double(), q.double(), k.double(), v.double(), None, None,
                                      causal, 0.2, -1, -1, 0.0, None, dlse.double())
        for g, w in zip(got, want):
            torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_end_to_end(dtype, monkeypatch):
    """pk.attention(...).backward() on CPU now runs the torch backward (by priority it outranks
    the reference; the C++ backend has no backward), with the reference's gradients."""
    from polykernels.dispatch import registry
    calls = _count_kernel_calls(monkeypatch)
    q, k, v = make_qkv(2, 23, 31, 4, 2, 40, dtype)
    out, lse = ref.attention(q, k, v, True, 0.2, -1, -1, 0.0, None)
    internal = (torch.randn_like(out), q, k, v, out, lse, True, 0.2, -1, -1, 0.0, None,
                torch.zeros_like(lse))
    d = registry.explain("attention_backward", internal)
    assert d.chosen.label == "torch@torch", str(d)
    labels = [i.label for i in d.candidates]
    assert labels.index("torch@torch") < labels.index("reference@reference"), str(d)

    grads = {}
    for which in ("torch", "reference"):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        n = len(calls)
        explicit = {} if which == "torch" else {"attention_backward": which}
        with pk.use(attention="torch", **explicit):
            o, l = pk.attention(*leaves, causal=True, return_lse=True)
            o.float().square().sum().backward()
        assert len(calls) == n + (which == "torch"), which
        grads[which] = [t.grad for t in leaves]
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    for g, w in zip(grads["torch"], grads["reference"]):
        torch.testing.assert_close(g.float(), w.float(), rtol=tol, atol=tol)
    # a loss through lse: nonzero dlse, still the reference's gradients
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    o, l = pk.attention(*leaves, causal=True, return_lse=True)
    (o.float().sum() + l.sum()).backward()
    rl = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    with pk.use(attention="reference", attention_backward="reference"):
        o, l = pk.attention(*rl, causal=True, return_lse=True)
        (o.float().sum() + l.sum()).backward()
    for g, w in zip(leaves, rl):
        torch.testing.assert_close(g.grad.float(), w.grad.float(), rtol=tol, atol=tol)


# -- scaled_matmul -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.int8])
@pytest.mark.parametrize("scales", [("tensor", "tensor"), ("row", "row"), ("tensor", "row"), ("row", "tensor")])
def test_scaled_matmul(dtype, scales):
    for (m, k, n), out_dtype in [((1, 7, 9), torch.float32), ((113, 203, 7), torch.bfloat16),
                                 ((19, 72, 33), torch.float16)]:
        a, b, sa, sb = _operands(dtype, m, k, n, *scales)
        bias = rand(n, dtype=out_dtype) if out_dtype != torch.float16 else None
        out = tmm.scaled_matmul(a, b, sa, sb, bias, out_dtype)
        assert out.shape == (m, n) and out.dtype == out_dtype and out.is_contiguous()
        check(out, ref.scaled_matmul(a, b, sa, sb, bias, torch.float64),
              _scaled_baseline(a, b, sa, sb, bias, out_dtype), f"scaled {dtype} {scales} {m}x{k}x{n}")
        dense = tmm.scaled_matmul(a, b.contiguous(), sa.reshape(-1), sb.reshape(-1), bias, out_dtype)
        check(dense, ref.scaled_matmul(a, b, sa, sb, bias, torch.float64),
              _scaled_baseline(a, b, sa, sb, bias, out_dtype), f"scaled {dtype} contiguous b, 1-D scales")


def test_int8_exact():
    a, b = torch.full((3, 96), -127, dtype=torch.int8), torch.full((96, 5), 127, dtype=torch.int8)
    one = torch.ones(())
    assert torch.equal(tmm.scaled_matmul(a, b, one, one, None, torch.float32),
                       torch.full((3, 5), -127.0 * 127 * 96))


# -- grouped_matmul ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_matmul(dtype):
    cases = [  # (x, weights, sizes, torch._grouped_mm layout ok?)
        (rand(20, 32, dtype=dtype), rand(4, 32, 16, dtype=dtype), [5, 0, 12, 3], True),
        (rand(20, 32, dtype=dtype), rand(4, 16, 32, dtype=dtype).transpose(1, 2), [0, 20, 0, 0], True),
        (rand(113, 41, dtype=dtype), rand(3, 7, 41, dtype=dtype).transpose(1, 2), [0, 113, 0], False),
        (rand(7, 2 * 203, dtype=dtype)[:, ::2], rand(2, 203, 1, dtype=dtype), [6, 1], False),
        (rand(0, 32, dtype=dtype), rand(2, 32, 8, dtype=dtype), [0, 0], True),
    ]
    for x, w, sizes, fast in cases:
        gs = torch.tensor(sizes, dtype=torch.int32)
        assert (tmm._grouped_mm_layout_ok(x) and tmm._grouped_mm_layout_ok(w)) == fast
        assert tmm.grouped_matmul_supports(x, w, gs) is None
        out = tmm.grouped_matmul(x, w, gs)
        assert out.shape == (x.shape[0], w.shape[2]) and out.dtype == dtype and out.is_contiguous()
        if x.shape[0]:
            check(out, ref.grouped_matmul(x.double(), w.double(), gs), grouped_baseline(x, w, gs),
                  f"grouped {dtype} {tuple(x.shape)} {sizes} fast={fast}")


# -- quantized_linear ----------------------------------------------------------------------------
QFLOOR = {torch.float32: 2e-6, torch.bfloat16: 4e-3, torch.float16: 5e-4}


def check_q(name, x, qw, s, z, bits, gs, bias, out):
    assert out.shape == (*x.shape[:-1], qw.shape[0]) and out.dtype == x.dtype and out.is_contiguous()
    r = F.linear(x.double(), dequant64(qw, s, z, bits, gs), None if bias is None else bias.double())
    wd = quant.dequantize_weight(qw, s, z, bits, gs, x.dtype)
    check(out, r, F.linear(x, wd, None if bias is None else bias.to(x.dtype)), name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_quantized_linear_int4(dtype):
    for xs, n, k, gs, sym in [((1, 64), 7, 64, 32, True), ((7, 256), 113, 256, 64, False),
                              ((2, 3, 256), 16, 256, 128, True), ((33, 256), 1, 256, -1, False),
                              ((5, 512), 203, 512, 256, False)]:
        w = torch.randn(n, k) * 0.1
        qw, s, z = quant.quantize_weight(w.to(dtype), 4, gs, symmetric=sym)
        x = rand(*xs, dtype=dtype)
        bias = rand(n) if sym else None
        assert tq.quantized_linear_supports(x, qw, s, z, 4, gs, bias) is None
        out = tq.quantized_linear(x, qw, s, z, 4, gs, bias)
        check_q(f"int4 {dtype} x{xs} N={n} gs={gs} sym={sym}", x, qw, s, z, 4, gs, bias, out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_quantized_linear_int8(dtype):
    for xs, n, k in [((1, 1), 1, 1), ((7, 203), 113, 203), ((2, 3, 64), 16, 64), ((17, 33), 5, 33)]:
        qw, s, _ = quant.quantize_weight((torch.randn(n, k) * 0.1).to(dtype), 8, -1)
        x = rand(*xs, dtype=dtype)
        bias = rand(n, dtype=dtype)
        for gs in (-1, k):
            out = tq.quantized_linear(x, qw, s, None, 8, gs, bias)
            check_q(f"int8 {dtype} x{xs} N={n} gs={gs}", x, qw, s, None, 8, -1, bias, out)
    qw, s = torch.zeros(4, 0, dtype=torch.uint8), torch.ones(4, 1, dtype=dtype)   # K = 0: bias only
    bias = rand(4, dtype=dtype)
    out = tq.quantized_linear(rand(3, 0, dtype=dtype), qw, s, None, 8, -1, bias)
    assert torch.equal(out, bias.expand(3, 4))


def test_quantized_linear_layouts_and_narrow_scales():
    """Strided x and a strided qweight give the same answer; bf16 scales with fp32 x are exact."""
    qw, s, z = quant.quantize_weight(torch.randn(48, 128).bfloat16(), 4, 32, symmetric=False)
    x = rand(5, 2, 256)[:, 1, ::2]
    out = tq.quantized_linear(x, qw, s, z, 4, 32, None)
    check_q("int4 strided x, bf16 scales", x, qw, s, z, 4, 32, None, out)
    qw_strided = torch.cat([qw, qw], 1)[:, : qw.shape[1]]
    out2 = tq.quantized_linear(x.contiguous(), qw_strided, s, z, 4, 32, None)
    torch.testing.assert_close(out2, out, rtol=1e-6, atol=1e-6)
    qw8, s8, _ = quant.quantize_weight(torch.randn(9, 40), 8, -1)
    x8 = rand(3, 80, dtype=torch.bfloat16)[:, ::2]
    check_q("int8 strided bf16 x", x8, qw8, s8.bfloat16(), None, 8, -1, None,
            tq.quantized_linear(x8, qw8, s8.bfloat16(), None, 8, -1, None))


def test_packed_weight_cache():
    """The conversion runs once per weight; in-place changes to qweight / scales repack."""
    qw, s, z = quant.quantize_weight(torch.randn(32, 64), 4, 32, symmetric=False)
    x = torch.randn(4, 64)
    before = tq.conversions()
    first = tq.quantized_linear(x, qw, s, z, 4, 32, None)
    second = tq.quantized_linear(x, qw, s, z, 4, 32, None)
    assert tq.conversions() == before + 1, "the second call repacked the weight"
    assert torch.equal(first, second)
    tq.quantized_linear(x.bfloat16(), qw, s.bfloat16(), z.bfloat16(), 4, 32, None)
    assert tq.conversions() == before + 2           # new scales objects / x dtype: own packing
    tq.quantized_linear(x, qw, s, z, 4, 32, None)
    assert tq.conversions() == before + 2           # the fp32 packing is still cached
    new_qw, _, _ = quant.quantize_weight(torch.randn(32, 64), 4, 32, symmetric=False)
    qw.copy_(new_qw)                                # in place: same object, new version
    out = tq.quantized_linear(x, qw, s, z, 4, 32, None)
    assert tq.conversions() == before + 3
    check_q("after in-place qweight change", x, qw, s, z, 4, 32, None, out)
    s[:, 0].mul_(2)                                 # through a view: shares the version counter
    out = tq.quantized_linear(x, qw, s, z, 4, 32, None)
    assert tq.conversions() == before + 4
    check_q("after in-place scales change", x, qw, s, z, 4, 32, None, out)
    entries = len(tq._cache)
    del qw
    gc.collect()
    assert len(tq._cache) == entries - 1, "the packed copy must die with its qweight"


# -- refusals ------------------------------------------------------------------------------------
def _cuda_like(shape, dtype):
    """What supports() reads of a CUDA tensor (device, shape, dtype), without a GPU."""
    return SimpleNamespace(device=torch.device("cuda"), shape=torch.Size(shape), dtype=dtype)


def test_refusals():
    q, k, v = make_qkv(1, 4, 6, 2, 2, 8, torch.float32)
    A = tattn.attention_supports
    assert "validated on CPU only (GPU path pending)" in A(meta(1, 4, 2, 8), meta(1, 6, 2, 8), meta(1, 6, 2, 8),
                                                           False, 0.3, -1, -1, 0.0, None)
    assert "softcap" in A(q, k, v, False, 0.3, -1, -1, 30.0, None)
    assert "ALiBi" in A(q, k, v, False, 0.3, -1, -1, 0.0, torch.ones(2))
    assert "sliding window (left=3, right=0)" in A(q, k, v, True, 0.3, 3, -1, 0.0, None)
    assert "sliding window (left=-1, right=2)" in A(q, k, v, False, 0.3, -1, 2, 0.0, None)
    k_strided = torch.randn(1, 6, 2, 16)[..., ::2]
    assert "k has a strided head dim" in A(q, k_strided, v, False, 0.3, -1, -1, 0.0, None)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    assert "varlen_attention validated on CPU only" in tattn.varlen_attention_supports(
        meta(4, 2, 8), meta(6, 2, 8), meta(6, 2, 8), cu, cu, 4, 6, False, 0.3, -1, -1, 0.0, None)
    assert "softcap" in tattn.varlen_attention_supports(q[0], k[0], v[0], cu, cu, 4, 6, False, 0.3,
                                                        -1, -1, 1.0, None)

    assert "device type 'meta'" in tmm.matmul_supports(meta(2, 3), meta(3, 4), None, None, None)
    assert "device type 'meta'" in tmm.linear_supports(meta(2, 3), meta(4, 3), None, None)

    S = tmm.scaled_matmul_supports
    one = torch.ones(())
    fp8 = torch.float8_e4m3fn
    assert "fp8 scaled_matmul validated on CPU only" in S(meta(4, 4, dtype=fp8), meta(4, 4, dtype=fp8),
                                                          one, one, None, torch.float32)
    big = torch.zeros(1, tmm.INT_MM_MAX_K + 1, dtype=torch.int8)
    assert "int32 accumulator" in S(big, big.t(), one, one, None, torch.float32)
    assert "needs M > 16, got M=16" in S(_cuda_like((16, 64), torch.int8), _cuda_like((64, 8), torch.int8),
                                         one, one, None, torch.float32)
    assert S(_cuda_like((17, 64), torch.int8), _cuda_like((64, 8), torch.int8), one, one, None,
             torch.float32) is None

    G = tmm.grouped_matmul_supports
    gs = torch.tensor([2], dtype=torch.int32)
    assert "float64 not supported by torch._grouped_mm" in G(rand(2, 8, dtype=torch.float64),
                                                             rand(1, 8, 4, dtype=torch.float64), gs)
    assert "grouped_matmul validated on CPU only" in G(meta(2, 8), meta(1, 8, 4), gs)

    Q = tq.quantized_linear_supports
    qw4, s4, _ = quant.quantize_weight(torch.randn(8, 64), 4, 16)
    assert "int4 group_size 16: torch's int4pack kernel takes 32, 64, 128, 256" in Q(
        torch.randn(2, 64), qw4, s4, None, 4, 16, None)
    qw4, s4, _ = quant.quantize_weight(torch.randn(8, 64), 4, 32)
    assert "scales dtype torch.float32 differs from x dtype torch.bfloat16" in Q(
        torch.randn(2, 64).bfloat16(), qw4, s4, None, 4, 32, None)
    assert "validated on CPU only" in Q(meta(2, 64), qw4.to("meta"), s4.to("meta"), None, 4, 32, None)
    qw8, s8, z8 = quant.quantize_weight(torch.randn(8, 64), 8, 32, symmetric=False)
    assert "no zero point" in Q(torch.randn(2, 64), qw8, s8, z8, 8, 32, None)
    qw8, s8, _ = quant.quantize_weight(torch.randn(8, 64), 8, 32)
    assert "int8 group_size 32 < K=64" in Q(torch.randn(2, 64), qw8, s8, None, 8, 32, None)


def test_backward_refusals_match_forward():
    """attention_backward refuses exactly what the forward refuses, with the same reasons; it
    accepts GQA, Sq != Sk causal, window (-1, 0), fp64 and a dlse tensor."""
    q, k, v = make_qkv(1, 4, 6, 2, 2, 8, torch.float32)
    B = tattn.attention_backward_supports

    def both(q, k, v, causal, wl, wr, softcap, alibi):
        fwd = tattn.attention_supports(q, k, v, causal, 0.3, wl, wr, softcap, alibi)
        dout, out, lse = q, q, q.new_zeros(q.shape[0], q.shape[2], q.shape[1])
        bwd = B(dout, q, k, v, out, lse, causal, 0.3, wl, wr, softcap, alibi, lse)
        return fwd, bwd

    fwd, bwd = both(meta(1, 4, 2, 8), meta(1, 6, 2, 8), meta(1, 6, 2, 8), False, -1, -1, 0.0, None)
    assert fwd.replace("attention", "attention_backward", 1) == bwd
    assert "attention_backward validated on CPU only (GPU path pending)" in bwd
    k_strided = torch.randn(1, 6, 2, 16)[..., ::2]
    for case, reason in [((q, k, v, False, -1, -1, 30.0, None), "softcap"),
                         ((q, k, v, False, -1, -1, 0.0, torch.ones(2)), "ALiBi"),
                         ((q, k, v, True, 3, -1, 0.0, None), "sliding window (left=3, right=0)"),
                         ((q, k, v, False, -1, 2, 0.0, None), "sliding window (left=-1, right=2)"),
                         ((q, k_strided, v, False, -1, -1, 0.0, None), "k has a strided head dim"),
                         ((*(t.to(torch.float8_e4m3fn) for t in (q, k, v)), False, -1, -1, 0.0, None),
                          "dtype torch.float8_e4m3fn not supported by torch's CPU flash kernel")]:
        fwd, bwd = both(*case)
        assert fwd == bwd and reason in bwd, (reason, fwd, bwd)
    gqa = make_qkv(2, 9, 5, 4, 2, 8, torch.float64, "strided")
    for case in [(*gqa, True, -1, -1, 0.0, None), (*gqa, False, -1, 0, 0.0, None),
                 (*make_qkv(1, 5, 9, 4, 1, 8, torch.bfloat16, "bhsd"), True, -1, -1, 0.0, None)]:
        assert both(*case) == (None, None)


def test_torch_outranks_the_reference():
    """scaled_matmul has no C++ impl: on CPU the torch impl runs before the reference (and
    interpreted Triton, which runs only when chosen)."""
    a, b, sa, sb = _operands(torch.float8_e4m3fn, 5, 32, 16, "row", "row")
    d = pk.explain("scaled_matmul", a, b, sa.reshape(-1), sb.reshape(-1), out_dtype=torch.float32)
    labels = [i.label for i in d.candidates]
    assert labels.index("torch@torch") < labels.index("reference@reference"), str(d)
    got = pk.scaled_matmul(a, b, sa.reshape(-1), sb.reshape(-1), out_dtype=torch.float32)
    want = ref.scaled_matmul(a, b, sa, sb, None, torch.float64)
    assert (got.double() - want).abs().max().item() < 1e-4 * max(1.0, want.abs().max().item())


@pytest.mark.gpu
def test_gpu_matmul_and_int8():
    """On a GPU: torch's GEMMs and cuBLAS int8 (padded K/N) against the reference."""
    dev = "cuda"
    a, b, bias = rand(33, 70, dtype=torch.bfloat16).to(dev), rand(70, 45, dtype=torch.bfloat16).to(dev), rand(45).to(dev)
    out = tmm.matmul(a, b, bias, "gelu", None)
    check(out.cpu(), ref.matmul(a.double(), b.double(), bias.double(), "gelu", torch.float64).cpu(),
          torch_act(a @ b + bias.bfloat16(), "gelu").cpu(), "cuda bf16 matmul")
    qa, qb, sa, sb = _operands(torch.int8, 33, 70, 45, "row", "row")
    args = [t.to(dev) for t in (qa, qb, sa, sb)]
    assert tmm.scaled_matmul_supports(*args, None, torch.float32) is None
    got = tmm.scaled_matmul(*args, None, torch.float32).cpu()
    check(got, ref.scaled_matmul(qa, qb, sa, sb, None, torch.float64),
          _scaled_baseline(qa, qb, sa, sb, None, torch.float32), "cuda int8 scaled_matmul")
    assert math.isfinite(got.sum().item())


@pytest.mark.parametrize("offset", [1, 2, 4, 8])
def test_int8_weight_only_with_a_misaligned_bf16_view(offset):
    """torch's _weight_int8pack_mm crashed the process on bf16 activations not 16-byte
    aligned (found by tests/test_properties.py); the provider copies such an x."""
    from polykernels.torch_provider import quantized as tq
    qw, s, z = pk.quantize_weight(torch.randn(24, 32).to(torch.bfloat16), bits=8, group_size=-1)
    x = torch.randn(3, 64).to(torch.bfloat16)[:1, offset:offset + 32]
    assert tq.quantized_linear_supports(x, qw, s, z, 8, -1, None) is None
    got = tq.quantized_linear(x, qw, s, z, 8, -1, None)
    want = pk.reference.quantized_linear(x, qw, s, z, 8, -1, None)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
