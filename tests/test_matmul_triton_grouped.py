"""Triton grouped_matmul (MoE experts, issue 6) under the interpreter, and the "triton"
registration of the whole matmul family through pk.use()."""
from __future__ import annotations

import pytest
import torch

import polykernels as pk
from polykernels import reference as ref
from polykernels.triton.matmul import grouped, register
from test_matmul_triton_helpers import check, poisoned


def _baseline(x, w, sizes):
    out, start = [], 0
    for e, n in enumerate(sizes.tolist()):
        out.append(x[start:start + n] @ w[e])
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("sizes", [[0, 37, 0, 33], [5, 1, 64, 0], [70]])
def test_grouped_matmul(dtype, sizes):
    # Empty groups first/middle/last, a group of 1, groups straddling 32-row tiles.
    T, K, N = sum(sizes), 40, 19
    x = torch.randn(T, K, dtype=dtype)
    w = torch.randn(len(sizes), N, K, dtype=dtype).transpose(1, 2)  # [E, K, N] strided view
    gs = torch.tensor(sizes, dtype=torch.int32 if len(sizes) > 1 else torch.int64)
    out = poisoned((T, N), dtype)
    got = grouped.grouped_matmul(x, w, gs, out=out)
    check(got, ref.grouped_matmul(x.double(), w.double(), gs), _baseline(x, w, gs),
          f"grouped {dtype} {sizes}")


def test_grouped_matmul_all_empty_but_one_row():
    x = torch.randn(1, 16, dtype=torch.float16)
    w = torch.randn(3, 16, 8, dtype=torch.float16)
    gs = torch.tensor([0, 0, 1])
    got = grouped.grouped_matmul(x, w, gs, out=poisoned((1, 8), torch.float16))
    check(got, ref.grouped_matmul(x.double(), w.double(), gs), x @ w[2], "one row, expert 2")


def test_registered_and_selected_with_use():
    """pk.use(matmul="triton") runs these kernels (and gives the same numbers)."""
    a = torch.randn(9, 24, dtype=torch.float16)
    b = torch.randn(24, 7, dtype=torch.float16)
    with pk.use(matmul="triton"):
        d = pk.explain("matmul", a, b)
        got = pk.matmul(a, b, activation="relu")
    assert "triton" in str(d), d
    check(got, ref.matmul(a.double(), b.double(), None, "relu", None),
          torch.relu(a @ b), "pk.matmul triton")
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    qw, s, z = pk.quantize_weight(torch.randn(11, 32), bits=4, group_size=16)
    with pk.use(quantized_linear="triton"):
        got = pk.quantized_linear(x, qw, s, z, bits=4, group_size=16)
    check(got, ref.quantized_linear(x.double(), qw, s, z, 4, 16, None),
          x @ pk.reference.quant.dequantize_weight(qw, s, z, 4, 16, torch.bfloat16).t(),
          "pk.quantized_linear triton")


def test_supports_reasons():
    f32 = torch.randn(4, 4)
    assert register.matmul_supports(f32.double(), f32.double(), None, None, None)
    assert register.matmul_supports(f32, f32, None, "tanh", None)
    assert register.matmul_supports(f32, f32, None, None, None) is None
    i8 = torch.zeros(4, 4, dtype=torch.int8)
    one = torch.ones(())
    assert register.scaled_matmul_supports(i8, i8, one, one, None, torch.bfloat16) is None
    assert register.scaled_matmul_supports(i8, i8.to(torch.float8_e4m3fn), one, one, None,
                                           torch.bfloat16)
    assert register.grouped_matmul_supports(f32, f32[None], torch.ones(1)) is not None


@pytest.mark.parametrize("vendor,arch,dtype,refused", [
    ("nvidia", (8, 0), torch.float8_e4m3fn, True),     # no fp8 tensor cores before sm89
    ("nvidia", (9, 0), torch.float8_e4m3fn, False),
    ("nvidia", (9, 0), torch.float8_e4m3fnuz, True),   # fnuz is AMD's format
    ("amd", "gfx942", torch.float8_e4m3fnuz, False),
    ("amd", "gfx942", torch.float8_e4m3fn, True),      # would be emulated on CDNA3
    ("amd", "gfx90a", torch.float8_e4m3fnuz, True),    # no fp8 MFMA on CDNA2
])
def test_scaled_fp8_supports_per_arch(monkeypatch, vendor, arch, dtype, refused):
    monkeypatch.setattr(register, "_gpu", lambda device: (vendor, arch))
    q = torch.zeros(4, 4, dtype=dtype)
    one = torch.ones(())
    reason = register.scaled_matmul_supports(q, q, one, one, None, torch.bfloat16)
    assert (reason is not None) == refused, reason
