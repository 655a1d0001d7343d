"""Mixed serving batch over a paged KV cache (issue 12): pk.varlen_paged_attention, every impl
available on the device and the default (unpinned) call, vs the torch formulations a user
writes, in the same run.

Workload: prefill chunks of 512 query tokens (sequences of ``ctx`` cached tokens whose last 512
positions are the queries: chunked prefill over a cached prefix) and decode rows (1 query over
``ctx`` tokens) in one packed call; Llama-3-8B heads (32 q / 8 kv), head dim 128, bf16, block
size 16, shuffled block table (each sequence's blocks scattered over the whole cache).
  GPU: 4 x 512 prefill + 60 decode at ctx 4k (the issue-12 shape), and the same at ctx 16k
       (--quick: ctx 4k only).
  CPU (2-core budget, < ~60 s for this script): the issue-12 mix at ctx 2k
       (4 x 512 prefill + 60 decode; its calls take > 1 s, so each row is one timed call after
       a warm-up: no spread); --quick: 2 x 256 prefill + 14 decode at ctx 1k.

Rows: "torch": per sequence, gather its blocks (``k_cache[block_table[s, :nblk]]``) and call
SDPA on its queries with the bottom-right causal mask (decode rows: no mask);
"torch:batched-decode": the prefill chunks the same way, all decode rows gathered into one
padded batch and one SDPA call (a key-padding mask where lengths differ). Each torch path's
GQA formulation is the fastest on this device of enable_gqa=True, repeat_interleave of K/V,
and "fold" (the group's q heads as extra query rows of their kv head), chosen per kind of row
(prefill / decode) by timing them at the start of the run and named in the row's note (on the
AVX2 CPU the fold wins decode rows by 3-8x; for prefill chunks it ties with or beats
enable_gqa, depending on size; on CUDA enable_gqa with causal_lower_right is flash).
Then each pk impl pinned, then
"default". The reference impl is too slow to time; it checks the output instead: "rel err" is
every row's max |error| / max |ref| against the reference (fp32, on fp32 copies) on a subset
of the batch (one prefill chunk and two decode rows), "err/tol" that over the torch rows'. "vs base" is against the fastest torch row of the same run.

FLOP model: 4 x heads_q x D per visible (query, key) pair (bottom-right causal). Bytes: the
K and V each sequence attends to (what decode rows must read); both are reported, no roofline
(a mixed batch is compute-bound in its prefill part and bandwidth-bound in its decode part).

Goal: CPU >= 5x the best torch formulation; GPU >= 0.9x FlashAttention-class throughput
(pending a device).
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

import polykernels as pk
from benchmarks.common import impl_rows, main_for, rel_err, time_rows

MODEL, HQ, HKV = "llama3-8b", 32, 8
DIM, DTYPE, BLOCK_SIZE = 128, torch.bfloat16, 16
# (prefill chunks, chunk length, decode rows, context): the issue-12 mix and its variants
GPU_CASES = [(4, 512, 60, 4096), (4, 512, 60, 16384)]
GPU_QUICK = [(4, 512, 60, 4096)]
CPU_CASES = [(4, 512, 60, 2048)]
CPU_QUICK = [(2, 256, 14, 1024)]
GQA_MODES = ("enable_gqa", "repeat_interleave", "fold")


def make_batch(q_lens, seq_lens, device, seed=0):
    """Packed queries and a paged cache holding exactly the batch's blocks, shuffled (drawn on
    the device: the 16k GPU case has 2 x 2 GiB of cache)."""
    torch.manual_seed(seed)
    nblk = [-(-n // BLOCK_SIZE) for n in seq_lens]
    k_cache = torch.randn(sum(nblk), BLOCK_SIZE, HKV, DIM, dtype=DTYPE, device=device)
    v_cache = torch.randn_like(k_cache)
    perm = torch.randperm(sum(nblk)).to(torch.int32)
    table = torch.zeros(len(seq_lens), max(nblk), dtype=torch.int32)
    start = 0
    for s, n in enumerate(nblk):
        table[s, :n] = perm[start:start + n]
        start += n
    cu = torch.tensor([0] + q_lens, dtype=torch.int64).cumsum(0).to(torch.int32)
    q = torch.randn(int(cu[-1]), HQ, DIM, dtype=DTYPE, device=device)
    return (q, k_cache, v_cache, table.to(device),
            torch.tensor(seq_lens, dtype=torch.int32, device=device), cu.to(device))


def _gather(cache, blocks, n):
    """One sequence's keys or values [n, heads_kv, D] (blocks: int64 block ids)."""
    return cache[blocks].reshape(-1, *cache.shape[2:])[:n]


def _sdpa(q, k, v, mode, q_len, seq_len, pad_mask=None):
    """Attention of q [B, q_len, Hq, D] (the last q_len positions) over k/v [B, seq_len, Hkv, D]
    with the bottom-right causal mask, in GQA formulation ``mode``; pad_mask [B, seq_len] bool
    (True = a key to keep), decode rows only. Returns [B, q_len, Hq, D]."""
    b, hkv, d = q.shape[0], k.shape[2], q.shape[-1]
    group = q.shape[2] // hkv
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    causal = q_len > 1
    if mode == "fold":   # q heads h = kv * group + j: the group's rows attend to their kv head
        qf = q.view(b, q_len, hkv, group, d).permute(0, 2, 3, 1, 4)
        qf = qf.reshape(b, hkv, group * q_len, d)
        mask = None
        if causal:
            mask = torch.ones(q_len, seq_len, dtype=torch.bool, device=q.device).tril(
                seq_len - q_len).repeat(group, 1)
        elif pad_mask is not None:
            mask = pad_mask[:, None, None, :]
        o = F.scaled_dot_product_attention(qf, k, v, attn_mask=mask)
        o = o.view(b, hkv, group, q_len, d).permute(0, 3, 1, 2, 4)
        return o.reshape(b, q_len, hkv * group, d)
    gqa = mode == "enable_gqa"
    if not gqa:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    mask = pad_mask[:, None, None, :] if pad_mask is not None else None
    if causal and q_len == seq_len:
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, is_causal=True, enable_gqa=gqa)
    else:
        if causal:   # CUDA: flash with bottom-right causal, nothing materialised; CPU: a bool mask
            from torch.nn.attention.bias import causal_lower_right
            mask = causal_lower_right(q_len, seq_len)
        with warnings.catch_warnings():   # causal_lower_right warns when it materialises
            warnings.simplefilter("ignore")
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask,
                                               enable_gqa=gqa)
    return o.transpose(1, 2)


class TorchPaths:
    """The torch formulations of one batch. Host-side metadata (query offsets, lengths, block
    ids as int64) is prepared once, as a serving engine keeps it."""

    def __init__(self, q, k_cache, v_cache, table, seq_lens, cu):
        self.q, self.k_cache, self.v_cache = q, k_cache, v_cache
        self.cu, self.lens = cu.tolist(), seq_lens.tolist()
        self.blocks = [table[s, :-(-n // BLOCK_SIZE)].long() for s, n in enumerate(self.lens)]
        self.prefill = [s for s in range(len(self.lens)) if self.cu[s + 1] - self.cu[s] > 1]
        self.decode = [s for s in range(len(self.lens)) if self.cu[s + 1] - self.cu[s] == 1]
        self.mode = {"prefill": "enable_gqa", "decode": "enable_gqa", "batched": "enable_gqa"}
        # the batched decode rows: one padded [n, max_len] gather (padding blocks: block 0,
        # masked out), the queries in one tensor
        if self.decode:
            nmax = max(len(self.blocks[s]) for s in self.decode)
            ids = torch.zeros(len(self.decode), nmax, dtype=torch.long, device=q.device)
            for i, s in enumerate(self.decode):
                ids[i, :len(self.blocks[s])] = self.blocks[s]
            self.dec_ids, self.dec_rows = ids, torch.tensor([self.cu[s] for s in self.decode],
                                                             device=q.device)
            lens = torch.tensor([self.lens[s] for s in self.decode], device=q.device)
            pos = torch.arange(nmax * BLOCK_SIZE, device=q.device)
            self.dec_mask = None if len(set(lens.tolist())) == 1 else pos[None] < lens[:, None]
            self.dec_len = max(self.lens[s] for s in self.decode)

    def one(self, s, mode):
        """Sequence s's output [q_len, Hq, D]."""
        a, b, n = self.cu[s], self.cu[s + 1], self.lens[s]
        k = _gather(self.k_cache, self.blocks[s], n)
        v = _gather(self.v_cache, self.blocks[s], n)
        return _sdpa(self.q[a:b][None], k[None], v[None], mode, b - a, n)[0]

    def batched_decode(self, mode):
        """All decode rows in one padded SDPA call: [num_decode, Hq, D]."""
        n = self.dec_len
        k = self.k_cache[self.dec_ids].flatten(1, 2)[:, :n]
        v = self.v_cache[self.dec_ids].flatten(1, 2)[:, :n]
        mask = None if self.dec_mask is None else self.dec_mask[:, :n]
        return _sdpa(self.q[self.dec_rows][:, None], k, v, mode, 1, n, mask)[:, 0]

    def per_sequence(self):
        out = torch.empty_like(self.q)
        for s in self.prefill:
            out[self.cu[s]:self.cu[s + 1]] = self.one(s, self.mode["prefill"])
        for s in self.decode:
            out[self.cu[s]:self.cu[s + 1]] = self.one(s, self.mode["decode"])
        return out

    def with_batched_decode(self):
        out = torch.empty_like(self.q)
        for s in self.prefill:
            out[self.cu[s]:self.cu[s + 1]] = self.one(s, self.mode["prefill"])
        if self.decode:
            out[self.dec_rows] = self.batched_decode(self.mode["batched"])
        return out

    def choose_gqa_modes(self, device) -> None:
        """Time each GQA formulation on this device (prefill: the first chunk; decode: the
        first row; batched: all decode rows) and keep the fastest of each."""
        kinds = {"prefill": lambda m: self.one(self.prefill[0], m) if self.prefill else None,
                 "decode": lambda m: self.one(self.decode[0], m) if self.decode else None,
                 "batched": lambda m: self.batched_decode(m) if self.decode else None}
        cpu_prefill = torch.device(device).type == "cpu"
        for kind, fn in kinds.items():
            fns = {m: (lambda m=m: fn(m)) for m in GQA_MODES}
            # a CPU prefill chunk takes ~0.1-1 s: one warm-up and 2 rounds; the rest are cheap
            slow = kind == "prefill" and cpu_prefill
            reps = dict(warmup=1, rep=2) if slow else dict(warmup=2, rep=5)
            ms = time_rows(fns, device, **reps)
            self.mode[kind] = min(ms, key=ms.get)

    def notes(self) -> dict:
        m = self.mode
        return {"torch": f"per-seq gather+SDPA; gqa: prefill {m['prefill']}, decode {m['decode']}",
                "torch:batched-decode": (f"decode rows in 1 SDPA; gqa: prefill {m['prefill']}, "
                                         f"decode {m['batched']}")}


def workload_size(q_lens, seq_lens):
    """(FLOPs, K+V bytes): 4 * Hq * D per visible pair; each sequence's K and V once."""
    pairs = sum(ql * (n - ql) + ql * (ql + 1) // 2 for ql, n in zip(q_lens, seq_lens))
    return 4.0 * HQ * DIM * pairs, 2.0 * sum(seq_lens) * HKV * DIM * DTYPE.itemsize


def reference_rows(args, seqs):
    """The reference's output for sequences ``seqs`` only, and their q row ranges."""
    q, k_cache, v_cache, table, seq_lens, cu = args
    cu_l = cu.tolist()
    rows = [(cu_l[s], cu_l[s + 1]) for s in seqs]
    sub_q = torch.cat([q[a:b] for a, b in rows])
    sub_cu = torch.tensor([0] + [b - a for a, b in rows], dtype=torch.int64).cumsum(0)
    sub_cu = sub_cu.to(torch.int32).to(q.device)
    idx = torch.tensor(seqs, device=q.device)
    # the checked sequences' blocks only, upcast to fp32 (the reference then computes in fp32
    # and returns fp32: an oracle more precise than every timed row)
    sub_table = table[idx].long()
    k_sub = k_cache[sub_table].flatten(0, 1).float()
    v_sub = v_cache[sub_table].flatten(0, 1).float()
    new_table = torch.arange(k_sub.shape[0], device=q.device, dtype=torch.int32).view(sub_table.shape)
    with pk.use(varlen_paged_attention="reference"):
        out = pk.varlen_paged_attention(sub_q.float(), k_sub, v_sub, new_table, seq_lens[idx],
                                        sub_cu, max(b - a for a, b in rows))
    return out, rows


def run(report, device, quick: bool) -> None:
    if device.type == "cuda":
        cases, reps = (GPU_QUICK if quick else GPU_CASES), {}
    else:
        cases, reps = (CPU_QUICK if quick else CPU_CASES), dict(warmup=1, rep=5)
    for n_pre, chunk, n_dec, ctx in cases:
        q_lens, seq_lens = [chunk] * n_pre + [1] * n_dec, [ctx] * (n_pre + n_dec)
        args = make_batch(q_lens, seq_lens, device)
        kwargs = dict(max_seqlen_q=max(q_lens))   # a serving engine knows it: no host sync
        flops, nbytes = workload_size(q_lens, seq_lens)
        shape = (f"{MODEL} {n_pre}x{chunk}pre+{n_dec}dec ctx{ctx} bs{BLOCK_SIZE} "
                 f"{str(DTYPE)[6:]}")
        paths = TorchPaths(*args)
        paths.choose_gqa_modes(device)
        checked = ([0] if n_pre else []) + list(range(n_pre, n_pre + min(n_dec, 2)))
        want, rows = reference_rows(args, checked)

        def err(out):
            return rel_err(torch.cat([out[a:b] for a, b in rows]), want)

        notes = paths.notes()
        baselines = {}
        for name, fn in (("torch", paths.per_sequence),
                         ("torch:batched-decode", paths.with_batched_decode)):
            e = err(fn())   # the check call; also a warm-up
            baselines[name] = (fn, dict(flops=flops, nbytes=nbytes, max_err=e, note=notes[name]))
        impl_rows(report, "varlen_paged_attention", device, args, kwargs, row_op="varlen_paged",
                  shape=shape, baselines=baselines, reps=reps, err_fn=err, skip=("reference",),
                  baseline=None, flops=flops, nbytes=nbytes)
        vs_best_torch(report, "varlen_paged", shape)
        del args, paths
        if device.type == "cuda":
            torch.cuda.empty_cache()


def vs_best_torch(report, op: str, shape: str) -> None:
    """Every row's ratio against the fastest torch row of its workload (the torch rows are the
    ones named "torch" or "torch:<variant>"; "pk:torch" is the torch provider impl)."""
    rows = [r for r in report.rows if r.op == op and r.shape == shape]
    torch_rows = [r for r in rows if (r.impl == "torch" or r.impl.startswith("torch:"))
                  and math.isfinite(r.ms)]
    if not torch_rows:
        return
    best = min(torch_rows, key=lambda r: r.ms)
    for r in rows:
        if r is not best and math.isfinite(r.ms) and r.ms > 0:
            r.baseline, r.vs_baseline = best.impl, best.ms / r.ms


if __name__ == "__main__":
    main_for(run)
