"""Shared helpers for the attention impl tests: inputs, the same-dtype torch baseline, and
the error-budget comparison (kernel error vs the fp64 reference <= k x torch's error + floor)."""
from __future__ import annotations

import math

import torch


# Absolute error floors per dtype, scaled by the reference's largest magnitude (>= 1).
FLOOR = {torch.float32: 2e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def make_qkv(b, sq, sk, hq, hk, d, dtype, layout="bshd", device="cpu"):
    """Fresh random q [b, sq, hq, d], k/v [b, sk, hk, d] with the requested memory layout:
    "bshd" contiguous; "bhsd" transposed views of [b, h, s, d]; "strided" slices of wider
    tensors (head_dim and sequence strides that are not the dense ones)."""
    def one(s, h):
        if layout == "bshd":
            return torch.randn(b, s, h, d, dtype=dtype, device=device)
        if layout == "bhsd":
            return torch.randn(b, h, s, d, dtype=dtype, device=device).transpose(1, 2)
        if layout == "strided":
            return torch.randn(b, 2 * s + 1, h, d + 8, dtype=dtype, device=device)[:, 1::2, :, 3:3 + d]
        raise ValueError(layout)
    return one(sq, hq), one(sk, hk), one(sk, hk)


def visibility(sq, sk, causal, wl, wr, device="cpu"):
    """(visible [sq, sk], d [sq, sk]) per docs/design.md: d = i + Sk - Sq - j, -right <= d <= left."""
    d = torch.arange(sq, device=device)[:, None] + (sk - sq) - torch.arange(sk, device=device)[None, :]
    right = 0 if causal else wr
    vis = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if wl >= 0:
        vis &= d <= wl
    if right >= 0:
        vis &= d >= -right
    return vis, d


def torch_same_dtype(q, k, v, causal, scale, wl, wr, softcap, alibi):
    """The attention math done by torch in the inputs' own dtype (the error baseline)."""
    dt = q.dtype
    b, sq, hq, d = q.shape
    sk = k.shape[1]
    g = hq // k.shape[2]
    k, v = k.repeat_interleave(g, 2), v.repeat_interleave(g, 2)
    vis, dist = visibility(sq, sk, causal, wl, wr, q.device)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if alibi is not None:
        sl = alibi if alibi.dim() == 2 else alibi[None]
        s = s - (sl.to(dt)[:, :, None, None] * dist.abs().to(dt))
    s = s.masked_fill(~vis, -math.inf)
    p = torch.softmax(s, -1).nan_to_num(0.0)  # rows with no visible key: p = 0
    return torch.einsum("bhqk,bkhd->bqhd", p.to(dt), v)


def assert_close_budget(name, got, ref, base, factor, dtype):
    """|got - ref| <= factor * |base - ref| (max over the tensor) + floor; message says where."""
    got, ref, base = got.double(), ref.double(), base.double()
    assert not torch.isnan(got).any(), f"{name}: {int(torch.isnan(got).sum())} NaN (unwritten?) elements"
    err = (got - ref).abs()
    budget = factor * (base - ref).abs().max().item() + FLOOR[dtype] * max(1.0, ref.abs().max().item())
    worst = err.max().item()
    if worst > budget:
        idx = tuple(int(i) for i in torch.nonzero(err == err.max())[0])
        raise AssertionError(f"{name}: max error {worst:.3e} at {idx} (got {got[idx].item():.5f}, "
                             f"ref {ref[idx].item():.5f}) > budget {budget:.3e} "
                             f"({factor}x torch {dtype} error + floor)")


def assert_lse(got, ref):
    """lse: same -inf pattern (fully masked rows) and close elsewhere (fp32 everywhere)."""
    assert got.dtype == torch.float32
    assert not torch.isnan(got).any(), "lse has NaN (unwritten?)"
    inf_got, inf_ref = torch.isinf(got), torch.isinf(ref)
    assert torch.equal(inf_got, inf_ref), \
        f"lse -inf pattern differs at {torch.nonzero(inf_got != inf_ref)[:5].tolist()}"
    fin = ~inf_ref
    err = (got[fin].double() - ref[fin].double()).abs()
    if err.numel():
        tol = 1e-3 * (1 + ref[fin].double().abs())
        bad = err > tol
        assert not bad.any(), f"lse error {err.max().item():.3e} at {torch.nonzero(fin)[bad.nonzero()[0, 0]].tolist()}"
