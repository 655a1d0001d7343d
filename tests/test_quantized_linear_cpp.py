"""C++ CPU weight-only quantized linear (int4 / int8, group scales, optional zeros) against
the fp64 reference, on every ISA path and both kernels (GEMV for <= 16 rows, dequantise +
GEMM above).

Tolerance rule (docs/testing.md): error against the fp64 computation (weights dequantised in
fp64 from the same codes) at most 2x the error of torch doing the same in the input dtype
(dequantise to x.dtype, F.linear), plus a small floor scaled by the output's magnitude.
Outputs are written through `quantized_linear_out` into NaN-poisoned, row-padded buffers.
"""
import pytest
import torch
import torch.nn.functional as F

from polykernels import _extension
from polykernels.reference import quant

pytestmark = pytest.mark.skipif(_extension.unavailable_reason() is not None,
                                reason=f"{_extension.unavailable_reason()}")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FLOOR = {torch.float32: 2e-6, torch.bfloat16: 4e-3, torch.float16: 5e-4}  # x max|ref|
PAD = 3


def C():
    return torch.ops.polykernels_C


def dequant64(qweight, scales, zeros, bits, group_size):
    codes = quant.unpack_int4(qweight) if bits == 4 else qweight
    n, k = codes.shape
    gs = k if group_size == -1 else group_size
    z = zeros.double() if zeros is not None else torch.full(scales.shape, 2.0 ** (bits - 1), dtype=torch.float64)
    w = (codes.double().reshape(n, k // gs, gs) - z[..., None]) * scales.double()[..., None]
    return w.reshape(n, k)


def run(x, qw, s, z, bits, gs, bias):
    n = qw.shape[0]
    full = torch.full((*x.shape[:-1], n + PAD), float("nan"), dtype=x.dtype)
    out = full[..., :n]
    C().quantized_linear_out(x, qw, s, z, bits, gs, bias, out)
    fresh = C().quantized_linear(x, qw, s, z, bits, gs, bias)
    assert torch.equal(fresh, out), "quantized_linear and quantized_linear_out disagree"
    assert torch.isnan(full[..., n:]).all(), "wrote outside the output rows"
    return out


def check(name, x, qw, s, z, bits, gs, bias, out):
    w64 = dequant64(qw, s, z, bits, gs)
    r = F.linear(x.double(), w64, None if bias is None else bias.double())
    wd = quant.dequantize_weight(qw, s, z, bits, gs if gs != -1 else x.shape[-1], x.dtype)
    base = F.linear(x, wd, bias)
    o = out.double()
    nan = torch.isnan(o)
    assert not nan.any(), f"{name}: {int(nan.sum())} NaN / unwritten, first at {nan.nonzero()[0].tolist()}"
    err = (o - r).abs()
    base_err = (base.double() - r).abs().max().item()
    bound = 2 * base_err + FLOOR[x.dtype] * max(1.0, r.abs().max().item())
    worst = err.max().item()
    if worst > bound:
        idx = (err == worst).nonzero()[0].tolist()
        raise AssertionError(f"{name}: max err {worst:.3g} at {idx} (got {o[tuple(idx)].item():.6g}, want "
                             f"{r[tuple(idx)].item():.6g}); bound {bound:.3g} = 2 x torch {base_err:.3g} + floor")


def make(n, k, bits, gs, symmetric, dtype, scale_dtype=None):
    w = torch.randn(n, k) * 0.1
    qw, s, z = quant.quantize_weight(w.to(dtype), bits, gs, symmetric=symmetric)
    if scale_dtype is not None:
        s = s.to(scale_dtype)
        z = None if z is None else z.to(scale_dtype)
    return qw, s, z


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_quantized_linear(isa, bits, dtype):
    """rows 1 / 7 / 16 (GEMV) and 17 / 65 (dequant + GEMM) x group sizes x zeros on/off."""
    n = 37  # odd: GEMV blocks of 16 and GEMM panels of 16/32 both get a ragged edge
    for k, gs in [(256, 32), (192, 64), (256, 128), (96, -1), (160, 32)]:
        for symmetric in (True, False):
            qw, s, z = make(n, k, bits, gs, symmetric, dtype)
            bias = torch.randn(n).to(dtype) if symmetric else None
            for rows in (1, 7, 16, 17, 65):
                x = torch.randn(rows, k).to(dtype)
                out = run(x, qw, s, z, bits, gs, bias)
                check(f"{isa} int{bits} {dtype} rows={rows} K={k} gs={gs} zeros={not symmetric} "
                      f"path={C().quantized_linear_path(rows, bits, dtype, k if gs == -1 else gs)}", x, qw, s, z, bits, gs, bias, out)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_linear_layouts(isa, bits):
    """Batched and strided x, fp32 scales/zeros with bf16 x, strided scales, padded qweight rows,
    a group tail shorter than one vector (gs 20 / 10)."""
    k, n = 160, 29
    qw, s, z = make(n, k, bits, 32, False, torch.bfloat16, torch.float32)
    x = torch.randn(2, 3, 2 * k).to(torch.bfloat16)[..., ::2]
    check(f"{isa} int{bits} batched strided x", x, qw, s, z, bits, 32, None, run(x, qw, s, z, bits, 32, None))
    # qweight rows padded (row stride > bytes per row); scales / zeros as transposed views
    qpad = torch.zeros(n, qw.shape[1] + 8, dtype=torch.uint8)
    qpad[:, :qw.shape[1]] = qw
    qv = qpad[:, :qw.shape[1]]
    st, zt = s.t().contiguous().t(), z.t().contiguous().t()
    for rows in (3, 20):
        x = torch.randn(rows, k).to(torch.bfloat16)
        check(f"{isa} int{bits} strided qweight/scales rows={rows}", x, qv, st, zt, bits, 32, None,
              run(x, qv, st, zt, bits, 32, None))
    for gs in (20, 10):
        qw2, s2, z2 = make(n, k, bits, gs, True, torch.float32)
        x = torch.randn(5, k)
        check(f"{isa} int{bits} gs={gs}", x, qw2, s2, z2, bits, gs, None, run(x, qw2, s2, z2, bits, gs, None))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantized_linear_offset_activations(isa, bits, dtype):
    """Activations with a large common offset (post-activation-like, all positive): the GEMV
    sums x * u per group and subtracts z * s * sum(x), two terms that nearly cancel here."""
    k, n = 512, 21
    qw, s, z = make(n, k, bits, 64, False, dtype)
    for rows in (1, 3):
        x = (8.0 + 0.05 * torch.randn(rows, k)).to(dtype)
        check(f"{isa} int{bits} {dtype} offset x rows={rows}", x, qw, s, z, bits, 64, None,
              run(x, qw, s, z, bits, 64, None))


def test_path_choice(isa):
    """Which kernel runs, so the matrix above provably covers each one on its ISA."""
    P = C().quantized_linear_path
    assert P(17, 4, torch.float32, 128) == "dequant_gemm"
    assert P(17, 4, torch.bfloat16, 128) == ("dequant_bf16_gemm" if isa == "avx512_bf16" else "dequant_gemm")
    want = {"scalar": "gemv_scalar", "avx2": "gemv_avx2", "avx512": "gemv_avx512", "avx512_bf16": "gemv_avx512"}[isa]
    assert P(16, 8, torch.bfloat16, 128) == want
    assert P(1, 4, torch.float32, 128) == want
    assert P(1, 4, torch.bfloat16, 32) == want  # group not a multiple of 64
    assert P(1, 4, torch.bfloat16, 64) == ("gemv_int4_bf16" if isa == "avx512_bf16" else want)


@pytest.mark.parametrize("rows", [1, 7, 40])
def test_threads_identical(isa, rows):
    """The GEMV splits over N only and the GEMM's tiles are independent: 1 vs 2 threads bitwise equal."""
    qw, s, z = make(75, 256, 4, 64, False, torch.bfloat16)
    x = torch.randn(rows, 256).to(torch.bfloat16)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = C().quantized_linear(x, qw, s, z, 4, 64, None)
        torch.set_num_threads(2)
        two = C().quantized_linear(x, qw, s, z, 4, 64, None)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(one, two), f"1 vs 2 threads differ: max {(one.float() - two.float()).abs().max().item()}"


def test_bad_arguments():
    _extension.load()
    qw, s, z = make(8, 64, 4, 32, True, torch.float32)
    x = torch.randn(2, 64)
    with pytest.raises(RuntimeError, match="'bits'"):
        C().quantized_linear(x, qw, s, z, 3, 32, None)
    with pytest.raises(RuntimeError, match="'group_size'"):
        C().quantized_linear(x, qw, s, z, 4, 48, None)
    with pytest.raises(RuntimeError, match="'scales'"):
        C().quantized_linear(x, qw, s[:, :1], z, 4, 32, None)
    with pytest.raises(RuntimeError, match="'qweight'"):
        C().quantized_linear(x, qw, s, z, 8, 32, None)


def test_dispatch_picks_cpp():
    """Registered as impl "cpp" on the cpu backend: pk.quantized_linear runs it by default."""
    import polykernels as pk
    qw, s, z = make(24, 128, 4, 64, False, torch.bfloat16)
    x = torch.randn(3, 128).to(torch.bfloat16)
    assert "chose cpp@cpu" in str(pk.explain("quantized_linear", x, qw, s, z, bits=4, group_size=64))
    assert torch.equal(pk.quantized_linear(x, qw, s, z, bits=4, group_size=64),
                       C().quantized_linear(x, qw, s, z, 4, 64, None))
