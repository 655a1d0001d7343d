"""CPU attention kernels (impl "cpp") vs torch in the same run, timings interleaved.

The shared CPU is noisy (other processes), so each case alternates one call of every
contender per round and reports the median per contender: the ratio "vs torch" compares
calls made under the same load.

Prefill (issue-5 goals): B1 H8 S1024 D128, bf16 and fp32, causal and not; baseline
torch SDPA on [B, H, S, D] views. FLOPs = 4 * B * H * Sq * Sk * D (halved when causal).
Decode: 8 sequences x 4096 context, 32 query / 8 KV heads, D128, bf16 paged cache
(block 16); baseline = torch gather of the blocks + SDPA (enable_gqa). Bytes = K + V cache
bytes the sequences cover (each read once); % peak = of the copy bandwidth measured now.

The "cpp" rows call the C++ ops directly; "default" is the public call unpinned (dispatch
included) and "pk:torch" the torch provider pinned, where registered. The fp8-cache row is a
variant (half the bytes), not a contender for the best time.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import polykernels as pk
from benchmarks.common import (DEFAULT, contenders, copy_bandwidth_gbs, main_for, max_abs_err, picked,
                               pinned_call, time_interleaved)


def _pk_fns(op, args, kwargs=None):
    """Public-API contenders: the torch provider pinned ("pk:torch", where registered and
    accepting) and the default (unpinned) call, each a zero-argument function."""
    kwargs = kwargs or {}
    return {name: pinned_call(choices, getattr(pk, op), *args, **kwargs)
            for name, choices, refused in contenders(op, "cpu", args, kwargs)
            if refused is None and (choices is None or choices[op] == "torch")}


def _add_pk_rows(report, ms, call, **add_kw):
    """Rows for the ``_pk_fns`` contenders timed in ``ms``; ``call`` = (op, args, kwargs)."""
    op, args, kwargs = call
    for name in (DEFAULT, "pk:torch"):
        if name in ms:
            report.add(impl=name, ms=ms[name], baseline="torch",
                       picked=picked(op, *args, **kwargs) if name == DEFAULT else None, **add_kw)


def _prefill(report, quick):
    C = torch.ops.polykernels_C
    B, H, S, D = (1, 8, 256, 128) if quick else (1, 8, 1024, 128)
    for dtype in (torch.bfloat16, torch.float32):
        q, k, v = (torch.randn(B, H, S, D, dtype=dtype).transpose(1, 2) for _ in range(3))
        for causal in (False, True):
            scale = 1 / math.sqrt(D)
            fns = {
                "torch": lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                                v.transpose(1, 2), is_causal=causal),
                "cpp": lambda: C.cpu_attention_fwd(q, k, v, causal, scale, -1, -1, 0.0, None),
                **_pk_fns("attention", (q, k, v), dict(causal=causal)),
            }
            ms = time_interleaved(fns, rounds=3 if quick else 9)
            err = max_abs_err(fns["cpp"]()[0], fns["torch"]().transpose(1, 2))
            flops = 4 * B * H * S * S * D / (2 if causal else 1)
            shape = f"B{B} H{H} S{S} D{D} {str(dtype)[6:]} {'causal' if causal else 'full'}"
            report.add(op="attention", shape=shape, impl="torch", ms=ms["torch"], flops=flops)
            report.add(op="attention", shape=shape, impl="cpp", ms=ms["cpp"], flops=flops,
                       baseline="torch", max_err=err)
            _add_pk_rows(report, ms, ("attention", (q, k, v), dict(causal=causal)), op="attention",
                         shape=shape, flops=flops)


def _decode(report, quick, device):
    C = torch.ops.polykernels_C
    S, ctx, Hq, Hk, D, bs = (8, 1024, 32, 8, 128, 16) if quick else (8, 4096, 32, 8, 128, 16)
    dtype = torch.bfloat16
    nb = S * ctx // bs
    k_cache = torch.randn(nb, bs, Hk, D, dtype=dtype)
    v_cache = torch.randn(nb, bs, Hk, D, dtype=dtype)
    block_table = torch.randperm(nb, dtype=torch.int32).reshape(S, ctx // bs)
    seq_lens = torch.full((S,), ctx, dtype=torch.int32)
    q = torch.randn(S, 1, Hq, D, dtype=dtype)
    scale = 1 / math.sqrt(D)

    def torch_gather_sdpa():
        bt = block_table.long()
        k = k_cache[bt].reshape(S, ctx, Hk, D).transpose(1, 2)
        v = v_cache[bt].reshape(S, ctx, Hk, D).transpose(1, 2)
        return F.scaled_dot_product_attention(q.transpose(1, 2), k, v, enable_gqa=True).transpose(1, 2)

    fns = {"torch": torch_gather_sdpa,
           "cpp": lambda: C.cpu_paged_attention(q, k_cache, v_cache, block_table, seq_lens, scale, -1, -1,
                                                0.0, None, 1.0, 1.0)}
    # fp8 cache: half the bytes (values / scale, scale 1 here: randn fits e4m3's range)
    k8, v8 = k_cache.float().to(torch.float8_e4m3fn), v_cache.float().to(torch.float8_e4m3fn)
    fns["cpp fp8 cache"] = lambda: C.cpu_paged_attention(q, k8, v8, block_table, seq_lens, scale, -1, -1,
                                                         0.0, None, 1.0, 1.0)
    paged_args = (q, k_cache, v_cache, block_table, seq_lens)
    fns.update(_pk_fns("paged_attention", paged_args))
    bw = copy_bandwidth_gbs(device)
    ms = time_interleaved(fns, rounds=5 if quick else 15)
    err = max_abs_err(fns["cpp"]()[0], fns["torch"]())
    nbytes = 2 * S * ctx * Hk * D * 2
    shape = f"seqs{S} ctx{ctx} {Hq}q/{Hk}kv D{D} bf16 block{bs}"
    report.add(op="paged_attention", shape=shape, impl="torch", ms=ms["torch"], nbytes=nbytes, peak_gbs=bw,
               note="gather + SDPA")
    report.add(op="paged_attention", shape=shape, impl="cpp", ms=ms["cpp"], nbytes=nbytes, peak_gbs=bw,
               baseline="torch", max_err=err, note=f"copy bw {bw:.1f} GB/s")
    report.add(op="paged_attention", shape=shape, impl="cpp fp8 cache", ms=ms["cpp fp8 cache"],
               nbytes=nbytes // 2, peak_gbs=bw, baseline="torch", contender=False)
    _add_pk_rows(report, ms, ("paged_attention", paged_args, {}), op="paged_attention", shape=shape,
                 nbytes=nbytes, peak_gbs=bw)

    # One thread each (the per-core picture; on a shared, oversubscribed machine a 2-thread
    # call can wait for a descheduled worker thread, which short decode calls feel most).
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        src = torch.empty(64 << 20, dtype=torch.float32).uniform_()
        dst = torch.empty_like(src)
        fns1 = {"torch": fns["torch"], "cpp": fns["cpp"], "copy": lambda: dst.copy_(src),
                **{n: f for n, f in fns.items() if n in (DEFAULT, "pk:torch")}}
        ms1 = time_interleaved(fns1, rounds=5 if quick else 15)
        bw1 = 2 * src.numel() * 4 / (ms1["copy"] * 1e-3) / 1e9
    finally:
        torch.set_num_threads(prev)
    shape1 = shape + " 1 thread"
    report.add(op="paged_attention", shape=shape1, impl="torch", ms=ms1["torch"], nbytes=nbytes, peak_gbs=bw1,
               note="gather + SDPA")
    report.add(op="paged_attention", shape=shape1, impl="cpp", ms=ms1["cpp"], nbytes=nbytes, peak_gbs=bw1,
               baseline="torch", note=f"1-thread copy bw {bw1:.1f} GB/s")
    _add_pk_rows(report, ms1, ("paged_attention", paged_args, {}), op="paged_attention", shape=shape1,
                 nbytes=nbytes, peak_gbs=bw1)


def run(report, device, quick: bool) -> None:
    if torch.device(device).type != "cpu":
        return  # CPU kernels only
    from polykernels import _extension
    if _extension.unavailable_reason():
        print(f"bench_cpu_attention: skipped: {_extension.unavailable_reason()}")
        return
    _prefill(report, quick)
    _decode(report, quick, device)


if __name__ == "__main__":
    main_for(run)
