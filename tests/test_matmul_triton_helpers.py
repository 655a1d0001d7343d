"""Comparison helper for the Triton matmul tests (issue 6).

Rule (docs/testing.md): the kernel's error against a float64 oracle must be at most
2x the error of the same computation done by torch in the input dtype, plus a small
absolute floor scaled by the output's magnitude. Failures say where and by how much.
"""
from __future__ import annotations

import torch

# Absolute floor, relative to max |oracle|: covers one rounding of the output dtype when
# the torch baseline happens to be exact on some element.
FLOOR = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def check(out: torch.Tensor, oracle: torch.Tensor, baseline: torch.Tensor, name: str,
          factor: float = 2.0) -> None:
    assert out.shape == oracle.shape, f"{name}: shape {tuple(out.shape)} != {tuple(oracle.shape)}"
    o = out.to(torch.float64)
    r = oracle.to(torch.float64)
    bad = ~torch.isfinite(o) & torch.isfinite(r)
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        raise AssertionError(f"{name}: {int(bad.sum())} non-finite outputs (unwritten/poison?), "
                             f"first at {idx}")
    err = (o - r).abs()
    base = (baseline.to(torch.float64) - r).abs().max().item()
    scale = max(r.abs().max().item(), 1.0) if r.numel() else 1.0
    tol = factor * base + FLOOR.get(out.dtype, 1e-3) * scale
    worst = err.max().item() if err.numel() else 0.0
    if worst > tol:
        where = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
        raise AssertionError(
            f"{name}: max error {worst:.3e} at {where} (got {o[where].item():.6g}, want "
            f"{r[where].item():.6g}) > tolerance {tol:.3e} (torch baseline error {base:.3e})")


def poisoned(shape, dtype, device="cpu") -> torch.Tensor:
    """An output buffer filled with NaN (or the largest int) so unwritten elements show."""
    t = torch.empty(shape, dtype=dtype, device=device)
    return t.fill_(float("nan")) if dtype.is_floating_point else t.fill_(torch.iinfo(dtype).max)
