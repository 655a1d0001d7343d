"""The matmul-family reference against float64 formulas written here.

Epilogue order (matmul_ref docstring): acc = a @ b, + bias, then activation, cast to out_dtype.
Weight-only quantised format (quant.py docstring): W[n, k] = (u[n, k] - z[n, g]) * s[n, g],
g = k // group_size; symmetric: z = 2**(bits-1); int4 packs element 2j in the low nibble and
2j+1 in the high nibble. The packing and dequantisation below are written from that text.
Low-precision results are held to 2x the error of the same computation done by torch in the
input dtype, plus a floor.
"""
from __future__ import annotations

import math

import pytest
import torch

from polykernels import reference as ref
from test_reference_attention import assert_close

FLOOR = {torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-12}
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def act64(x, name):
    if name is None:
        return x
    if name == "relu":
        return torch.where(x > 0, x, torch.zeros_like(x))
    if name == "gelu":
        return x * 0.5 * (1 + torch.special.erf(x / math.sqrt(2)))
    if name == "gelu_tanh":
        return x * 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))
    if name == "silu":
        return x / (1 + torch.exp(-x))
    raise AssertionError(name)


def act_torch(x, name):
    """torch's own activations, run in the input dtype (the baseline)."""
    F = torch.nn.functional
    return {None: lambda t: t, "relu": F.relu, "gelu": F.gelu, "silu": F.silu,
            "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}[name](x)


def _amax(t):
    return t.abs().max().item() if t.numel() else 0.0


def tol_vs_baseline(want64, baseline, dtype):
    if dtype == torch.float64:
        return 1e-10 * (1 + _amax(want64))
    return 2 * _amax(baseline.double() - want64) + FLOOR[dtype] * (1 + _amax(want64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh", "silu"])
def test_matmul_epilogues(dtype, activation):
    m, k, n = 17, 33, 13
    a = torch.randn(m, k, dtype=dtype)
    b = torch.randn(k, n, dtype=dtype) / math.sqrt(k)
    bias = torch.randn(n, dtype=dtype)
    got = ref.matmul(a, b, bias, activation, None)
    assert got.dtype == dtype and got.shape == (m, n)
    want = act64(a.double() @ b.double() + bias.double(), activation)
    base = act_torch(a @ b + bias, activation)
    assert_close(f"matmul {activation}", got, want, tol_vs_baseline(want, base, dtype))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matmul_batched_transposed_b_out_dtype(out_dtype):
    a = torch.randn(3, 2, 5, 24, dtype=torch.bfloat16)        # [..., M, K], batched
    b = torch.randn(7, 24, dtype=torch.bfloat16).t()          # [K, N] transposed view
    assert not b.is_contiguous()
    got = ref.matmul(a, b, None, "silu", out_dtype)
    assert got.dtype == out_dtype and got.shape == (3, 2, 5, 7)
    want = act64(a.double() @ b.double(), "silu")
    assert_close("batched", got, want, 1e-2 * (1 + want.abs().max().item()))


@pytest.mark.parametrize("mkn", [(1, 1, 1), (113, 17, 5), (1, 113, 3)])
def test_matmul_awkward_sizes(mkn):
    m, k, n = mkn
    a = torch.randn(m, k, dtype=torch.float64)
    b = torch.randn(k, n, dtype=torch.float64)
    bias = torch.randn(n, dtype=torch.float64)
    want = act64(a @ b + bias, "relu")
    assert_close(f"{mkn}", ref.matmul(a, b, bias, "relu", None), want, 1e-12 * (1 + want.abs().max().item()))


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
def test_linear(dtype):
    x = torch.randn(2, 3, 21, dtype=dtype)
    w = torch.randn(11, 21, dtype=dtype)
    bias = torch.randn(11, dtype=dtype)
    got = ref.linear(x, w, bias, "gelu")
    want = act64(x.double() @ w.double().T + bias.double(), "gelu")
    base = torch.nn.functional.gelu(torch.nn.functional.linear(x, w, bias))
    assert got.shape == (2, 3, 11)
    assert_close("linear", got, want, tol_vs_baseline(want, base, dtype))
    got_nb = ref.linear(x, w, None, None)
    assert_close("linear no bias", got_nb, x.double() @ w.double().T,
                 tol_vs_baseline(x.double() @ w.double().T, x @ w.T, dtype))


# -- scaled_matmul -----------------------------------------------------------------------------
def _scales(per_a, per_b, m, n):
    sa = torch.rand(m) + 0.5 if per_a else torch.tensor([0.7])
    sb = torch.rand(n) + 0.5 if per_b else torch.tensor(1.3)
    return sa.float(), sb.float()


@pytest.mark.parametrize("qdtype", (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.int8))
@pytest.mark.parametrize("per", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["tt", "rt", "tc", "rc"])
@pytest.mark.parametrize("out_dtype", (torch.bfloat16, torch.float32))
def test_scaled_matmul(qdtype, per, out_dtype):
    m, k, n = 19, 48, 11
    if qdtype == torch.int8:
        a = torch.randint(-127, 128, (m, k), dtype=torch.int8)
        b = torch.randint(-127, 128, (k, n), dtype=torch.int8)
    else:
        a = (torch.randn(m, k) * 8).to(qdtype)
        b = (torch.randn(n, k) * 8).to(qdtype).t()      # column-major B, common for fp8 GEMMs
    sa, sb = _scales(*per, m, n)
    bias = torch.randn(n)
    got = ref.scaled_matmul(a, b, sa, sb, bias, out_dtype)
    assert got.dtype == out_dtype and got.shape == (m, n)
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    want = torch.zeros(m, n, dtype=torch.float64)
    for i in range(m):
        for j in range(n):
            want[i, j] = (a64[i] * b64[:, j]).sum() * sa.double()[i if per[0] else 0] \
                * sb.double().reshape(-1)[j if per[1] else 0] + bias[j].double()
    # The reference's math is exact; the only error is the final rounding to out_dtype.
    rel = 2 ** -7 if out_dtype == torch.bfloat16 else 1e-6
    assert_close("scaled_matmul", got, want, rel * want.abs().max().item())


# -- quantized_linear ---------------------------------------------------------------------------
def pack_nibbles(codes):
    """uint8 codes [N, K] -> [N, K/2], written byte by byte from the documented order."""
    n, k = codes.shape
    out = torch.zeros(n, k // 2, dtype=torch.uint8)
    for r in range(n):
        for j in range(k // 2):
            out[r, j] = int(codes[r, 2 * j]) | (int(codes[r, 2 * j + 1]) << 4)
    return out


def dequant64(codes, scales, zeros, bits, group_size):
    n, k = codes.shape
    gs = k if group_size == -1 else group_size
    w = torch.zeros(n, k, dtype=torch.float64)
    for c in range(k):
        g = c // gs
        z = zeros[:, g].double() if zeros is not None else torch.full((n,), 2.0 ** (bits - 1), dtype=torch.float64)
        w[:, c] = (codes[:, c].double() - z) * scales[:, g].double()
    return w


def test_int4_packing_example_from_docstring():
    assert ref.quant.pack_int4(torch.tensor([[3, 8, 15, 0]], dtype=torch.uint8)).tolist() == [[0x83, 0x0F]]
    assert pack_nibbles(torch.tensor([[3, 8, 15, 0]], dtype=torch.uint8)).tolist() == [[0x83, 0x0F]]


@pytest.mark.parametrize("bits", (4, 8))
@pytest.mark.parametrize("group_size", (-1, 16, 32))
@pytest.mark.parametrize("with_zeros", (False, True))
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float32))
def test_quantized_linear(bits, group_size, with_zeros, dtype):
    n, k = 12, 64
    groups = 1 if group_size == -1 else k // group_size
    codes = torch.randint(0, 2 ** bits, (n, k), dtype=torch.uint8)
    scales = (torch.rand(n, groups) * 0.02 + 0.005).to(dtype)
    zeros = torch.randint(0, 2 ** bits, (n, groups)).to(dtype) if with_zeros else None
    qweight = pack_nibbles(codes) if bits == 4 else codes
    x = torch.randn(3, 5, k, dtype=dtype)
    bias = torch.randn(n, dtype=dtype)
    got = ref.quantized_linear(x, qweight, scales, zeros, bits, group_size, bias)
    assert got.dtype == dtype and got.shape == (3, 5, n)
    w64 = dequant64(codes, scales, zeros, bits, group_size)
    want = x.double() @ w64.T + bias.double()
    base = torch.nn.functional.linear(x, w64.to(dtype), bias)
    assert_close("quantized_linear", got, want, tol_vs_baseline(want, base, dtype))
    # The library's dequantiser agrees with the documented format too.
    lib_w = ref.quant.dequantize_weight(qweight, scales, zeros, bits, group_size, torch.float32)
    assert_close("dequantize_weight", lib_w, w64, 1e-6 * (1 + w64.abs().max().item()))


def test_quantized_linear_nibble_order_matters():
    # A weight whose two nibbles differ: swapping them must change the answer.
    codes = torch.tensor([[0, 15] * 8], dtype=torch.uint8)
    scales = torch.ones(1, 1)
    x = torch.zeros(1, 16)
    x[0, 0] = 1.0   # picks element 0 = low nibble of byte 0
    got = ref.quantized_linear(x, pack_nibbles(codes), scales, None, 4, -1, None)
    assert got.item() == (0 - 8) * 1.0


# -- grouped_matmul -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32, torch.float64))
@pytest.mark.parametrize("sizes", [[3, 0, 5, 1], [0, 0, 9], [0, 0, 0]])
def test_grouped_matmul_with_empty_groups(dtype, sizes):
    e, k, n = len(sizes), 20, 7
    x = torch.randn(sum(sizes), k, dtype=dtype)
    w = torch.randn(e, k, n, dtype=dtype)
    gs = torch.tensor(sizes, dtype=torch.int32)
    got = ref.grouped_matmul(x, w, gs)
    assert got.shape == (sum(sizes), n) and got.dtype == dtype
    want = torch.zeros(sum(sizes), n, dtype=torch.float64)
    base = torch.zeros(sum(sizes), n, dtype=dtype)
    row = 0
    for g, size in enumerate(sizes):
        for _ in range(size):
            want[row] = x[row].double() @ w[g].double()
            base[row] = x[row] @ w[g]
            row += 1
    assert_close("grouped", got, want, tol_vs_baseline(want, base, dtype))
