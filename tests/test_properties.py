"""Property-based checks (hypothesis, derandomised): every impl that runs on the CPU against the
op's formulas evaluated in float64, over generated inputs (awkward sizes, GQA ratios, masks,
windows, softcap, ALiBi, strided views, every supported dtype).

The oracle is the reference evaluated on float64 copies of the inputs (the reference itself is
checked against independently written float64 formulas in tests/test_reference_*.py). The
tolerance is relative to torch's own error in the same dtype: the reference run in the input's
dtype (fp32 math, one rounding to the output dtype) against the oracle, times a small factor,
with a floor of a few units of the dtype's precision.

Profiles: ``ci`` (default, a few hundred cases per op, seconds) and ``thorough`` (thousands:
``POLYKERNELS_FUZZ=thorough python -m pytest tests/test_properties.py``). CI runs every test
marker, so the long profile is chosen by this variable rather than ``-m slow``.
Triton is not fuzzed here: under the interpreter it is too slow for thousands of cases; its
own tests cover it on the same kinds of inputs.
"""
from __future__ import annotations

import os

import pytest
import torch

# A test extra (pyproject [test], installed by README's test command, so CI always has it).
# The GPU machine runs `pytest -m gpu` without network or extras: there this CPU-only module
# is skipped rather than breaking the collection of the GPU tests.
hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install '.[test]')")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from polykernels.dispatch import registry  # noqa: E402

settings.register_profile("ci", max_examples=120, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow], database=None)
settings.register_profile("thorough", max_examples=3000, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow], database=None)
settings.load_profile(os.environ.get("POLYKERNELS_FUZZ", "ci"))

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# a few units of each dtype's precision (relative to the output's magnitude)
FLOOR = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def cpu_impls(op: str, args: tuple) -> list:
    """The impls of op that run on the CPU for these args (not Triton: see the module doc)."""
    registry.ensure_loaded()
    return [i for i in registry.impls[op]
            if i.backend in ("cpu", "torch", "reference") and i.supports(*args) is None]


def f64(args: tuple) -> tuple:
    return tuple(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point()
                 and a.dtype not in (torch.float8_e4m3fn, torch.float8_e4m3fnuz) else a
                 for a in args)


def reference(op: str, args: tuple):
    registry.ensure_loaded()
    return next(i for i in registry.impls[op] if i.backend == "reference").fn(*args)


def check_close(got: torch.Tensor, want: torch.Tensor, base_err: float, dtype, label: str):
    """got vs the float64 oracle: same non-finite positions, finite values within the tolerance."""
    got, want = got.double(), want.double()
    assert got.shape == want.shape, f"{label}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    inf_want = ~torch.isfinite(want)
    assert torch.equal(~torch.isfinite(got), inf_want), f"{label}: non-finite positions differ"
    assert torch.equal(got[inf_want], want[inf_want]) or got[inf_want].isnan().all(), label
    fin = torch.isfinite(want)
    if not fin.any():
        return
    scale = want[fin].abs().max().item() + 1.0
    tol = max(4.0 * base_err, FLOOR[dtype] * scale)
    err = (got[fin] - want[fin]).abs().max().item()
    assert err <= tol, f"{label}: max error {err:.3g} > tolerance {tol:.3g} (torch's own {base_err:.3g})"


def check_op(op: str, args: tuple, outputs=lambda r: r if isinstance(r, tuple) else (r,),
             dtype: torch.dtype | None = None):
    """dtype: the one that sets the tolerance floor (default: the first floating argument's)."""
    dtype = dtype or next(a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
    want = outputs(reference(op, f64(args)))
    same_dtype = outputs(reference(op, args))
    impls = cpu_impls(op, args)
    assert any(i.backend == "reference" for i in impls)
    for impl in impls:
        got = outputs(impl.fn(*args))
        for i, (g, w, s) in enumerate(zip(got, want, same_dtype)):
            fin = torch.isfinite(w)
            base = (s.double() - w.double())[fin].abs().max().item() if fin.any() else 0.0
            check_close(g, w, base, dtype, f"{op} {impl.label} output {i} ({dtype})")


# -- strategies ---------------------------------------------------------------------------------
def _tensor(shape, dtype, strided: bool):
    """randn of `shape` in dtype; strided: a view into a wider tensor (non-standard strides)."""
    if not strided or not shape:
        return torch.randn(*shape).to(dtype)
    wide = torch.randn(*shape[:-1], shape[-1] + 3).to(dtype)
    return wide[..., 1:1 + shape[-1]]


windows = st.one_of(st.just((-1, -1)), st.tuples(st.integers(-1, 9), st.integers(-1, 4)))


@st.composite
def attention_cases(draw):
    b, sq, sk = draw(st.integers(1, 2)), draw(st.integers(1, 19)), draw(st.integers(1, 19))
    hk, group = draw(st.integers(1, 2)), draw(st.sampled_from([1, 2, 3]))
    d = draw(st.sampled_from([8, 16, 24, 40, 64]))
    dtype, strided = draw(st.sampled_from(DTYPES)), draw(st.booleans())
    q = _tensor((b, sq, hk * group, d), dtype, strided)
    k, v = _tensor((b, sk, hk, d), dtype, strided), _tensor((b, sk, hk, d), dtype, strided)
    wl, wr = draw(windows)
    alibi = torch.rand(hk * group) if draw(st.booleans()) else None
    return (q, k, v, draw(st.booleans()), draw(st.floats(0.05, 1.0)), wl, wr,
            draw(st.sampled_from([0.0, 5.0])), alibi)


@given(attention_cases())
def test_attention(args):
    check_op("attention", args)


@st.composite
def varlen_cases(draw):
    n = draw(st.integers(1, 4))
    lq = draw(st.lists(st.integers(0, 11), min_size=n, max_size=n))
    lk = draw(st.lists(st.integers(1, 11), min_size=n, max_size=n))
    hk, group = draw(st.integers(1, 2)), draw(st.sampled_from([1, 2, 4]))
    d, dtype = draw(st.sampled_from([8, 24, 64])), draw(st.sampled_from(DTYPES))
    cu = lambda lens: torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)  # noqa: E731
    q = _tensor((sum(lq), hk * group, d), dtype, draw(st.booleans()))
    k, v = _tensor((sum(lk), hk, d), dtype, False), _tensor((sum(lk), hk, d), dtype, False)
    wl, wr = draw(windows)
    return (q, k, v, cu(lq), cu(lk), max(lq), max(lk), draw(st.booleans()),
            draw(st.floats(0.05, 1.0)), wl, wr, draw(st.sampled_from([0.0, 5.0])), None)


@given(varlen_cases())
def test_varlen_attention(args):
    check_op("varlen_attention", args)


@st.composite
def paged_cases(draw):
    seqs, q_len = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    bs, hk, group = draw(st.sampled_from([1, 3, 4, 16])), draw(st.integers(1, 2)), draw(st.sampled_from([1, 4]))
    d, dtype = draw(st.sampled_from([8, 40, 64])), draw(st.sampled_from(DTYPES))
    # seq_len 0 is a padded slot (rows give 0 / -inf); otherwise it holds the q_len new tokens
    lens = draw(st.lists(st.one_of(st.integers(q_len, 30), st.just(0)), min_size=seqs, max_size=seqs))
    per_seq = max(1, max((n + bs - 1) // bs for n in lens))
    nb = seqs * per_seq + 2
    fp8 = draw(st.booleans()) and dtype != torch.float16
    kc, vc = torch.randn(nb, bs, hk, d), torch.randn(nb, bs, hk, d)
    scales = (draw(st.sampled_from([0.5, 1.0, 2.0])), draw(st.sampled_from([0.5, 1.0])))
    kv_scales = None
    if fp8 and draw(st.booleans()):   # per-KV-head scales [2, hk] (row 0 keys, row 1 values)
        kv_scales = torch.rand(2, hk) * 2 + 0.1
        kc, vc = kc / kv_scales[0].view(1, 1, hk, 1), vc / kv_scales[1].view(1, 1, hk, 1)
    if fp8:
        kc, vc = (kc / scales[0]).to(torch.float8_e4m3fn), (vc / scales[1]).to(torch.float8_e4m3fn)
    else:
        kc, vc, scales = kc.to(dtype), vc.to(dtype), (1.0, 1.0)
    table = torch.randperm(nb)[: seqs * per_seq].reshape(seqs, per_seq).to(torch.int32)  # shuffled
    q = torch.randn(seqs, q_len, hk * group, d).to(dtype)
    wl, wr = draw(windows)
    return (q, kc, vc, table, torch.tensor(lens, dtype=torch.int32), draw(st.floats(0.05, 1.0)),
            wl, wr, draw(st.sampled_from([0.0, 5.0])), None, *scales, kv_scales)


@given(paged_cases())
def test_paged_attention(args):
    check_op("paged_attention", args)


@st.composite
def varlen_paged_cases(draw):
    """The uniform paged case's cache and table, with packed queries: any q_len per sequence
    (0 included; up to 20, past one row tile) and padded slots."""
    q, kc, vc, table, _, scale, wl, wr, softcap, _, k_scale, v_scale, kv_scales = draw(paged_cases())
    seqs, hq, d, cap = q.shape[0], q.shape[2], q.shape[3], table.shape[1] * kc.shape[1]
    lq = draw(st.lists(st.integers(0, min(20, cap)), min_size=seqs, max_size=seqs))
    lens = [draw(st.one_of(st.integers(n, cap), st.just(0))) for n in lq]
    cu = torch.tensor([0] + torch.tensor(lq).cumsum(0).tolist(), dtype=torch.int32)
    q = _tensor((sum(lq), hq, d), q.dtype, draw(st.booleans()))
    alibi = torch.rand(seqs, hq) if draw(st.booleans()) else None
    return (q, kc, vc, table, torch.tensor(lens, dtype=torch.int32), cu, max(lq), scale, wl, wr,
            softcap, alibi, k_scale, v_scale, kv_scales)


@given(varlen_paged_cases())
def test_varlen_paged_attention(args):
    check_op("varlen_paged_attention", args)


@st.composite
def merge_cases(draw):
    b, s, h, d = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 20))
    dtype = draw(st.sampled_from(DTYPES))
    out_a, out_b = torch.randn(b, s, h, d).to(dtype), torch.randn(b, s, h, d).to(dtype)
    lse_a, lse_b = torch.randn(b, h, s) * 3, torch.randn(b, h, s) * 3
    for lse in (lse_a, lse_b):   # empty partial states (lse -inf or +inf), some on both sides
        empty = draw(st.sampled_from([float("-inf"), float("inf")]))
        lse[torch.rand(b, h, s) < draw(st.sampled_from([0.0, 0.3]))] = empty
    return out_a, lse_a, out_b, lse_b


@given(merge_cases())
def test_merge_attention_states(args):
    check_op("merge_attention_states", args)


@st.composite
def matmul_cases(draw):
    m, k, n = draw(st.integers(1, 40)), draw(st.integers(1, 40)), draw(st.integers(1, 40))
    dtype = draw(st.sampled_from(DTYPES))
    lead = draw(st.sampled_from([(), (2,)]))      # a plain or a batched [..., M, K] input
    a = _tensor(lead + (m, k), dtype, draw(st.booleans()))
    b = torch.randn(n, k).to(dtype).t() if draw(st.booleans()) else torch.randn(k, n).to(dtype)
    bias = torch.randn(n).to(dtype) if draw(st.booleans()) else None
    act = draw(st.sampled_from([None, "relu", "gelu", "gelu_tanh", "silu"]))
    return a, b, bias, act, None


@given(matmul_cases())
def test_matmul(args):
    check_op("matmul", args)


@st.composite
def write_cases(draw):
    t, hk, d = draw(st.integers(0, 12)), draw(st.integers(1, 3)), draw(st.integers(1, 24))
    nb, bs = draw(st.integers(1, 4)), draw(st.sampled_from([1, 3, 16]))
    dtype = draw(st.sampled_from(DTYPES))
    t = min(t, nb * bs)
    cache_dtype = torch.float8_e4m3fn if draw(st.booleans()) else dtype
    slots = torch.randperm(nb * bs)[:t]
    slots[torch.rand(t) < 0.2] = -1                 # padding tokens
    k, v = torch.randn(t, hk, d).to(dtype), torch.randn(t, hk, d).to(dtype)
    scales = (draw(st.sampled_from([0.5, 1.0, 3.0])), 1.0) if cache_dtype != dtype else (1.0, 1.0)
    # fp8: sometimes per-KV-head factors [2, hk] of the scales as well
    kv_scales = torch.rand(2, hk) * 3 + 0.05 if cache_dtype != dtype and draw(st.booleans()) else None
    return k, v, nb, bs, cache_dtype, slots, (*scales, kv_scales)


@given(write_cases())
def test_write_kv_cache(case):
    """Every impl writes exactly the reference's bytes at the given slots and nothing else."""
    k, v, nb, bs, cache_dtype, slots, scales = case
    hk, d = k.shape[1], k.shape[2]
    poison = torch.full((nb, bs, hk, d), 7.0).to(cache_dtype)
    ref_caches = (poison.clone(), poison.clone())
    reference("write_kv_cache", (k, v, *ref_caches, slots, *scales))
    for impl in cpu_impls("write_kv_cache", (k, v, poison, poison.clone(), slots, *scales)):
        caches = (poison.clone(), poison.clone())
        impl.fn(k, v, *caches, slots, *scales)
        for got, want in zip(caches, ref_caches):
            assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), impl.label


@st.composite
def quantized_cases(draw):
    group = draw(st.sampled_from([-1, 16, 32, 64]))
    k = draw(st.sampled_from([16, 32, 64, 128])) if group == -1 else group * draw(st.integers(1, 3))
    m, n, bits = draw(st.integers(1, 20)), draw(st.integers(1, 24)), draw(st.sampled_from([4, 8]))
    dtype = draw(st.sampled_from(DTYPES))
    from polykernels import quantize_weight
    qweight, scales, zeros = quantize_weight(torch.randn(n, k).to(dtype), bits=bits, group_size=group,
                                             symmetric=draw(st.booleans()))
    x = _tensor((m, k), dtype, draw(st.booleans()))
    bias = torch.randn(n).to(dtype) if draw(st.booleans()) else None
    return x, qweight, scales, zeros, bits, group, bias


@given(quantized_cases())
def test_quantized_linear(args):
    check_op("quantized_linear", args)


@st.composite
def grouped_cases(draw):
    e, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 24)), draw(st.integers(1, 24))
    sizes = draw(st.lists(st.integers(0, 9), min_size=e, max_size=e))
    dtype = draw(st.sampled_from(DTYPES))
    x = torch.randn(sum(sizes), k).to(dtype)
    return x, torch.randn(e, k, n).to(dtype), torch.tensor(sizes, dtype=torch.int32)


@given(grouped_cases())
def test_grouped_matmul(args):
    check_op("grouped_matmul", args)


@st.composite
def scaled_cases(draw):
    m, k, n = draw(st.integers(1, 20)), draw(st.integers(1, 48)), draw(st.integers(1, 20))
    fmt = draw(st.sampled_from([torch.int8, torch.float8_e4m3fn]))
    per = draw(st.sampled_from(["tensor", "row"]))
    from polykernels import quantize_fp8, quantize_int8
    quant = quantize_int8 if fmt == torch.int8 else (lambda t, p: quantize_fp8(t, p, fmt))
    a, sa = quant(torch.randn(m, k), per)
    bt, sb = quant(torch.randn(n, k), per)
    out_dtype = draw(st.sampled_from([torch.bfloat16, torch.float32]))
    bias = torch.randn(n).to(out_dtype) if draw(st.booleans()) else None
    return bt.t() if draw(st.booleans()) else bt.t().contiguous(), a, sa, sb.reshape(-1), bias, out_dtype


@given(scaled_cases())
def test_scaled_matmul(case):
    b, a, sa, sb, bias, out_dtype = case
    check_op("scaled_matmul", (a, b, sa, sb, bias, out_dtype), dtype=out_dtype)
