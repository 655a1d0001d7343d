"""The Triton matmul family compiled for a real GPU (-m gpu; skipped without one): the
vendor configs (default candidate, and one autotuned search), split-K, the GEMV path, fp8
on the archs that have it, against the float64 oracle with poisoned outputs. Sizes cross
many tiles of the real block shapes and keep awkward tails."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from polykernels import reference as ref
from polykernels.reference import quant
from polykernels.triton.matmul import gemm, grouped, register, scaled, weight_only
from test_matmul_triton_helpers import check, poisoned

pytestmark = pytest.mark.gpu
DEV = "cuda"


@pytest.fixture(autouse=True)
def _default_configs(monkeypatch):
    # The first candidate of each list (what the codegen tests compile); one test below
    # turns the search back on.
    monkeypatch.setenv("POLYKERNELS_AUTOTUNE", "0")


def _gemm_case(M, K, N, dtype, act, bias, split_k=None):
    a = torch.randn(M, K, dtype=dtype, device=DEV)
    b = torch.randn(K, N, dtype=dtype, device=DEV) / K ** 0.5
    bb = torch.randn(N, dtype=dtype, device=DEV) if bias else None
    out = gemm.matmul(a, b, bb, act, None, split_k=split_k,
                      out=poisoned((M, N), dtype, DEV))
    oracle = ref.matmul(a.double(), b.double(), None if bb is None else bb.double(), act,
                        torch.float64)
    base = torch.matmul(a, b) + (bb if bias else 0)
    base = {None: base, "gelu": F.gelu(base), "silu": F.silu(base)}[act]
    check(out, oracle, base, f"gpu gemm M{M} K{K} N{N} {dtype} {act} split={split_k}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("M,K,N", [(1, 4096, 1000), (16, 4096, 4000), (257, 1000, 777),
                                   (1000, 512, 1536)])
def test_gemm(dtype, M, K, N):
    _gemm_case(M, K, N, dtype, "gelu" if M != 16 else "silu", bias=True)


def test_gemm_forced_split_and_autotune(monkeypatch):
    _gemm_case(33, 3000, 500, torch.bfloat16, None, bias=True, split_k=5)
    monkeypatch.setenv("POLYKERNELS_AUTOTUNE", "1")
    _gemm_case(512, 512, 512, torch.float16, "gelu", bias=False)


def test_linear_strided_weight():
    x = torch.randn(3, 100, 1024, dtype=torch.bfloat16, device=DEV)
    w = torch.randn(1500, 1024, dtype=torch.bfloat16, device=DEV) / 32
    got = gemm.linear(x, w, None, None, out=poisoned((3, 100, 1500), torch.bfloat16, DEV))
    check(got, ref.linear(x.double(), w.double(), None, None), F.linear(x, w), "gpu linear")


def _fp8_dtypes():
    cases = [torch.int8]
    one = torch.ones((), device=DEV)
    for dt in (torch.float8_e4m3fn, torch.float8_e4m3fnuz):
        q = torch.zeros(16, 16, device=DEV).to(dt)
        if register.scaled_matmul_supports(q, q, one, one, None, torch.bfloat16) is None:
            cases.append(dt)
    return cases


@pytest.mark.parametrize("M,K,N", [(1, 4096, 1000), (300, 1000, 777)])
def test_scaled_matmul(M, K, N):
    for dtype in _fp8_dtypes():
        a = torch.randn(M, K, device=DEV)
        bt = torch.randn(N, K, device=DEV)
        if dtype == torch.int8:
            qa, sa = quant.quantize_int8(a, "row")
            qbt, sb = quant.quantize_int8(bt, "row")
        else:
            qa, sa = quant.quantize_fp8(a, "row", dtype)
            qbt, sb = quant.quantize_fp8(bt, "row", dtype)
        qb, sb = qbt.t(), sb.reshape(1, -1)
        bias = torch.randn(N, device=DEV)
        got = scaled.scaled_matmul(qa, qb, sa, sb, bias, torch.bfloat16,
                                   out=poisoned((M, N), torch.bfloat16, DEV))
        base = ((qa.float() @ qb.float()) * sa * sb + bias).to(torch.bfloat16)
        check(got, ref.scaled_matmul(qa, qb, sa, sb, bias, torch.float64), base,
              f"gpu scaled {dtype} M{M}")


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("M", [1, 7, 300])
def test_quantized_linear(bits, M):
    N, K, gs = 1000, 4096, 128
    w = torch.randn(N, K, dtype=torch.bfloat16, device=DEV)
    qw, s, z = quant.quantize_weight(w, bits, gs, symmetric=M != 7)
    x = torch.randn(M, K, dtype=torch.bfloat16, device=DEV)
    got = weight_only.quantized_linear(x, qw, s, z, bits, gs, None,
                                       out=poisoned((M, N), torch.bfloat16, DEV))
    wdq = quant.dequantize_weight(qw, s, z, bits, gs, torch.bfloat16)
    check(got, ref.quantized_linear(x.double(), qw, s, z, bits, gs, None), F.linear(x, wdq),
          f"gpu int{bits} M{M}")


def test_grouped_matmul():
    E, K, N = 8, 512, 384
    sizes = torch.tensor([100, 0, 333, 1, 0, 250, 17, 299], dtype=torch.int32, device=DEV)
    T = int(sizes.sum())
    x = torch.randn(T, K, dtype=torch.bfloat16, device=DEV)
    w = torch.randn(E, K, N, dtype=torch.bfloat16, device=DEV) / K ** 0.5
    got = grouped.grouped_matmul(x, w, sizes, out=poisoned((T, N), torch.bfloat16, DEV))
    starts = [0] + torch.cumsum(sizes, 0).tolist()
    base = torch.cat([x[starts[e]:starts[e + 1]] @ w[e] for e in range(E)])
    check(got, ref.grouped_matmul(x.double(), w.double(), sizes), base, "gpu grouped")
