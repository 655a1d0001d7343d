"""``@triton.jit`` helpers shared by every matmul kernel of the family.

Activation codes (constexpr ``ACT``) are the contract between launchers and kernels; the
Python names map to them through ``ACTIVATIONS``.
"""
from __future__ import annotations

import triton
import triton.language as tl

ACTIVATIONS = {None: 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 GROUP_M: tl.constexpr):
    """Map a linear program id to a (pid_m, pid_n) tile in grouped order.

    Consecutive programs walk down GROUP_M row-tiles before moving to the next column-tile,
    so a wave of programs shares A row-panels and B column-panels in L2 instead of
    streaming all of B once per row of tiles.
    """
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    group = pid // per_group
    first_m = group * GROUP_M
    rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % per_group) % rows)
    pid_n = (pid % per_group) // rows
    return pid_m, pid_n


@triton.jit
def activation(x, ACT: tl.constexpr):
    """Apply the activation selected by ``ACT`` to an fp32 tile (see ACTIVATIONS)."""
    if ACT == 1:
        x = tl.maximum(x, 0.0)
    elif ACT == 2:
        # Exact GELU, F.gelu's default: x * Phi(x).
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif ACT == 3:
        # tanh approximation; 0.5 * (1 + tanh(u)) == sigmoid(2u), which avoids needing a
        # tanh intrinsic (not exposed the same way on every Triton version/backend).
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        x = x * tl.sigmoid(2.0 * u)
    elif ACT == 4:
        x = x * tl.sigmoid(x)
    return x


@triton.jit
def store_tile(acc, c_ptr, bias_ptr, offs_m, offs_n, M, N, stride_cm, stride_cn,
               HAS_BIAS: tl.constexpr, ACT: tl.constexpr):
    """Epilogue of every matmul kernel: fp32 ``acc`` + bias[N], activation, cast, store.

    Rows/cols outside [0, M) x [0, N) are masked at the store (loads were clamped).
    """
    mask_n = offs_n < N
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    acc = activation(acc, ACT)
    ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    mask = (offs_m[:, None] < M) & mask_n[None, :]
    tl.store(ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)
