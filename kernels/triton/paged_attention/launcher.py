"""Launchers of the paged decode kernels: validate what the kernels assume, allocate,
choose the grid and config, launch. Internal signatures of CONTRIBUTING.md.

triton is imported here, so this module is imported only on first use (register.py).
"""
from __future__ import annotations


import torch
import triton

from ..common import dot_in_fp32, interpreting
from . import heuristics
from .decode_kernel import paged_decode_kernel
from .merge_kernel import merge_two_kernel, reduce_splits_kernel
from .write_kernel import write_kv_kernel

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
CACHE_DTYPES = (torch.float16, torch.bfloat16) + FP8_DTYPES
MAX_HEAD_DIM = 256
MAX_BLOCK_SIZE = 256
# The GQA-packed tile [BLOCK_M, BLOCK_D] fp32 accumulator must stay in registers: up to 4096
# elements compiled spill-free on sm80/sm90/gfx90a/gfx942 (tests/test_codegen_paged.py:
# 16 x 256, 32 x 128, 64 x 64). More rows than that are split over several programs.
MAX_TILE_ELEMS = 4096
# cu_seqlens_q entries the VARLEN kernel checks per step (every program checks them all).
SCAN_SEQS = 128


def _empty(shape, dtype, device) -> torch.Tensor:
    """Every output and scratch buffer comes from here, so tests can poison them (NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _configs(device: torch.device):
    if device.type == "cuda" and torch.version.hip:
        from . import configs_amd as c
    else:
        from . import configs_nvidia as c
    return c


def _scale(x) -> float:
    if x is None:
        return 1.0
    if isinstance(x, torch.Tensor):
        return float(x.item())
    return float(x)


def _pick_decode_config(device, block_m, block_d, cache_bytes, bench_launch):
    cfgs = _configs(device)
    cands = cfgs.candidates(block_m, block_d, cache_bytes)
    if interpreting() or device.type != "cuda":
        return cands[0]
    try:
        from ..autotune import pick_config
    except ImportError:  # the shared autotuner is optional: fall back to the vendor default
        return cands[0]
    bucket = (block_m, block_d, cache_bytes)
    return pick_config("paged_decode", paged_decode_kernel, bucket, cands, bench_launch)


# --------------------------------------------------------------------------- supports

def paged_attention_supports(q, k_cache, v_cache, block_table, seq_lens, softmax_scale,
                             window_left, window_right, softcap, alibi_slopes, k_scale, v_scale,
                             kv_scales=None, sinks=None):
    """None when the Triton decode kernel handles these arguments, else why not."""
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"q dtype {q.dtype} (needs float16 or bfloat16)"
    if k_cache.dtype not in CACHE_DTYPES or v_cache.dtype != k_cache.dtype:
        return f"cache dtypes {k_cache.dtype}/{v_cache.dtype} (need fp16/bf16/fp8 e4m3, equal)"
    if k_cache.dtype in (torch.float16, torch.bfloat16) and k_cache.dtype != q.dtype:
        return f"cache dtype {k_cache.dtype} differs from q dtype {q.dtype}"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head_dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    if k_cache.shape[1] > MAX_BLOCK_SIZE:
        return f"block_size {k_cache.shape[1]} > {MAX_BLOCK_SIZE}"
    if q.device.type != "cuda" and not interpreting():
        return "CPU tensors need TRITON_INTERPRET=1"
    return _fp8_reason(k_cache)


def varlen_paged_attention_supports(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q,
                                    max_seqlen_q, *rest):
    """None when the kernel handles these packed-query arguments, else why not."""
    # q [total_q, Hq, D] seen as one uniform batch for the shared checks
    return paged_attention_supports(q[None], k_cache, v_cache, block_table, seq_lens, *rest)


def _fp8_reason(cache) -> str | None:
    """Triton has fp8 e4m3 on NVIDIA only from sm89; AMD converts on every CDNA target."""
    if cache.dtype in FP8_DTYPES and cache.device.type == "cuda" and not torch.version.hip:
        if cache.dtype != torch.float8_e4m3fn:
            return f"{cache.dtype} cache on NVIDIA (use float8_e4m3fn)"
        if torch.cuda.get_device_capability(cache.device) < (8, 9):
            return "fp8 cache needs compute capability >= 8.9 in Triton"
    return None


def write_kv_cache_supports(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale,
                            kv_scales=None):
    if k_cache.dtype not in CACHE_DTYPES or v_cache.dtype != k_cache.dtype:
        return f"cache dtypes {k_cache.dtype}/{v_cache.dtype} (need fp16/bf16/fp8 e4m3, equal)"
    if k.shape[-1] > 2048:
        return f"head_dim {k.shape[-1]} > 2048"
    if k.device.type != "cuda" and not interpreting():
        return "CPU tensors need TRITON_INTERPRET=1"
    return _fp8_reason(k_cache)


def merge_supports(out_a, lse_a, out_b, lse_b):
    if out_a.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"out dtype {out_a.dtype}"
    if out_a.shape[-1] > 16384:
        return f"head_dim {out_a.shape[-1]} > 16384 (one program per row and head)"
    if out_a.device.type != "cuda" and not interpreting():
        return "CPU tensors need TRITON_INTERPRET=1"
    return None


# --------------------------------------------------------------------------- paged_attention

def paged_attention(q, k_cache, v_cache, block_table, seq_lens, softmax_scale, window_left,
                    window_right, softcap, alibi_slopes, k_scale, v_scale, kv_scales=None,
                    sinks=None, *, num_splits=None, out=None, lse=None):
    """Paged attention, q_len new tokens per sequence.

    q [num_seqs, q_len, Hq, D] fp16/bf16, any strides; k_cache/v_cache [num_blocks,
    block_size, Hkv, D] (q's dtype, or fp8 e4m3 dequantised as value * k_scale / v_scale);
    block_table int32 [num_seqs, max_blocks]; seq_lens int32 [num_seqs], each >= q_len or 0
    (a padded slot). Query token t of sequence s sits at position seq_lens[s] - q_len + t and
    attends causally, narrowed by window_left (window_right is irrelevant under causality).
    alibi_slopes fp32 [Hq] or [num_seqs, Hq]. kv_scales: optional fp32 [2, Hkv] per-KV-head
    factors of k_scale / v_scale (fp8 caches). Returns out [num_seqs, q_len, Hq, D] (q dtype)
    and lse fp32 [num_seqs, Hq, q_len] (-inf and out 0 for a row with no visible key).

    ``num_splits`` forces the number of KV splits (tests); None picks it from the batch,
    the context bound (max_blocks * block_size, no device sync) and the multiprocessors.
    ``out`` / ``lse``: the caller's buffers (paged_attention_out), written in place.
    """
    num_seqs, q_len, hq, dim = q.shape
    o, l = _results(out, lse, (num_seqs, q_len, hq, dim), (num_seqs, hq, q_len), q)
    if o.numel() != 0:
        _launch_paged(q, q.stride(), None, q_len, q_len, o, l, k_cache, v_cache, block_table,
                      seq_lens, softmax_scale, window_left, softcap, alibi_slopes, k_scale, v_scale,
                      kv_scales, sinks, num_splits)
    return _deliver(o, l, out, lse)


def _results(out, lse, out_shape, lse_shape, q):
    """Where the kernels write: the caller's buffers when contiguous (the kernels derive
    their offsets), else scratch that _deliver copies back."""
    o = out if out is not None and out.is_contiguous() else _empty(out_shape, q.dtype, q.device)
    l = lse if lse is not None and lse.is_contiguous() else _empty(lse_shape, torch.float32, q.device)
    return o, l


def _deliver(o, l, out, lse):
    if out is not None and o is not out:
        out.copy_(o)
    if lse is not None and l is not lse:
        lse.copy_(l)
    return (o if out is None else out), (l if lse is None else lse)


def varlen_paged_attention(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q,
                           max_seqlen_q, softmax_scale, window_left, window_right, softcap,
                           alibi_slopes, k_scale, v_scale, kv_scales=None, sinks=None, *,
                           num_splits=None, out=None, lse=None):
    """Packed variable-length queries over the paged cache, one launch for the batch.

    q [total_q, Hq, D]; sequence s owns tokens cu_seqlens_q[s]..cu_seqlens_q[s + 1] (any
    count >= 0, at most max_seqlen_q, which sizes the grid: no device sync), its last
    positions. Everything else as ``paged_attention``. Returns out [total_q, Hq, D] and lse
    fp32 [Hq, total_q].
    """
    total_q, hq, dim = q.shape
    o, l = _results(out, lse, (total_q, hq, dim), (hq, total_q), q)
    if o.numel() != 0:
        # max_seqlen_q == 0 with rows to fill is a wrong index argument: the kernel still runs
        # (one row chunk) to find it and write NaN (see paged_decode_kernel).
        cu_q = cu_seqlens_q.to(torch.int32).contiguous()  # indexed without a stride (tiny)
        _launch_paged(q, (0,) + tuple(q.stride()), cu_q, total_q, int(max_seqlen_q), o, l,
                      k_cache, v_cache, block_table, seq_lens, softmax_scale, window_left, softcap,
                      alibi_slopes, k_scale, v_scale, kv_scales, sinks, num_splits)
    return _deliver(o, l, out, lse)


def _launch_paged(q, q_strides, cu_q, q_len, max_q, out, lse, k_cache, v_cache, block_table,
                  seq_lens, softmax_scale, window_left, softcap, alibi_slopes, k_scale, v_scale,
                  kv_scales, sinks, num_splits):
    """Shared by both paged ops. Uniform (cu_q None): ``q_len`` tokens per sequence, out
    [num_seqs, q_len, Hq, D], lse [num_seqs, Hq, q_len]. Packed: ``q_len`` is total_q, out
    [total_q, Hq, D], lse [Hq, total_q]; ``max_q`` bounds the per-sequence query count."""
    num_seqs = seq_lens.shape[0]
    hq, dim = q.shape[-2:]
    num_blocks, block_size, hkv, _ = k_cache.shape
    group = hq // hkv
    rows = max(max_q, 1) * group
    block_d = max(16, triton.next_power_of_2(dim))
    block_m = max(16, min(triton.next_power_of_2(rows), MAX_TILE_ELEMS // block_d))
    row_chunks = triton.cdiv(rows, block_m)
    fp8 = k_cache.dtype in FP8_DTYPES
    qk_scale = float(softmax_scale) * (_scale(k_scale) if fp8 else 1.0)
    vs = _scale(v_scale) if fp8 else 1.0
    has_window = window_left is not None and window_left >= 0
    wl = int(window_left) if has_window else 0
    has_softcap = softcap is not None and softcap > 0
    varlen = cu_q is not None
    kvs = kv_scales.to(torch.float32).contiguous() if fp8 and kv_scales is not None else None
    sinks = sinks.to(torch.float32).contiguous() if sinks is not None else None

    if alibi_slopes is not None:
        alibi = alibi_slopes
        sa = (alibi.stride(0), alibi.stride(1)) if alibi.dim() == 2 else (0, alibi.stride(0))
    else:
        alibi, sa = q, (0, 0)  # dummy pointer, never read (HAS_ALIBI False)
    block_table = block_table if block_table.dtype == torch.int32 else block_table.to(torch.int32)
    if block_table.stride(1) != 1:
        # Unit column stride, as serving engines allocate it: the JIT then specialises it
        # away, and that is the variant the codegen tests prove spill-free (on gfx90a the
        # scalar arguments are at the SGPR limit).
        block_table = block_table.contiguous()
    # The kernel indexes seq_lens without a stride: a strided view is made contiguous (tiny).
    seq_lens = seq_lens.to(torch.int32).contiguous()

    def launch(cfg, splits, o, l):
        paged_decode_kernel[(num_seqs, hkv * row_chunks, splits)](
            q, k_cache, v_cache, block_table, seq_lens, cu_q if varlen else seq_lens, alibi,
            kvs if kvs is not None else seq_lens, sinks if sinks is not None else seq_lens, o, l,
            qk_scale, vs, float(softcap) if has_softcap else 1.0, wl,
            q_len, group, dim, block_size, splits, row_chunks, num_blocks, block_table.shape[1],
            *q_strides, *k_cache.stride(), *v_cache.stride(),
            *block_table.stride(), *sa,
            BLOCK_M=block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d,
            HAS_WINDOW=has_window, HAS_SOFTCAP=has_softcap, HAS_ALIBI=alibi_slopes is not None,
            DOT_FP32=dot_in_fp32(q.dtype), VARLEN=varlen, HAS_KV_SCALES=kvs is not None,
            HAS_SINKS=sinks is not None, SCAN=SCAN_SEQS, MULTI_TOKEN=max_q > 1,
            **cfg.launch_options())

    def bench_one(cfg):
        return triton.testing.do_bench(lambda: launch(cfg, 1, out, lse))

    cfg = _pick_decode_config(q.device, block_m, block_d, k_cache.element_size(), bench_one)
    if num_splits is None:
        context = block_table.shape[1] * block_size
        if has_window:
            context = min(context, wl + max_q)
        num_splits = heuristics.num_splits(num_seqs, hkv * row_chunks, context,
                                           heuristics.multiprocessor_count(q.device), cfg.block_n)
    if num_splits <= 1:
        launch(cfg, 1, out, lse)
        return

    # fp32 partials in the kernel's layout; the reduce sees both layouts as
    # [num_seqs', num_splits, tokens, Hq, D] / [num_seqs', num_splits, Hq, tokens] views.
    if varlen:
        po = _empty((num_splits, q_len, hq, dim), torch.float32, q.device)
        pl = _empty((num_splits, hq, q_len), torch.float32, q.device)
        po5, pl4, o4, l3, n_rows = po[None], pl[None], out[None], lse[None], q_len
    else:
        po = _empty((num_seqs, num_splits, q_len, hq, dim), torch.float32, q.device)
        pl = _empty((num_seqs, num_splits, hq, q_len), torch.float32, q.device)
        po5, pl4, o4, l3, n_rows = po, pl, out, lse, num_seqs * q_len
    launch(cfg, num_splits, po, pl)
    rcfg = _configs(q.device).reduce_config()
    reduce_splits_kernel[(n_rows, hq)](
        po5, pl4, o4, l3, sinks if sinks is not None else pl4, num_splits, q_len, dim,
        *po5.stride(), *pl4.stride(), *o4.stride(), *l3.stride(),
        BLOCK_S=max(2, triton.next_power_of_2(num_splits)), BLOCK_D=block_d,
        HAS_SINKS=sinks is not None, **rcfg.launch_options())


# --------------------------------------------------------------------------- write_kv_cache

def write_kv_cache(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale, kv_scales=None):
    """Scatter k, v [T, Hkv, D] into k_cache/v_cache [num_blocks, block_size, Hkv, D] in place
    at ``slot_mapping`` [T] (int32/int64; slot = block * block_size + offset, -1 = padding,
    skipped). fp8 caches store value / scale (per KV head with kv_scales fp32 [2, Hkv]),
    saturated to the format's largest finite value."""
    t, hkv, dim = k.shape
    if t == 0:
        return None
    quant = k_cache.dtype in FP8_DTYPES
    kvs = kv_scales.to(torch.float32).contiguous() if quant and kv_scales is not None else None
    slot_mapping = slot_mapping.contiguous()  # indexed without a stride (no copy when contiguous)
    fp8_max = torch.finfo(k_cache.dtype).max if quant else 0.0
    cfg = _configs(k.device).write_config()
    block_d = triton.next_power_of_2(dim)
    block_h = min(triton.next_power_of_2(hkv), max(1, 2048 // block_d))  # <= 2048 elements a tile
    write_kv_kernel[(t, triton.cdiv(hkv, block_h))](
        k, v, k_cache, v_cache, slot_mapping, kvs if kvs is not None else slot_mapping,
        1.0 / _scale(k_scale) if quant else 1.0, 1.0 / _scale(v_scale) if quant else 1.0,
        float(fp8_max), hkv, dim, k_cache.shape[1], k_cache.shape[0] * k_cache.shape[1],
        *k.stride(), *v.stride(), *k_cache.stride(), *v_cache.stride(),
        BLOCK_H=block_h, BLOCK_D=block_d, QUANT=quant,
        ROUND_FP8=quant and interpreting(),
        FP8_MIN_EXP=-7 if k_cache.dtype == torch.float8_e4m3fnuz else -6,
        HAS_KV_SCALES=kvs is not None, **cfg.launch_options())
    return None


# --------------------------------------------------------------------------- merge

def merge_attention_states(out_a, lse_a, out_b, lse_b):
    """Merge two partial attention states over disjoint key sets.

    out_* [..., S, H, D] (fp16/bf16/fp32, ndim 3 or 4, any strides), lse_* fp32 [..., H, S].
    Returns (out in out_a's dtype, contiguous; lse fp32). Both lse -inf gives 0 / -inf.
    """
    batched = out_a.dim() == 4
    out = _empty(out_a.shape, out_a.dtype, out_a.device)
    lse = _empty(lse_a.shape, torch.float32, out_a.device)
    if out.numel() == 0:
        lse.copy_(torch.logaddexp(lse_a.float(), lse_b.float()))  # -inf, -inf -> -inf
        return out, lse
    if not batched:
        oa, ob, o = (x.unsqueeze(0) for x in (out_a, out_b, out))
        la, lb, l_ = (x.unsqueeze(0) for x in (lse_a, lse_b, lse))
    else:
        oa, ob, o, la, lb, l_ = out_a, out_b, out, lse_a, lse_b, lse
    nb, rows, heads, dim = oa.shape
    cfg = _configs(out_a.device).reduce_config()
    merge_two_kernel[(nb * rows, heads)](
        oa, la, ob, lb, o, l_, rows, dim,
        *oa.stride(), *ob.stride(), *o.stride(), *la.stride(), *lb.stride(), *l_.stride(),
        BLOCK_D=triton.next_power_of_2(dim),
        **cfg.launch_options())
    return out, lse
