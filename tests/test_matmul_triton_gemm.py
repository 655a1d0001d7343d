"""Triton matmul / linear (issue 6) under the interpreter against the float64 oracle."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from polykernels import reference as ref
from polykernels.triton.matmul import gemm, splitk
from test_matmul_triton_helpers import check, poisoned

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
ACTS = [None, "relu", "gelu", "gelu_tanh", "silu"]


def _torch_act(x, act):
    return {None: lambda t: t, "relu": F.relu, "gelu": F.gelu, "silu": F.silu,
            "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}[act](x)


def _oracle(a, b, bias, act, out_dtype=None):
    o = ref.matmul(a.double(), b.double(), None if bias is None else bias.double(), act,
                   torch.float64)
    return o


def _baseline(a, b, bias, act, out_dtype):
    """The same computation by torch in the input dtype (how a user would write it)."""
    o = torch.matmul(a, b)
    if bias is not None:
        o = o + bias
    return _torch_act(o, act).to(out_dtype or a.dtype)


@pytest.fixture(autouse=True)
def _poison_workspace(monkeypatch):
    """Split-K partials start as NaN so a slice that is not written shows up."""
    def ws(splits, Z, M, N, device):
        return torch.full((splits, Z, M, N), float("nan"), dtype=torch.float32, device=device)
    monkeypatch.setattr(gemm, "workspace", ws)


def _run(a, b, bias, act, out_dtype=None, name="", **kw):
    shape = (*a.shape[:-1], b.shape[1])
    out = poisoned(shape, out_dtype or a.dtype)
    got = gemm.matmul(a, b, bias, act, out_dtype, out=out, **kw)
    assert got.data_ptr() == out.data_ptr()
    check(got, _oracle(a, b, bias, act), _baseline(a, b, bias, act, out_dtype), name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_epilogues(dtype, act):
    # M, K, N awkward: K not a multiple of BLOCK_K (32), N odd.
    a = torch.randn(33, 40, dtype=dtype)
    b = torch.randn(40, 17, dtype=dtype)
    bias = torch.randn(17, dtype=dtype) if act in (None, "gelu", "silu") else None
    _run(a, b, bias, act, name=f"{dtype} {act} bias={bias is not None}")


@pytest.mark.parametrize("M,K,N", [(1, 72, 33), (7, 31, 5), (65, 64, 64), (257, 24, 9)])
def test_awkward_shapes(M, K, N):
    a = torch.randn(M, K, dtype=torch.float16)
    b = torch.randn(K, N, dtype=torch.float16)
    _run(a, b, torch.randn(N, dtype=torch.float16), "relu", name=f"M{M} K{K} N{N}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_transposed_and_strided(dtype):
    # a transposed (column-major), b a strided slice: read in place through strides.
    a = torch.randn(40, 21, dtype=dtype).t()                  # [21, 40], stride (1, 21)
    b = torch.randn(40, 2 * 19, dtype=dtype)[:, ::2]          # [40, 19], stride (38, 2)
    _run(a, b, torch.randn(19, dtype=dtype), "silu", name=f"{dtype} a.T b[:, ::2]")


def test_batched_foldable_and_not():
    b = torch.randn(36, 11, dtype=torch.float16)
    a = torch.randn(2, 3, 9, 36, dtype=torch.float16)          # folds into M = 54
    _run(a, b, None, None, name="batched contiguous")
    a = torch.randn(9, 3, 36, dtype=torch.float16).transpose(0, 1)  # [3, 9, 36], no fold
    _run(a, b, None, "gelu_tanh", name="batched strided")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("splits,K", [(2, 100), (3, 130)])
def test_split_k(dtype, splits, K):
    # Slices of whole 32-blocks (64+36; 64+64+2), epilogue applied after the reduction.
    assert gemm.k_slices(K, 32, splits)[0] == splits
    a = torch.randn(5, K, dtype=dtype)
    b = torch.randn(K, 37, dtype=dtype)
    _run(a, b, torch.randn(37, dtype=dtype), "gelu", name=f"split {splits}", split_k=splits)


def test_split_k_batched_strided():
    a = torch.randn(7, 2, 70, dtype=torch.float16).transpose(0, 1)
    b = torch.randn(70, 9, dtype=torch.float16)
    _run(a, b, None, "relu", name="split batched", split_k=2)


def test_out_dtype_fp32_from_bf16():
    a = torch.randn(17, 48, dtype=torch.bfloat16)
    b = torch.randn(48, 23, dtype=torch.bfloat16)
    _run(a, b, torch.randn(23, dtype=torch.float32), None, out_dtype=torch.float32,
         name="bf16 -> fp32 out, fp32 bias")


def test_k_zero_and_empty():
    a = torch.randn(4, 0, dtype=torch.float16)
    b = torch.randn(0, 6, dtype=torch.float16)
    bias = torch.randn(6, dtype=torch.float16)
    _run(a, b, bias, "relu", name="K=0")
    out = gemm.matmul(torch.randn(0, 8, dtype=torch.float16), torch.randn(8, 3, dtype=torch.float16))
    assert out.shape == (0, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_linear(dtype):
    x = torch.randn(2, 5, 44, dtype=dtype)
    w = torch.randn(27, 44, dtype=dtype)
    bias = torch.randn(27, dtype=dtype)
    out = poisoned((2, 5, 27), dtype)
    got = gemm.linear(x, w, bias, "gelu", out=out)
    oracle = ref.linear(x.double(), w.double(), bias.double(), "gelu")
    check(got, oracle, F.gelu(F.linear(x, w, bias)), f"linear {dtype}")
    x1 = torch.randn(44, dtype=dtype)
    check(gemm.linear(x1, w, None, None), ref.linear(x1.double(), w.double(), None, None),
          F.linear(x1, w), "linear 1-D x")


def test_fp32_ieee_by_default():
    # allow_tf32 off (torch's default): products must be exact fp32, far below tf32's 1e-3.
    assert not torch.backends.cuda.matmul.allow_tf32
    assert gemm.precision_for(torch.float32) == "ieee"
    assert gemm.precision_for(torch.float16) is None


def test_gpu_heuristics(monkeypatch):
    """Config choice on a (pretend) H100: split-K only for skinny, long-K GEMMs; the
    interpreter gets its single config."""
    from polykernels.triton.matmul import configs
    dev = torch.device("cpu")
    assert configs.gemm_configs(dev, 64, 64, 64, torch.float16) == [configs.INTERPRETER]
    assert configs.split_k(dev, 1, 4096, 4096, configs.INTERPRETER) == 1
    monkeypatch.setattr(configs, "_vendor", lambda device: ("nvidia", (9, 0), 132))
    skinny = configs.gemm_configs(dev, 16, 4096, 4096, torch.bfloat16)[0]
    s = configs.split_k(dev, 16, 4096, 4096, skinny)
    assert 1 < s <= 16, s
    big = configs.gemm_configs(dev, 4096, 4096, 4096, torch.bfloat16)[0]
    assert configs.split_k(dev, 4096, 4096, 4096, big) == 1
    assert (big.block_m, big.block_n) == (128, 256)
    gelu = configs.gemm_configs(dev, 4096, 4096, 4096, torch.bfloat16, act=2)[0]
    assert gelu.block_n == 128  # 128x256 spills with the erf epilogue (codegen test)
    assert gemm.k_slices(4096, 128, s)[0] == s
    assert gemm.k_slices(100, 32, 3) == (2, 64)   # slices are whole blocks, none empty
    assert gemm.k_slices(130, 32, 3) == (3, 64)   # 64 + 64 + 2
    assert gemm.k_slices(0, 32, 4) == (1, 32)
