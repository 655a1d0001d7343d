"""Triton scaled_matmul (fp8 / int8) and quantized_linear (int4 / int8 weight-only),
issue 6, under the interpreter against the float64 oracle."""
from __future__ import annotations

import pytest
import torch

from polykernels import reference as ref
from polykernels.reference import quant
from polykernels.triton.matmul import scaled, weight_only
from test_matmul_triton_helpers import check, poisoned

FP8 = [torch.float8_e4m3fn, torch.float8_e4m3fnuz]


@pytest.fixture(autouse=True)
def _poison_workspace(monkeypatch):
    """Split-K partials start as NaN so a slice that is not written shows up."""
    def ws(splits, Z, M, N, device):
        return torch.full((splits, Z, M, N), float("nan"), dtype=torch.float32, device=device)
    monkeypatch.setattr(weight_only, "workspace", ws)


def _operands(dtype, M, K, N, per_a, per_b):
    """Quantised a [M, K] and b [K, N] with scales as the reference quantisers make them."""
    a = torch.randn(M, K)
    bt = torch.randn(N, K)  # per-column scales of b: quantise b.T per row
    if dtype == torch.int8:
        qa, sa = quant.quantize_int8(a, per_a)
        qbt, sb = quant.quantize_int8(bt, per_b)
    else:
        qa, sa = quant.quantize_fp8(a, per_a, dtype)
        qbt, sb = quant.quantize_fp8(bt, per_b, dtype)
    return qa, qbt.t(), sa, sb.reshape(1, -1) if per_b == "row" else sb


def _scaled_baseline(a, b, sa, sb, bias, out_dtype):
    # torch has no fp8/int8 GEMM on CPU: the same math in fp32, rounded once at the end.
    o = (a.float() @ b.float()) * sa.float().reshape(-1, 1) * sb.float().reshape(1, -1)
    if bias is not None:
        o = o + bias.float()
    return o.to(out_dtype)


@pytest.mark.parametrize("dtype", FP8 + [torch.int8])
@pytest.mark.parametrize("scales", ["tensor", "row"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_scaled_matmul(dtype, scales, out_dtype):
    M, K, N = 19, 72, 33  # K not a multiple of BLOCK_K, N odd; b is a transposed view
    a, b, sa, sb = _operands(dtype, M, K, N, scales, scales)
    if scales == "row" and out_dtype == torch.float16:
        sa, sb = sa.reshape(-1), sb.reshape(-1)  # [M] / [N] forms as well as [M,1] / [1,N]
    bias = torch.randn(N, dtype=out_dtype) if out_dtype != torch.float16 else None
    out = poisoned((M, N), out_dtype)
    got = scaled.scaled_matmul(a, b, sa, sb, bias, out_dtype, out=out)
    oracle = ref.scaled_matmul(a, b, sa, sb, bias, torch.float64)
    check(got, oracle, _scaled_baseline(a, b, sa, sb, bias, out_dtype),
          f"scaled {dtype} {scales} -> {out_dtype}")


@pytest.mark.parametrize("dtype", FP8 + [torch.int8])
def test_scaled_matmul_mixed_scales_m1(dtype):
    # M = 1 with a per-tensor a scale and per-column b scales; contiguous b [K, N].
    a, _, sa, _ = _operands(dtype, 1, 40, 9, "tensor", "row")
    _, b, _, sb = _operands(dtype, 1, 40, 9, "tensor", "row")
    b = b.contiguous()
    got = scaled.scaled_matmul(a, b, sa, sb, None, torch.float32,
                               out=poisoned((1, 9), torch.float32))
    check(got, ref.scaled_matmul(a, b, sa, sb, None, torch.float64),
          _scaled_baseline(a, b, sa, sb, None, torch.float32), f"scaled M1 {dtype}")


def test_int8_accumulates_exactly():
    # 127 * 127 * 96 = 1548384 is exact in int32 and in fp32 (< 2**24): no rounding at all.
    a = torch.full((3, 96), 127, dtype=torch.int8)
    b = torch.full((96, 5), 127, dtype=torch.int8)
    one = torch.ones(())
    got = scaled.scaled_matmul(a, b, one, one, None, torch.float32)
    assert torch.equal(got, torch.full((3, 5), 127.0 * 127 * 96))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("M", [1, 33])
def test_quantized_linear(bits, symmetric, dtype, M):
    N, K, gs = 37, 96, 32
    w = torch.randn(N, K, dtype=dtype)
    qw, s, z = quant.quantize_weight(w, bits, gs, symmetric)
    x = torch.randn(M, K, dtype=dtype)
    bias = torch.randn(N, dtype=dtype) if symmetric else None
    _check_wo(x, qw, s, z, bits, gs, bias, f"int{bits} sym={symmetric} {dtype} M{M}",
              split_k=3 if M == 1 else 1)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("gs,K", [(-1, 40), (16, 64), (24, 72)])
def test_quantized_linear_group_sizes(bits, gs, K):
    # -1: one group per row; 16: BLOCK_K shrinks to the group; 24: scales gathered per k.
    w = torch.randn(21, K, dtype=torch.float16)
    qw, s, z = quant.quantize_weight(w, bits, gs, symmetric=False)
    x = torch.randn(2, 3, K, dtype=torch.float16)  # 3-D x
    _check_wo(x, qw, s, z, bits, gs, None, f"int{bits} gs={gs} K={K}", split_k=2)


def test_quantized_linear_strided_x_scales_dtype():
    # x a strided view; scales in bf16 while x is fp16 (the quantiser keeps w's dtype).
    w = torch.randn(17, 64, dtype=torch.bfloat16)
    qw, s, z = quant.quantize_weight(w, 4, 32, symmetric=False)
    x = torch.randn(64, 10, dtype=torch.float16).t()[::2]  # [5, 64], strides (2, 10)
    _check_wo(x, qw, s, z, 4, 32, None, "strided x, bf16 scales")


def _check_wo(x, qw, s, z, bits, gs, bias, name, split_k=None):
    out = poisoned((*x.shape[:-1], qw.shape[0]), x.dtype)
    got = weight_only.quantized_linear(x, qw, s, z, bits, gs, bias, out=out, split_k=split_k)
    assert got.data_ptr() == out.data_ptr()
    oracle = ref.quantized_linear(x.double(), qw, s, z, bits, gs,
                                  None if bias is None else bias.double())
    wdq = quant.dequantize_weight(qw, s, z, bits, gs, x.dtype)
    baseline = torch.nn.functional.linear(x, wdq, bias)  # torch "dequantise then matmul"
    check(got, oracle, baseline, name)
