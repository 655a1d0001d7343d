"""Matmul family: every impl dispatch offers on the device vs torch, in the same run.

Rows per case: "torch" (torch.matmul / F.linear + activation / torch._scaled_mm or
torch._int_mm / dequantise + matmul / a loop of per-expert matmuls), then each impl that
``timed_impls`` lists for the op on this device (on CPU: cpp and reference; the Triton
interpreter is never timed), chosen with ``pk.use``, then "default": the unpinned call.
FLOP model 2*M*N*K; weight-only rows also report GB/s on the packed weight + scales bytes
and % of the measured read bandwidth (a sum over a buffer past the caches). Weight-only rows
are timed with a cold cache ("cold" in the shape; CPU: the last-level cache evicted before
every timed call; GPU: do_bench clears the L2): a 22 MB int4 weight fits a 32 MB L3, but a
server's decode step reads it from DRAM, each layer's weights evicted by the others'.

CPU preset (issue 5 goals): GEMM fp32/bf16 1024^3 and 2048^3 (2048^3 skipped, with a row
that says so, where torch took over SLOW_CALL_MS per 1024^3 call: bf16 without native bf16
instructions); linear+bias+GELU M512 K4096 N11008 bf16; int4/int8 weight-only M1 K4096
N11008; grouped (MoE) 16 tokens top-2 over 8 experts, 1024 -> 3584 bf16; int8 scaled
M64 K2048 N2048. GPU preset: square 512..8192, Llama-3-8B and Qwen-2.5-7B projections at M = 1, 16,
128, 4096 (bf16, fp8, int4), Mixtral MoE (8 experts, top-2, 4096 -> 14336) grouped GEMM.
"""
from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

import polykernels as pk
from benchmarks.common import (SLOW_CALL_MS, impl_rows, main_for, read_bandwidth_gbs,
                               reference_output, rel_err, time_ms, timed_call)

# (name, K, N) projections: Llama-3-8B (hidden 4096, 8 KV heads of 128, MLP 14336) and
# Qwen-2.5-7B (hidden 3584, 4 KV heads of 128, MLP 18944).
LLM = [("llama3-8b qkv", 4096, 6144), ("llama3-8b o", 4096, 4096),
       ("llama3-8b gate_up", 4096, 28672), ("llama3-8b down", 14336, 4096),
       ("qwen2.5-7b qkv", 3584, 4608), ("qwen2.5-7b o", 3584, 3584),
       ("qwen2.5-7b gate_up", 3584, 37888), ("qwen2.5-7b down", 18944, 3584)]
_ACT = {None: lambda t: t, "gelu": F.gelu}


def _reps(device, flops):
    # CPU: a 2048^3 GEMM takes ~0.1 s; keep every case to a few seconds.
    if device.type == "cuda":
        return {}
    # at least 5 samples: the spread (interquartile range) needs 4
    return dict(warmup=1, rep=5) if flops > 2e10 else dict(warmup=2, rep=7)


def _impl_rows(report, op, shape, device, args, kwargs, torch_fn, flops=None, nbytes=None,
               peak=None, cold=False, **torch_kw):
    """The torch row and the pk rows, timed together (interleaved: the same load for each;
    ``cold``: caches evicted before each timed call); errors against the reference on upcast
    copies (torch's own sets the tolerance)."""
    torch_out, _ = timed_call(torch_fn, device)   # also its warm-up call
    want = reference_output(op, args, kwargs)
    sizes = dict(flops=flops, nbytes=nbytes, peak_gbs=peak)
    impl_rows(report, op, device, args, kwargs, shape=shape,
              reps={**_reps(device, flops or 0), "cold": cold},
              baselines={"torch": (torch_fn, {**sizes, **torch_kw,
                                              "max_err": rel_err(torch_out, want)})},
              err_fn=lambda out: rel_err(out, want), **sizes)


def bench_gemm(report, device, M, K, N, dtype, bias=False, activation=None, op="matmul",
               label=None):
    a = torch.randn(M, K, dtype=dtype, device=device)
    w = torch.randn(N, K, dtype=dtype, device=device) / K ** 0.5
    b = torch.randn(N, dtype=dtype, device=device) if bias else None
    flops = 2.0 * M * N * K
    shape = label or f"{M}x{K}x{N} {str(dtype)[6:]}" + (f" +bias {activation}" if bias or activation else "")
    if op == "linear":
        def torch_fn():
            return _ACT[activation](F.linear(a, w, b))
        call = (a, w, b), dict(activation=activation)  # pk.linear(*args, **kwargs)
    else:
        wt = w.t().contiguous()

        def torch_fn():
            return _ACT[activation](torch.matmul(a, wt) if b is None else torch.addmm(b, a, wt))
        call = (a, wt), dict(bias=b, activation=activation)  # pk.matmul(...)
    _impl_rows(report, op, shape, device, *call, torch_fn, flops=flops)


def bench_weight_only(report, device, M, K, N, bits, dtype=torch.bfloat16, group_size=128,
                      label=""):
    w = torch.randn(N, K, dtype=dtype, device=device)
    qw, s, z = pk.quantize_weight(w, bits=bits, group_size=group_size)
    x = torch.randn(M, K, dtype=dtype, device=device)
    nbytes = qw.numel() + s.numel() * s.element_size()  # weight traffic dominates at small M
    flops = 2.0 * M * N * K
    peak = read_bandwidth_gbs(device)
    gs = "per channel" if group_size == -1 else f"g{group_size}"
    shape = f"{label}M{M} K{K} N{N} int{bits} {gs} {str(dtype)[6:]} cold"
    torch_fn, note = _torch_weight_only(x, qw, s, z, bits, group_size)
    _impl_rows(report, "quantized_linear", shape, device, (x, qw, s, z),
               dict(bits=bits, group_size=group_size), torch_fn, flops=flops, nbytes=nbytes,
               peak=peak, cold=True, note=note)


def _torch_weight_only(x, qw, s, z, bits, group_size):
    """torch's own weight-only kernel on CPU (_weight_int4pack_mm_for_cpu,
    _weight_int8pack_mm), its weight packed once, outside the timing, as a server would;
    elsewhere (no packing for it wired here) what a user without a kernel writes."""
    from polykernels.torch_provider import quantized as tq
    if x.device.type == "cpu" and tq.quantized_linear_supports(x, qw, s, z, bits, group_size,
                                                               None) is None:
        k = x.shape[-1]
        gs = k if group_size == -1 else group_size
        if bits == 4:
            packed, scales_zeros = tq._pack_int4(qw, s, z, gs, x.dtype)
            n = qw.shape[0]
            return (lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, gs, scales_zeros)[:, :n],
                    "aten int4pack, weight packed once")
        packed, scales = tq._pack_int8(qw, s, x.dtype)
        xp = F.pad(x, (0, packed.shape[1] - k))
        return (lambda: torch.ops.aten._weight_int8pack_mm(xp, packed, scales),
                "aten int8pack, weight packed once")
    return (lambda: F.linear(x, pk.reference.quant.dequantize_weight(qw, s, z, bits, group_size, x.dtype)),
            "dequantise + matmul (no torch kernel wired here)")


def bench_scaled(report, device, M, K, N, dtype, label=""):
    a = torch.randn(M, K, device=device)
    bt = torch.randn(N, K, device=device)
    if dtype == torch.int8:
        qa, sa = pk.quantize_int8(a, "row")
        qbt, sb = pk.quantize_int8(bt, "row")
    else:
        qa, sa = pk.quantize_fp8(a, "row", dtype)
        qbt, sb = pk.quantize_fp8(bt, "row", dtype)
    qb, sb = qbt.t(), sb.reshape(1, -1)  # b [K, N] column-major, as _scaled_mm wants
    flops = 2.0 * M * N * K
    shape = f"{label}M{M} K{K} N{N} {str(dtype)[6:]} row/col scales"
    if device.type == "cuda" and dtype != torch.int8:
        def torch_fn():
            return torch._scaled_mm(qa, qb, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
    elif device.type == "cuda":
        def torch_fn():
            return (torch._int_mm(qa, qb).float() * sa * sb).to(torch.bfloat16)
    else:
        def torch_fn():
            return ((qa.float() @ qb.float()) * sa * sb).to(torch.bfloat16)
    try:
        torch_fn()
    except Exception as e:  # e.g. _scaled_mm needs sm89+
        report.add(op="scaled_matmul", shape=shape, impl="torch", ms=float("nan"),
                   note=f"failed: {e}"[:80])
        want = reference_output("scaled_matmul", (qa, qb, sa, sb), dict(out_dtype=torch.bfloat16))
        torch_fn = None
    if torch_fn is None:
        impl_rows(report, "scaled_matmul", device, (qa, qb, sa, sb), dict(out_dtype=torch.bfloat16),
                  shape=shape, reps=_reps(device, flops), flops=flops,
                  err_fn=lambda out: rel_err(out, want))
        return
    _impl_rows(report, "scaled_matmul", shape, device, (qa, qb, sa, sb),
               dict(out_dtype=torch.bfloat16), torch_fn, flops=flops)


def bench_grouped(report, device, tokens, E=8, topk=2, K=4096, N=14336, dtype=torch.bfloat16):
    T = tokens * topk
    x = torch.randn(T, K, dtype=dtype, device=device)
    w = torch.randn(E, K, N, dtype=dtype, device=device) / K ** 0.5
    # Routing as a real MoE layer sees it: uneven expert loads, sorted rows.
    counts = torch.bincount(torch.randint(0, E, (T,)), minlength=E)
    sizes = counts.to(device=device, dtype=torch.int32)
    flops = 2.0 * T * N * K
    shape = f"mixtral tokens={tokens} top{topk} E{E} {K}->{N} {str(dtype)[6:]}"
    starts = [0] + torch.cumsum(counts, 0).tolist()

    def torch_fn():
        return torch.cat([x[starts[e]:starts[e + 1]] @ w[e] for e in range(E)])
    _impl_rows(report, "grouped_matmul", shape, device, (x, w, sizes), {}, torch_fn, flops=flops,
               note="loop over experts")


def _slow_torch(report, op, shape):
    """The torch row of (op, shape) if one call took longer than SLOW_CALL_MS, else None."""
    rows = [r for r in report.rows if (r.op, r.shape, r.impl) == (op, shape, "torch")
            and r.ms > SLOW_CALL_MS]
    return rows[-1] if rows else None


def run(report, device, quick: bool) -> None:
    """Run the preset for the device. Cases past ``POLYKERNELS_BENCH_MATMUL_S`` seconds
    (default 150 on a GPU) are listed as skipped rather than run, so the suite's one GPU
    run (benchmarks/gpu_run.sh, 360 s for every op) still prints and saves its table."""
    budget = float(os.environ.get("POLYKERNELS_BENCH_MATMUL_S",
                                  "150" if device.type == "cuda" else "1e9"))
    start = time.perf_counter()
    skipped = []

    def case(fn, *args, **kw):
        if time.perf_counter() - start > budget:
            skipped.append(kw.get("label") or f"{fn.__name__}{args[:3]}")
            return
        fn(report, device, *args, **kw)

    if device.type != "cuda":
        sizes = (1024,) if quick else (1024, 2048)
        for dtype in (torch.float32, torch.bfloat16):
            for n in sizes:
                slow = _slow_torch(report, "matmul", f"{sizes[0]}x{sizes[0]}x{sizes[0]} {str(dtype)[6:]}")
                if n != sizes[0] and slow is not None:
                    # e.g. bf16 without native bf16 instructions: ~1 min per 2048^3 torch call
                    report.add(op="matmul", shape=f"{n}x{n}x{n} {str(dtype)[6:]}", impl="-",
                               ms=float("nan"), note=f"skipped: torch took {slow.ms / 1e3:.1f} s "
                               f"per call at {sizes[0]}^3 (~{(n / sizes[0]) ** 3:.0f}x that here)")
                    continue
                case(bench_gemm, n, n, n, dtype)
        case(bench_gemm, 64 if quick else 512, 4096, 11008, torch.bfloat16, bias=True,
             activation="gelu", op="linear")
        # int8 per channel: the format torch's own int8 kernel computes (like for like)
        case(bench_weight_only, 1, 4096, 11008, 4)
        case(bench_weight_only, 1, 4096, 11008, 8, group_size=-1)
        # MoE experts at a quarter of Mixtral's width (the full 4096 -> 14336 in bf16 takes
        # torch seconds per call on CPUs without native bf16 GEMMs)
        case(bench_grouped, 16, K=1024, N=3584)
        # int8 GEMM: torch._int_mm (the torch provider's row) runs ~1.3 GOP/s on the AVX2 VM,
        # so the shape stays small
        case(bench_scaled, 64, 2048, 2048, torch.int8)
    else:
        squares = (1024, 4096) if quick else (512, 1024, 2048, 4096, 8192)
        for n in squares:
            case(bench_gemm, n, n, n, torch.bfloat16)
        fp8 = torch.float8_e4m3fnuz if torch.version.hip else torch.float8_e4m3fn
        for tokens in ((16, 2048) if quick else (1, 16, 128, 2048)):
            case(bench_grouped, tokens)
        ms = (1, 128) if quick else (1, 16, 128, 4096)
        for name, K, N in (LLM[:2] if quick else LLM):
            for M in ms:
                case(bench_gemm, M, K, N, torch.bfloat16, op="linear", label=f"{name} M{M} bf16")
                case(bench_weight_only, M, K, N, 4, label=f"{name} ")
                case(bench_scaled, M, K, N, fp8, label=f"{name} ")
    if skipped:
        report.add(op="matmul", shape=f"{len(skipped)} cases", impl="-", ms=float("nan"),
                   note=f"skipped after {budget:.0f} s budget: {', '.join(skipped[:6])} ...")


if __name__ == "__main__":
    main_for(run)
