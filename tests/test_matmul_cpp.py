"""C++ CPU GEMM with fused epilogue (matmul / linear) against the fp64 reference, on every
ISA path (scalar, AVX2, AVX-512, AVX512-BF16).

Tolerance rule (docs/testing.md): the kernel's error against the fp64 reference is at most 2x
the error of the same computation done by torch in the input dtype (matmul, + bias, then the
activation, each in that dtype), plus a small absolute floor scaled by the output's magnitude
(table below). Outputs are written through the `*_out` ops into a NaN-poisoned buffer whose
rows are padded: every element must be written, the padding must stay NaN.
"""
import pytest
import torch
import torch.nn.functional as F

from polykernels import _extension
from polykernels import reference as ref

pytestmark = pytest.mark.skipif(_extension.unavailable_reason() is not None,
                                reason=f"{_extension.unavailable_reason()}")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FLOOR = {torch.float32: 2e-6, torch.bfloat16: 4e-3, torch.float16: 5e-4}  # x max|ref|
ACTS = [None, "relu", "gelu", "gelu_tanh", "silu"]
PAD = 3  # extra NaN columns after each output row


def C():
    return torch.ops.polykernels_C


def torch_act(y, act):
    if act is None:
        return y
    if act == "relu":
        return F.relu(y)
    if act == "gelu":
        return F.gelu(y)
    if act == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    return F.silu(y)


def poisoned(shape, dtype):
    """NaN buffer with PAD extra columns; returns (full buffer, the [..., N] view to write)."""
    full = torch.full((*shape[:-1], shape[-1] + PAD), float("nan"), dtype=dtype)
    return full, full[..., :shape[-1]]


def check(name, out, full, ref64, base):
    """out vs fp64 ref within 2x the torch same-dtype error `base` + floor; padding untouched."""
    assert torch.isnan(full[..., out.shape[-1]:]).all(), f"{name}: wrote outside the output rows"
    o, r = out.double(), ref64.double()
    nan = torch.isnan(o)
    assert not nan.any(), f"{name}: {int(nan.sum())} elements not written / NaN, first at {nan.nonzero()[0].tolist()}"
    err = (o - r).abs()
    base_err = (base.double() - r).abs().max().item()
    bound = 2 * base_err + FLOOR[out.dtype] * max(1.0, r.abs().max().item())
    worst = err.max().item()
    if worst > bound:
        idx = (err == worst).nonzero()[0].tolist()
        raise AssertionError(f"{name}: max err {worst:.3g} at {idx} (got {o[tuple(idx)].item():.6g}, "
                             f"want {r[tuple(idx)].item():.6g}); bound {bound:.3g} = 2 x torch {base_err:.3g} + floor")


def rand(*shape, dtype):
    return torch.randn(*shape, dtype=torch.float32).to(dtype)


# (batch dims, M, K, N): size 1, M 7/65 (not multiples of the 6/8-row tiles), odd K (bf16
# pairs get a zero high half), N odd and spanning several 16/32-column panels.
SHAPES = [((), 1, 1, 1), ((), 7, 33, 5), ((2,), 65, 70, 31), ((2, 3), 7, 129, 67), ((), 16, 64, 96)]


def strided_operands(m, k, n, dtype):
    """{name: (a, b)}: transposed / sliced a and b, batches that cannot be merged."""
    return {
        "a^T": (rand(k, m, dtype=dtype).t(), rand(k, n, dtype=dtype)),
        "b^T": (rand(m, k, dtype=dtype), rand(n, k, dtype=dtype).t()),
        "both sliced": (rand(m, 2 * k, dtype=dtype)[:, ::2], rand(k, 3 * n, dtype=dtype)[:, 1::3]),
        "batch permuted": (rand(m, 3, k, dtype=dtype).permute(1, 0, 2), rand(k, n, dtype=dtype)),
        "batch sliced": (rand(4, m, k, dtype=dtype)[::2], rand(n, k, dtype=dtype).t()),
    }


def run_matmul(a, b, bias, act, out_dtype):
    shape = (*a.shape[:-1], b.shape[1])
    full, out = poisoned(shape, out_dtype)
    C().matmul_out(a, b, bias, act, out)
    fresh = C().matmul(a, b, bias, act, out_dtype)
    assert torch.equal(fresh, out), "matmul and matmul_out disagree"
    return out, full


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_shapes_epilogues(isa, dtype):
    for batch, m, k, n in SHAPES:
        a = rand(*batch, m, k, dtype=dtype)
        b = rand(k, n, dtype=dtype)
        for act in ACTS:
            for with_bias in (False, True):
                bias = rand(n, dtype=dtype) if with_bias else None
                out, full = run_matmul(a, b, bias, act, dtype)
                r64 = ref.matmul(a.double(), b.double(), None if bias is None else bias.double(), act, torch.float64)
                y = torch.matmul(a, b)
                base = torch_act(y + bias if bias is not None else y, act)
                check(f"{isa} {dtype} {batch}x{m}x{k}x{n} act={act} bias={with_bias}", out, full, r64, base)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_strided_operands(isa, dtype):
    """Transposed / sliced a and b, a batch that cannot be merged, strided bias."""
    m, k, n = 13, 45, 37
    cases = strided_operands(m, k, n, dtype)
    bias = rand(2 * n, dtype=dtype)[::2]
    for name, (a, b) in cases.items():
        out, full = run_matmul(a, b, bias, "gelu", dtype)
        r64 = ref.matmul(a.double(), b.double(), bias.double(), "gelu", torch.float64)
        check(f"{isa} {dtype} {name}", out, full, r64, F.gelu(torch.matmul(a, b) + bias))


@pytest.mark.parametrize("in_dtype,out_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16),
                                                (torch.float16, torch.float32)])
def test_matmul_out_dtype(isa, in_dtype, out_dtype):
    a, b, bias = rand(2, 9, 50, dtype=in_dtype), rand(50, 41, dtype=in_dtype), rand(41, dtype=in_dtype)
    out, full = run_matmul(a, b, bias, "silu", out_dtype)
    r64 = ref.matmul(a.double(), b.double(), bias.double(), "silu", torch.float64)
    # Baseline: torch in the input dtype, cast to the output dtype.
    base = F.silu(torch.matmul(a, b) + bias).to(out_dtype)
    check(f"{isa} {in_dtype}->{out_dtype}", out, full, r64, base)


def test_matmul_degenerate(isa):
    """K = 0 gives act(bias); M = 0 / N = 0 give empty outputs."""
    bias = rand(5, dtype=torch.float32)
    out = C().matmul(torch.empty(3, 0), torch.empty(0, 5), bias, "relu", None)
    torch.testing.assert_close(out, F.relu(bias).expand(3, 5), rtol=0, atol=0)
    assert C().matmul(torch.empty(0, 4), torch.randn(4, 5), None, None, None).shape == (0, 5)
    assert C().matmul(torch.randn(3, 4), torch.empty(4, 0), None, None, None).shape == (3, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear(isa, dtype):
    """F.linear semantics: x [..., K], weight [N, K] (as stored, or a transposed view)."""
    for xs, n in [((1, 1), 1), ((7, 33), 19), ((2, 3, 70), 65), ((65, 40), 33)]:
        k = xs[-1]
        x = rand(*xs, dtype=dtype)
        for wname, w in [("w", rand(n, k, dtype=dtype)), ("w view", rand(k, n, dtype=dtype).t())]:
            for act in ("gelu", None):
                bias = rand(n, dtype=dtype)
                full, out = poisoned((*xs[:-1], n), dtype)
                C().linear_out(x, w, bias, act, out)
                assert torch.equal(C().linear(x, w, bias, act), out), "linear and linear_out disagree"
                r64 = ref.linear(x.double(), w.double(), bias.double(), act)
                check(f"{isa} {dtype} linear {xs} N={n} {wname} act={act}", out, full, r64,
                      torch_act(F.linear(x, w, bias), act))


def test_linear_noncontiguous_x(isa):
    x = rand(3, 10, 2 * 48, dtype=torch.bfloat16)[:, ::2, ::2]  # rows cannot be merged by a view
    w = rand(37, 48, dtype=torch.bfloat16)
    full, out = poisoned((3, 5, 37), torch.bfloat16)
    C().linear_out(x, w, None, "relu", out)
    check(f"{isa} linear strided x", out, full, ref.linear(x.double(), w.double(), None, "relu"),
          F.relu(F.linear(x, w)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_threads_identical(isa, dtype):
    """Each output element comes from exactly one micro-kernel call: 1 and 2 threads agree bitwise."""
    a, b, bias = rand(67, 130, dtype=dtype), rand(130, 75, dtype=dtype), rand(75, dtype=dtype)
    prev = torch.get_num_threads()
    x, w = rand(3, 130, dtype=dtype), rand(75, 130, dtype=dtype)  # few-rows path
    try:
        torch.set_num_threads(1)
        one = C().matmul(a, b, bias, "gelu_tanh", None)
        one_small = C().linear(x, w, bias, "gelu_tanh")
        torch.set_num_threads(2)
        two = C().matmul(a, b, bias, "gelu_tanh", None)
        two_small = C().linear(x, w, bias, "gelu_tanh")
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(one, two), f"1 vs 2 threads differ: max {(one.float() - two.float()).abs().max().item()}"
    assert torch.equal(one_small, two_small), "few-rows path: 1 vs 2 threads differ"


def test_kernel_choice(isa):
    """bf16 x bf16 uses vdpbf16ps only on the AVX512-BF16 path; everything else widens to fp32."""
    bf, f32 = torch.empty(1, 1, dtype=torch.bfloat16), torch.empty(1, 1)
    want_bf16 = {"scalar": "scalar_fp32", "avx2": "avx2_fp32", "avx512": "avx512_fp32", "avx512_bf16": "avx512_bf16"}
    assert C().gemm_kernel_name(bf, bf) == want_bf16[isa]
    assert C().gemm_kernel_name(f32, f32) == want_bf16[isa].replace("avx512_bf16", "avx512_fp32")


def test_activation_accuracy(isa):
    """The fused activations (own vectorisable exp/erfc) track torch's fp64 ones across the range."""
    x = torch.linspace(-30, 30, 4001, dtype=torch.float32)[:, None]
    eye = torch.ones(1, 1)
    for act in ACTS[1:]:
        got = C().matmul(x, eye, None, act, None).double()
        want = ref.matmul(x.double(), eye.double(), None, act, torch.float64)
        err = ((got - want).abs() / want.abs().clamp_min(1e-3)).max().item()
        assert err < 2e-6, f"{isa} {act}: max relative error {err:.3g}"


def test_bad_arguments():
    _extension.load()
    with pytest.raises(RuntimeError, match="activation"):
        C().matmul(torch.randn(2, 3), torch.randn(3, 4), None, "tanh", None)
    with pytest.raises(RuntimeError, match="'b'"):
        C().matmul(torch.randn(2, 3), torch.randn(4, 4), None, None, None)
    with pytest.raises(RuntimeError, match="'bias'"):
        C().linear(torch.randn(2, 3), torch.randn(4, 3), torch.randn(3), None)


def test_dispatch_picks_cpp():
    """Registered as impl "cpp" on the cpu backend: pk.matmul / pk.linear run it by default."""
    import polykernels as pk
    a, w, bias = rand(9, 40, dtype=torch.bfloat16), rand(24, 40, dtype=torch.bfloat16), rand(24, dtype=torch.bfloat16)
    assert "chose cpp@cpu" in str(pk.explain("linear", a, w, bias, activation="gelu"))
    assert torch.equal(pk.linear(a, w, bias, activation="gelu"), C().linear(a, w, bias, "gelu"))
    assert "chose cpp@cpu" in str(pk.explain("matmul", a, w.t()))
    assert torch.equal(pk.matmul(a, w.t(), bias=bias, out_dtype=torch.float32),
                       C().matmul(a, w.t(), bias, None, torch.float32))


def test_nan_propagates(isa):
    """A NaN in a row of a reaches that output row through every epilogue (no clamping it away)."""
    a, b = rand(9, 20, dtype=torch.float32), rand(20, 40, dtype=torch.float32)
    a[4, 7] = float("nan")
    for act in ACTS:
        out = C().matmul(a, b, None, act, None)
        assert torch.isnan(out[4]).all(), f"{isa} act={act}: NaN lost in row 4"
        assert not torch.isnan(out[torch.arange(9) != 4]).any(), f"{isa} act={act}: NaN leaked to other rows"


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_few_rows(isa, dtype):
    """<= 4 rows with K-contiguous weights take the unpacked dot-product path (AVX2 and up):
    K below / between / above the 16-, 32- and 64-wide steps, masked tails, batched x."""
    for xs in [(1,), (2,), (1, 3), (2, 2), (4,)]:
        for k in (1, 15, 33, 64, 100, 129):
            n = 23
            x = rand(*xs, k, dtype=dtype)
            w = rand(n, k, dtype=dtype)
            bias = rand(n, dtype=dtype)
            for act in ("silu", None):
                full, out = poisoned((*xs, n), dtype)
                C().linear_out(x, w, bias, act, out)
                r64 = ref.linear(x.double(), w.double(), bias.double(), act)
                check(f"{isa} {dtype} few rows x{xs} K={k} act={act}", out, full, r64,
                      torch_act(F.linear(x, w, bias), act))


# -- grouped_matmul (MoE experts): the GEMM once per non-empty group ---------------------------
def _grouped_ref(x, w, sizes):
    return ref.grouped_matmul(x.double(), w.double(), sizes)


def _grouped_torch(x, w, sizes):
    """The same products by torch in the input dtype: the tolerance's baseline."""
    starts = [0] + torch.cumsum(sizes, 0).tolist()
    return torch.cat([x[starts[e]:starts[e + 1]] @ w[e] for e in range(len(sizes))])


@pytest.fixture
def grouped(monkeypatch):
    """The registered cpp impl with its output NaN-poisoned (rows it fails to write stay NaN)."""
    from polykernels.cpu import register_matmul as R
    monkeypatch.setattr(R, "_empty", lambda shape, dtype: torch.full(shape, float("nan"), dtype=dtype))
    return R.grouped_matmul


@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_matmul(isa, grouped, dtype):
    # empty groups at both ends and inside, a group of one row, odd K and N, a group larger
    # than a GEMM tile; weights stored [E, N, K] and passed transposed (strided B)
    sizes = torch.tensor([0, 37, 1, 0, 70, 5, 0])
    x = rand(int(sizes.sum()), 67, dtype=dtype)
    w = rand(len(sizes), 45, 67, dtype=dtype).transpose(1, 2)
    out = grouped(x, w, sizes)
    check(f"grouped {dtype}", out, out, _grouped_ref(x, w, sizes), _grouped_torch(x, w, sizes))


def test_grouped_matmul_noncontiguous_x_int32_sizes(isa, grouped):
    sizes = torch.tensor([3, 0, 9], dtype=torch.int32)
    x = rand(12, 80, dtype=torch.float32)[:, ::2]
    w = rand(3, 40, 33, dtype=torch.float32)
    out = grouped(x, w, sizes)
    check("grouped strided x", out, out, _grouped_ref(x, w, sizes), _grouped_torch(x, w, sizes))


def test_grouped_matmul_threads_identical(grouped):
    from _threads import at_thread_counts
    sizes = torch.tensor([17, 0, 40, 3])
    x, w = rand(60, 96, dtype=torch.bfloat16), rand(4, 96, 130, dtype=torch.bfloat16)
    one, two = at_thread_counts(lambda: grouped(x, w, sizes))
    assert torch.equal(one, two)


@pytest.mark.parametrize("sizes", [[5, 4], [5, 6], [-1, 11]])
def test_grouped_matmul_bad_sizes_raise(grouped, sizes):
    """Sizes not summing to the rows (or negative) are refused by the impl itself, before any
    work: it also runs where the public checks cannot read them (compiled graphs)."""
    from polykernels.dispatch import InvalidInputError
    x, w = rand(10, 8, dtype=torch.float32), rand(2, 8, 4, dtype=torch.float32)
    with pytest.raises(InvalidInputError, match="group_sizes"):
        grouped(x, w, torch.tensor(sizes))


def test_grouped_matmul_dispatch_eligible():
    import polykernels as pk
    x, w, sizes = torch.randn(6, 8), torch.randn(2, 8, 4), torch.tensor([2, 4])
    explained = str(pk.explain("grouped_matmul", x, w, sizes))
    assert "cpp@cpu" in explained and "refused cpp" not in explained
    with pk.use(grouped_matmul="cpp"):
        torch.testing.assert_close(pk.grouped_matmul(x, w, sizes), _grouped_torch(x, w, sizes))


# -- scaled_matmul (int8 / fp8) through the bf16 GEMM ------------------------------------------
def _scaled_impls():
    from polykernels.cpu import register_matmul as R
    from polykernels.torch_provider import matmul as T
    return R.scaled_matmul, T.scaled_matmul


@pytest.mark.parametrize("k", [1, 37, 1024, 2500])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_scaled_matmul_int8_exact(isa, k, out_dtype):
    """int8: the accumulation is exact (K in chunks of 1024, each exact in fp32), so the result
    equals torch._int_mm's int32 product scaled in the same fp32 order, bit for bit, also with
    a sum past 2**24, where fp32 accumulation would round."""
    cpp, torch_impl = _scaled_impls()
    m, n = 9, 13
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8).t()     # column-major b, strided
    if k == 2500:   # row 0 . col 0: 1500 * 127**2 passes 2**24, then 1000 odd +1 terms that
        # an fp32 running sum past 2**24 (spacing 2) would round away
        a[0, :1500], b[:1500, 0], a[0, 1500:], b[1500:, 0] = 127, 127, 1, 1
    sa, sb = torch.rand(m, 1) + 0.5, torch.rand(n) + 0.5
    bias = torch.randn(n)
    got = cpp(a, b, sa, sb, bias, out_dtype)
    assert torch.equal(got, torch_impl(a, b, sa, sb, bias, out_dtype))
    if k == 2500:
        exact = (1500 * 127 ** 2 + 1000) * sa[0, 0].item() * sb[0].item() + bias[0].item()
        assert got[0, 0].item() == pytest.approx(exact, rel=1e-6 if out_dtype == torch.float32 else 8e-3)


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e4m3fnuz])
@pytest.mark.parametrize("scales", ["tensor", "row/col"])
def test_scaled_matmul_fp8(isa, fp8, scales):
    """fp8: fp32 accumulation like torch._scaled_mm; within 2x its error against fp64 + floor."""
    cpp, torch_impl = _scaled_impls()
    m, k, n = 17, 300, 29
    a, b = torch.randn(m, k).to(fp8), torch.randn(k, n).to(fp8)
    sa, sb = (torch.tensor(0.7), torch.tensor(1.3)) if scales == "tensor" else (torch.rand(m) + 0.5, torch.rand(n) + 0.5)
    want = ref.scaled_matmul(a, b, sa, sb, None, torch.float32)
    got = cpp(a, b, sa, sb, None, torch.float32)
    check(f"scaled fp8 {fp8}", got, got, want, torch_impl(a, b, sa, sb, None, torch.float32))


def test_scaled_matmul_dispatch_eligible():
    import polykernels as pk
    a, b = torch.randint(-5, 5, (4, 8), dtype=torch.int8), torch.randint(-5, 5, (8, 3), dtype=torch.int8)
    sa, sb = torch.tensor(1.0), torch.tensor(1.0)
    explained = str(pk.explain("scaled_matmul", a, b, sa, sb))
    assert "cpp@cpu" in explained and "refused cpp" not in explained
    with pk.use(scaled_matmul="cpp"):
        out = pk.scaled_matmul(a, b, sa, sb, out_dtype=torch.float32)
    assert torch.equal(out, (a.int() @ b.int()).float())
