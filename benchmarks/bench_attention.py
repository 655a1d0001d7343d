"""Attention (dense, fwd / bwd / fwd+bwd): every impl dispatch offers on the device vs
``torch.nn.functional.scaled_dot_product_attention`` in the same run.

Rows per case: "torch" (SDPA, its default backend choice: the baseline of every ratio), then
"sdpa:<backend>" for each SDPA backend that runs the case on this device (flash, efficient,
cudnn, math; via torch.nn.attention.sdpa_kernel), then each impl that ``timed_impls`` lists
(chosen with pk.use; the Triton interpreter is never timed; the torch provider is "pk:torch"),
then "default": pk.attention unpinned (bwd: "fwd <impl>" is the forward's pick). rel err is
against SDPA on upcast copies (fp32 for 16-bit inputs, fp64 for fp32): its output (fwd) or
gradients (bwd); the torch row's sets the tolerance (common.Report.judge).

FLOP model (FlashAttention's): fwd = 4 * B * Hq * Sq * Sk * D, halved when causal;
bwd = 2.5 x fwd; fwd+bwd = 3.5 x fwd.

CPU preset (issue-5 goals): B1 H8 S1024 D128, bf16 and fp32, causal and not, fwd and bwd
(--quick: fwd only). GPU preset (docs/gpu-validation.md): 16k tokens per batch at seqlens
512..16k, head dims 64/128/256 (heads = 2048 / D), causal and not, bf16 fwd (bwd and
fwd+bwd at D128), the fp16 16k D128 anchor, and the GQA shapes of Llama-3-8B (32/8, D128)
and Qwen-2.5-7B (28/4, D128).
A time budget (env POLYKERNELS_BENCH_ATTN_BUDGET_S, GPU default 120 s) keeps the run inside
the GPU session; cases past it are listed as skipped, not silently dropped.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time

import torch
import torch.nn.functional as F

import polykernels as pk
from benchmarks.common import (contenders, impl_rows, main_for, picked, pinned, pinned_call,
                               rel_err, row_name, time_rows, timed_impls, upcast)

GQA_MODELS = [("llama3-8b", 32, 8), ("qwen2.5-7b", 28, 4)]
# The pure-torch reference materialises [B, H, Sq, Sk] fp32 scores: time it only below this.
_REFERENCE_MAX_SCORE_BYTES = 1 << 30
# SDPA's math backend materialises the scores too.
_MATH_MAX_SCORE_BYTES = 2 << 30


def _sdpa_backends(device: torch.device) -> list[tuple[str, object]]:
    from torch.nn.attention import SDPBackend
    names = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"]
    if device.type != "cuda":
        names = ["FLASH_ATTENTION", "MATH"]  # the CPU builds have these two
    return [(n.split("_")[0].lower(), getattr(SDPBackend, n)) for n in names if hasattr(SDPBackend, n)]


def _sdpa_fn(q, k, v, causal):
    """SDPA on [B, S, H, D] tensors as transformers' "sdpa" attention calls it: transposed
    views in, the output transposed back and made contiguous (for the output projection)."""
    gqa = q.shape[2] != k.shape[2]

    def fn():
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=causal, enable_gqa=gqa)
        return o.transpose(1, 2).contiguous()
    return fn


def _under(backend, fn):
    """fn() with SDPA restricted to one backend."""
    from torch.nn.attention import sdpa_kernel

    def call():
        with sdpa_kernel(backend):
            return fn()
    return call


def _reps(device, flops):
    if device.type == "cuda":
        return {}
    # rows of one workload differ by a few %: enough interleaved rounds for a stable median
    return dict(warmup=1, rep=5) if flops > 5e10 else dict(warmup=2, rep=11)


class _Budget:
    def __init__(self, seconds: float | None):
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.skipped: list[str] = []

    def spent(self, label: str) -> bool:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.skipped.append(label)
            return True
        return False


def _grads(fn, inputs, dout):
    out = fn()
    return lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True)


def bench_case(report, device, b, s, hq, hk, d, dtype, causal, passes=("fwd",), label=""):
    """One shape: rows for torch, each SDPA backend and each dispatchable impl, per pass."""
    q = torch.randn(b, s, hq, d, dtype=dtype, device=device, requires_grad=True)
    k = torch.randn(b, s, hk, d, dtype=dtype, device=device, requires_grad=True)
    v = torch.randn(b, s, hk, d, dtype=dtype, device=device, requires_grad=True)
    dout = torch.randn(b, s, hq, d, dtype=dtype, device=device)
    inputs = (q, k, v)
    fwd_flops = 4.0 * b * hq * s * s * d * (0.5 if causal else 1.0)
    shape = (f"{label}B{b} H{hq}/{hk} S{s} D{d} {str(dtype)[6:]} {'causal' if causal else 'full'}")
    score_bytes = 4.0 * b * hq * s * s
    torch_fwd = _sdpa_fn(q, k, v, causal)
    pk_fwd = lambda: pk.attention(q, k, v, causal=causal)  # noqa: E731

    for p in passes:
        flops = fwd_flops * {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}[p]
        op = f"attention {p}"
        reps = _reps(device, flops)

        def timed(fwd):
            if p == "fwd":
                with torch.no_grad():
                    return fwd, fwd
            if p == "bwd":
                return _grads(fwd, inputs, dout), (lambda: torch.autograd.grad(fwd(), inputs, dout))
            return (lambda: torch.autograd.grad(fwd(), inputs, dout)), (lambda: torch.autograd.grad(fwd(), inputs, dout))

        def result(call):
            if p == "fwd":
                with torch.no_grad():
                    return call()
            return call()

        # torch's rows and the pk rows are timed together (interleaved rounds on CPU: the
        # same load for each); the torch rows come first in the table ("torch" is the baseline)
        fns, gots, why, torch_rows = {}, {}, {}, ["torch"]
        fns["torch"], check = timed(torch_fwd)
        gots["torch"] = result(check)
        want = _reference(p, q, k, v, dout, causal)
        for name, backend in _sdpa_backends(device):
            if name == "math" and score_bytes > _MATH_MAX_SCORE_BYTES:
                continue
            row = f"sdpa:{name}"
            torch_rows.append(row)
            try:
                fn, check = timed(_under(backend, torch_fwd))
                gots[row] = result(_under(backend, check))
                fns[row] = _under(backend, fn)
            except Exception as e:  # this backend does not run this case here
                why[row] = f"unavailable: {str(e).splitlines()[0][:60]}"
        ops = ["attention"] if p == "fwd" else ["attention", "attention_backward"]
        skip = ("reference",) if score_bytes > _REFERENCE_MAX_SCORE_BYTES else ()
        rows = contenders("attention", device, (q, k, v), dict(causal=causal), skip)
        if p == "bwd":  # the backward's impls: pinned for both ops where both have them
            rows = [(row_name(i), {"attention": i}, None)
                    for i in timed_impls("attention_backward", device) if i not in skip] + rows[-1:]
        for name, choice, refused in rows:
            if refused is not None:
                why[name] = f"refused: {refused}"
                continue
            if choice is not None:
                impl = choice["attention"]
                choice = {o: impl for o in ops if impl in timed_impls(o, device)}
            try:
                with pinned(choice):
                    fn, check = timed(pk_fwd)
                    gots[name] = result(check)
                fns[name] = pinned_call(choice, fn)
            except Exception as e:  # an impl that refuses this case: say so, keep going
                why[name] = f"failed: {e}"
        with torch.no_grad() if p == "fwd" else contextlib.nullcontext():
            spreads = {}
            ms = time_rows(fns, device, spreads=spreads, **reps)
        for name in torch_rows:
            if name in why:
                report.add(op=op, shape=shape, impl=name, ms=float("nan"), note=why[name][:80])
            else:
                report.add(op=op, shape=shape, impl=name, ms=ms[name], flops=flops,
                           spread=spreads.get(name), baseline=None if name == "torch" else "torch",
                           max_err=_err(gots[name], want))
        for name, choice, _ in rows:
            if name in why:
                report.add(op=op, shape=shape, impl=name, ms=float("nan"), note=why[name][:80])
                continue
            report.add(op=op, shape=shape, impl=name, ms=ms[name], flops=flops, baseline="torch",
                       max_err=_err(gots[name], want), spread=spreads.get(name),
                       picked=None if choice else _picked_fwd(p, q, k, v, causal))


def _picked_fwd(p, q, k, v, causal):
    """The default row's forward impl (for bwd passes marked as such: the backward's own
    choice is made inside autograd)."""
    name = picked("attention", q, k, v, causal=causal)
    return name if p == "fwd" else f"fwd {name}"


def _reference(p, q, k, v, dout, causal):
    """The oracle of a pass: SDPA on upcast copies (fp32 for 16-bit inputs, fp64 for fp32),
    its output (fwd) or the gradients of q, k, v (bwd, fwd+bwd)."""
    qr, kr, vr = (upcast(t).requires_grad_(p != "fwd") for t in (q, k, v))
    fwd = _sdpa_fn(qr, kr, vr, causal)
    if p == "fwd":
        with torch.no_grad():
            return fwd()
    return torch.autograd.grad(fwd(), (qr, kr, vr), upcast(dout))


def _err(got, want):
    """rel_err of an output, or the worst of several (gradients)."""
    if isinstance(got, torch.Tensor):
        return rel_err(got, want)
    return max(rel_err(g, w) for g, w in zip(got, want))


def _cpu_preset(report, device, quick):
    # Issue-5 CPU goals: B1 H8 S1024 D128, bf16 / fp32, causal and not (--quick: fwd only).
    for dtype in (torch.bfloat16, torch.float32):
        for causal in (False, True):
            bench_case(report, device, 1, 1024, 8, 8, 128, dtype, causal,
                       passes=("fwd",) if quick else ("fwd", "bwd"))


def _gpu_preset(report, device, quick):
    budget = _Budget(float(os.environ.get("POLYKERNELS_BENCH_ATTN_BUDGET_S", "120")))
    tokens = 16384
    seqlens = (1024, 4096) if quick else (512, 1024, 2048, 4096, 8192, 16384)

    def sweep(d, passes):
        return [(tokens // s, s, 2048 // d, 2048 // d, d, torch.bfloat16, causal, passes, "")
                for s in seqlens for causal in (False, True)]

    # Most important first: the budget cuts from the end.
    cases = sweep(128, ("fwd", "bwd"))
    # FlashAttention-3 / cuDNN anchors in docs/gpu-validation.md are fp16, hd128, 16k, non-causal.
    cases.append((1, 16384, 16, 16, 128, torch.float16, False, ("fwd",), "anchor "))
    for name, hq, hk in GQA_MODELS:
        for causal in (True, False):
            cases.append((4, 4096, hq, hk, 128, torch.bfloat16, causal, ("fwd", "bwd"), f"{name} "))
    if not quick:
        cases += sweep(64, ("fwd",)) + sweep(256, ("fwd",))
    cases += sweep(128, ("fwd+bwd",))
    for b, s, hq, hk, d, dtype, causal, passes, label in cases:
        if budget.spent(f"{label}B{b} S{s} D{d} {'causal' if causal else 'full'} {'/'.join(passes)}"):
            continue
        bench_case(report, device, b, s, hq, hk, d, dtype, causal, passes, label)
        torch.cuda.empty_cache()
    if budget.skipped:
        print(f"bench_attention: time budget spent; skipped {len(budget.skipped)} cases: "
              f"{', '.join(budget.skipped)}", file=sys.stderr)
        report.meta["attention_skipped"] = budget.skipped


def bench_varlen(report, device, quick: bool) -> None:
    """varlen_attention on a ragged batch (forward) vs what a torch user writes without it:
    SDPA once per sequence. FLOPs: 4 * sum(len^2) * heads * head_dim (causal: half)."""
    dtype = torch.bfloat16
    hq, hk, d = (8, 8, 128) if device.type == "cpu" else (32, 8, 128)
    lens = [300, 17, 700, 1, 531] if device.type == "cpu" else [8000, 37, 1500, 4096, 2500, 900]
    if quick:
        lens = lens[:3]
    total = sum(lens)
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=device)
    q = torch.randn(total, hq, d, dtype=dtype, device=device)
    k = torch.randn(total, hk, d, dtype=dtype, device=device)
    v = torch.randn_like(k)
    bounds = list(zip(cu[:-1].tolist(), cu[1:].tolist()))
    for causal in (False, True):
        flops = sum(4 * n * n * hq * d for n in lens) / (2 if causal else 1)
        shape = f"varlen {len(lens)} seqs T{total} H{hq}/{hk} D{d} {str(dtype)[6:]}{' causal' if causal else ''}"

        def torch_loop():
            outs = []
            for a, b in bounds:
                o = F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1),
                                                   v[a:b].transpose(0, 1), is_causal=causal,
                                                   enable_gqa=hq != hk)
                outs.append(o.transpose(0, 1))
            return torch.cat(outs)

        want = pk.reference.varlen_attention(*upcast((q, k, v)), cu, cu, max(lens), max(lens),
                                             causal, d ** -0.5, -1, -1, 0.0, None)[0]
        torch_row = dict(flops=flops, max_err=_err(torch_loop(), want), note="SDPA per sequence")
        # the reference's speed is not interesting: it is the oracle above
        impl_rows(report, "varlen_attention", device, (q, k, v, cu, cu, max(lens), max(lens)),
                  dict(causal=causal), shape=shape, skip=("reference",), flops=flops,
                  baselines={"torch": (torch_loop, torch_row)},
                  err_fn=lambda out: _err(out, want))


def run(report, device, quick: bool) -> None:
    if device.type != "cuda":
        _cpu_preset(report, device, quick)
    else:
        _gpu_preset(report, device, quick)
    bench_varlen(report, device, quick)


if __name__ == "__main__":
    main_for(run)
