"""Quantisers (pk.quantize_weight / quantize_fp8 / quantize_int8) and int4 packing round-trips.

The format is the one documented in polykernels/reference/quant.py; the dequantisation here
is written from that text, element by element, not by calling the library's dequantiser.
"""
from __future__ import annotations

import pytest
import torch

import polykernels as pk
from polykernels.reference import quant


def my_unpack(packed):
    n, half = packed.shape
    out = torch.zeros(n, half * 2, dtype=torch.int64)
    for j in range(half):
        byte = packed[:, j].to(torch.int64)
        out[:, 2 * j] = byte & 0xF
        out[:, 2 * j + 1] = byte >> 4
    return out


def my_dequant(qweight, scales, zeros, bits, k):
    codes = my_unpack(qweight) if bits == 4 else qweight.to(torch.int64)
    assert codes.shape[1] == k
    g = scales.shape[1]
    gs = k // g
    gidx = torch.arange(k) // gs
    z = zeros.double()[:, gidx] if zeros is not None else 2.0 ** (bits - 1)
    return (codes.double() - z) * scales.double()[:, gidx], codes


def half_step_bound(scales, gs):
    """Per-element error bound: half the quantisation step (the stored scale) of the element's
    group, with slack for fp64 rounding only. The quantiser stores 16-bit scales rounded up so
    that the codes still span each group's range (a scale rounded down would clamp the group's
    extremes, missing them by up to ~1.5 steps for int8)."""
    step = scales.double().repeat_interleave(gs, dim=1)
    return step * 0.5 * (1 + 1e-6) + 1e-7


@pytest.mark.parametrize("bits", (4, 8))
@pytest.mark.parametrize("symmetric", (True, False))
@pytest.mark.parametrize("group_size", (-1, 32, 8))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16))
def test_quantize_weight_round_trip(bits, symmetric, group_size, dtype):
    n, k = 7, 96
    w = (torch.randn(n, k) * torch.linspace(0.1, 3, n)[:, None]).to(dtype)
    w[0, :8] = 0                                   # an all-zero group when group_size = 8
    w[1] = w[1].abs() + 0.1                         # a strictly positive row (asymmetric range)
    qweight, scales, zeros = pk.quantize_weight(w, bits=bits, group_size=group_size,
                                                symmetric=symmetric)
    groups = 1 if group_size == -1 else k // group_size
    assert qweight.dtype == torch.uint8
    assert qweight.shape == ((n, k // 2) if bits == 4 else (n, k))
    assert scales.shape == (n, groups) and scales.dtype == dtype
    if symmetric:
        assert zeros is None
    else:
        assert zeros.shape == (n, groups) and zeros.dtype == dtype
        assert torch.equal(zeros, zeros.round()), "zeros must be integer-valued"
    w_hat, codes = my_dequant(qweight, scales, zeros, bits, k)
    assert codes.min() >= 0 and codes.max() < 2 ** bits
    if symmetric:   # codes q + 2**(bits-1), q in [-(2**(bits-1) - 1), 2**(bits-1) - 1]
        assert codes.min() >= 1
    err = (w_hat - w.double()).abs()
    bound = half_step_bound(scales, k // groups)
    bad = err > bound
    assert not bad.any(), (f"{int(bad.sum())} elements off by more than the bound; worst "
                           f"{(err / bound).max().item():.3f} x bound at {bad.nonzero()[0].tolist()}")
    # The library's dequantiser reads the same format.
    lib = pk.dequantize_weight(qweight, scales, zeros, bits, group_size, torch.float64)
    assert (lib - w_hat).abs().max() < 1e-6 * (1 + w_hat.abs().max())


def test_quantize_weight_bf16_within_half_step_strict():
    torch.manual_seed(1)
    w = torch.randn(64, 256).to(torch.bfloat16)
    for symmetric in (True, False):
        qweight, scales, zeros = pk.quantize_weight(w, bits=8, group_size=32, symmetric=symmetric)
        w_hat, _ = my_dequant(qweight, scales, zeros, 8, 256)
        bound = half_step_bound(scales, 32)
        err = (w_hat - w.double()).abs()
        assert (err <= bound).all(), f"symmetric={symmetric}: worst {(err / bound).max():.3f} x half a step"


def test_quantize_weight_fp32_within_half_step_strict():
    w = torch.randn(64, 256)
    for bits in (4, 8):
        for symmetric in (True, False):
            qweight, scales, zeros = pk.quantize_weight(w, bits=bits, group_size=32, symmetric=symmetric)
            w_hat, _ = my_dequant(qweight, scales, zeros, bits, 256)
            bound = half_step_bound(scales, 32)
            err = (w_hat - w.double()).abs()
            assert (err <= bound).all(), f"bits={bits} symmetric={symmetric}: worst {(err / bound).max():.3f}"


@pytest.mark.parametrize("bits,group_size", [(3, 32), (4, 0), (4, 5), (8, -2)])
def test_quantize_weight_bad_args(bits, group_size):
    with pytest.raises(ValueError, match="bits|group_size"):
        pk.quantize_weight(torch.randn(4, 64), bits=bits, group_size=group_size)


def test_pack_unpack_int4_exact():
    codes = torch.randint(0, 16, (9, 38), dtype=torch.uint8)
    packed = quant.pack_int4(codes)
    assert packed.shape == (9, 19) and packed.dtype == torch.uint8
    assert torch.equal(my_unpack(packed), codes.to(torch.int64))
    assert torch.equal(quant.unpack_int4(packed), codes)
    # every byte value survives unpack -> pack
    all_bytes = torch.arange(256, dtype=torch.uint8).reshape(2, 128)
    assert torch.equal(quant.pack_int4(quant.unpack_int4(all_bytes)), all_bytes)
    with pytest.raises(ValueError, match="K"):
        quant.pack_int4(torch.zeros(2, 3, dtype=torch.uint8))


@pytest.mark.parametrize("fp8", (torch.float8_e4m3fn, torch.float8_e4m3fnuz))
@pytest.mark.parametrize("per", ("tensor", "row"))
def test_quantize_fp8(fp8, per):
    x = torch.randn(13, 40) * torch.linspace(0.01, 100, 13)[:, None]
    x[3] = 0                                         # an all-zero row
    q, scale = pk.quantize_fp8(x, per=per, dtype=fp8)
    assert q.dtype == fp8 and q.shape == x.shape and scale.dtype == torch.float32
    assert scale.shape == (() if per == "tensor" else (13, 1))
    fmax = torch.finfo(fp8).max
    amax = x.abs().amax() if per == "tensor" else x.abs().amax(dim=1, keepdim=True)
    # The largest magnitude maps to the format's max (scale = amax / max; zero rows scale 1).
    want_scale = torch.where(amax == 0, torch.ones_like(amax), amax / fmax)
    assert torch.allclose(scale, want_scale, rtol=1e-6)
    x_hat = q.to(torch.float64) * scale.double()
    # e4m3 has 3 mantissa bits: relative rounding error <= 2**-4 (normal range), plus the
    # subnormal spacing 2**-9 (2**-10 for fnuz) times the scale.
    sub = 2.0 ** (-9 if fp8 == torch.float8_e4m3fn else -10)
    tol = x.abs().double() * 2 ** -4 + sub * scale.double()
    bad = (x_hat - x.double()).abs() > tol * 1.0001
    assert not bad.any(), f"fp8 round trip off at {bad.nonzero()[:3].tolist()}"
    assert q.float().abs().max() <= fmax
    assert (q[3].float() == 0).all() or per == "tensor"


@pytest.mark.parametrize("per", ("tensor", "row"))
def test_quantize_int8(per):
    x = torch.randn(11, 29) * 5
    x[2] = 0
    q, scale = pk.quantize_int8(x, per=per)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert scale.shape == (() if per == "tensor" else (11, 1))
    assert q.min() >= -127 and q.max() <= 127
    x_hat = q.double() * scale.double()
    err = (x_hat - x.double()).abs()
    assert (err <= 0.5 * scale.double() * (1 + 1e-5)).all(), f"worst {(err / scale).max():.3f} steps"
    # the largest element of each row (per row) / of the tensor hits +-127
    if per == "row":
        nz = [r for r in range(11) if r != 2]
        assert (q[nz].abs().amax(dim=1) == 127).all()
    else:
        assert q.abs().max() == 127


def test_quantize_per_row_needs_2d():
    with pytest.raises(ValueError, match="x"):
        pk.quantize_int8(torch.randn(2, 3, 4), per="row")
    with pytest.raises(ValueError, match="per"):
        pk.quantize_fp8(torch.randn(2, 3), per="col")
