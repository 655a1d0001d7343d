"""Paged decode attention: every impl available on the device, and the default (unpinned)
call, vs torch (gather the blocks, then SDPA) in the same run.

Byte model: the K and V bytes each sequence attends to (seq_len x heads_kv x head_dim x
element size, twice), which is what decode has to read; q, out and the block table are
noise next to it. GB/s is that over the time, and "% peak" is it over the device READ
bandwidth measured in this run (a sum over a buffer larger than the caches: decode only
reads, so the copy figure, read + write, is not its limit). write_kv_cache rows, which read
and write, use the copy bandwidth.

GPU: batch 1-256 x context 512-32k for Llama-3-8B (32 q / 8 kv heads) and Qwen-2.5-7B
(28 / 4), head dim 128, bf16, block size 16. CPU preset (the issue-5 goal): batch 8, context
4k, 32 / 8 heads, D 128, bf16; the Triton interpreter is never timed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import polykernels as pk
from benchmarks.common import (copy_bandwidth_gbs, impl_rows, main_for, read_bandwidth_gbs, rel_err,
                               upcast)

MODELS = {"llama3-8b": (32, 8), "qwen2.5-7b": (28, 4)}
BLOCK_SIZE = 16
GPU_SHAPES = [(1, 512), (1, 4096), (1, 32768), (8, 4096), (8, 32768), (32, 4096), (64, 8192),
              (256, 512), (256, 2048)]
GPU_QUICK = [(1, 4096), (32, 4096), (256, 512)]
REFERENCE_MAX_TOKENS = 1 << 16  # the reference loops over sequences in fp32: only small runs


def make_inputs(batch, ctx, hq, hkv, dim, dtype, device):
    """Full-length sequences in shuffled blocks (every sequence has ctx tokens)."""
    nblk = ctx // BLOCK_SIZE
    k_cache = torch.randn(batch * nblk, BLOCK_SIZE, hkv, dim, dtype=dtype, device=device)
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(batch * nblk, device=device).to(torch.int32).view(batch, nblk)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=device)
    q = torch.randn(batch, 1, hq, dim, dtype=dtype, device=device)
    return q, k_cache, v_cache, table, seq_lens


def torch_gather_sdpa(q, k_cache, v_cache, table, seq_lens):
    """The baseline a torch user writes: gather each sequence's blocks, then SDPA (all
    sequences are full length here, so no padding mask is needed)."""
    b, nblk = table.shape
    _, bs, hkv, d = k_cache.shape
    k = k_cache[table.long()].view(b, nblk * bs, hkv, d).transpose(1, 2)
    v = v_cache[table.long()].view(b, nblk * bs, hkv, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, enable_gqa=True)
    return out.transpose(1, 2)


def run(report, device, quick: bool) -> None:
    dtype, dim = torch.bfloat16, 128
    if device.type == "cuda":
        cases = [(m, b, c) for m in MODELS for b, c in (GPU_QUICK if quick else GPU_SHAPES)]
        warm = {}
    else:
        cases = [("llama3-8b", 8, 4096 if not quick else 1024)]
        warm = dict(warmup=1, rep=7)   # at least 4 samples for the spread
    bw = read_bandwidth_gbs(device)
    report.add(op="paged_decode", shape="read-bandwidth probe", impl="-", ms=float("nan"),
               note=f"{bw:.1f} GB/s (a sum over a buffer past the caches): the decode rows' % peak")
    for model, batch, ctx in cases:
        hq, hkv = MODELS[model]
        args = make_inputs(batch, ctx, hq, hkv, dim, dtype, device)
        nbytes = 2 * batch * ctx * hkv * dim * args[1].element_size()
        shape = f"{model} B{batch} ctx{ctx} bs{BLOCK_SIZE} {str(dtype)[6:]}"
        small = batch * ctx <= REFERENCE_MAX_TOKENS
        base_out = torch_gather_sdpa(*args)
        if small:
            want = pk.reference.paged_attention(*upcast(args), dim ** -0.5, -1, -1, 0.0, None,
                                                1.0, 1.0)[0]
            err_note = ""
        else:
            want, err_note = base_out, "err vs torch"
        torch_row = dict(nbytes=nbytes, peak_gbs=bw, note="gather + SDPA",
                         max_err=rel_err(base_out, want) if small else None)
        del base_out
        impl_rows(report, "paged_attention", device, args, row_op="paged_decode", shape=shape,
                  baselines={"torch": (lambda: torch_gather_sdpa(*args), torch_row)},
                  reps=warm, err_fn=lambda out: rel_err(out, want),
                  skip=() if small else ("reference",), nbytes=nbytes, peak_gbs=bw, note=err_note)
        del args
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bench_write_kv_cache(report, device, quick, copy_bandwidth_gbs(device))


def bench_write_kv_cache(report, device, quick: bool, bw: float) -> None:
    """write_kv_cache for one step of a decode/prefill batch: every impl vs the torch
    index_put a user would write. Bytes: k and v read, the same written into the caches."""
    dtype, hkv, dim = torch.bfloat16, 8, 128
    tokens_list = (256,) if quick else ((256, 4096) if device.type == "cpu" else (256, 4096, 32768))
    num_blocks = 4096
    for tokens in tokens_list:
        k = torch.randn(tokens, hkv, dim, dtype=dtype, device=device)
        v = torch.randn_like(k)
        k_cache = torch.zeros(num_blocks, BLOCK_SIZE, hkv, dim, dtype=dtype, device=device)
        v_cache = torch.zeros_like(k_cache)
        slots = torch.randperm(num_blocks * BLOCK_SIZE, device=device)[:tokens]
        slots[::17] = -1  # some padding tokens, as a batch with padding has
        keep = slots >= 0
        nbytes = 4 * int(keep.sum()) * hkv * dim * k.element_size()
        shape = f"T{tokens} Hkv{hkv} D{dim} bs{BLOCK_SIZE} {str(dtype)[6:]}"

        def torch_write():
            s = slots[keep]
            k_cache[s // BLOCK_SIZE, s % BLOCK_SIZE] = k[keep]
            v_cache[s // BLOCK_SIZE, s % BLOCK_SIZE] = v[keep]

        torch_write()
        want_k = k_cache.clone()
        impl_rows(report, "write_kv_cache", device, (k, v, k_cache, v_cache, slots), shape=shape,
                  baselines={"torch": (torch_write, dict(nbytes=nbytes, peak_gbs=bw))},
                  setup=k_cache.zero_, err_fn=lambda _: rel_err(k_cache, want_k),
                  nbytes=nbytes, peak_gbs=bw)


if __name__ == "__main__":
    main_for(run)
