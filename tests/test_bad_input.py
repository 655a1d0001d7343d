"""Bad input to every public op raises ValueError/TypeError naming the offending argument,
before any implementation runs (write_kv_cache: the caches are left bit-identical).

Each case starts from a valid call and breaks one thing; ``meta`` is the second device.
"""
from __future__ import annotations

import importlib

import pytest
import torch

import polykernels as pk

F32, BF16 = torch.float32, torch.bfloat16
META = torch.device("meta")


def attn_args(**over):
    a = {"q": torch.randn(2, 5, 4, 8), "k": torch.randn(2, 7, 2, 8), "v": torch.randn(2, 7, 2, 8)}
    kw = {k: over.pop(k) for k in list(over) if k not in a}
    a.update(over)
    return (a["q"], a["k"], a["v"]), kw


def varlen_args(**over):
    a = {"q": torch.randn(7, 4, 8), "k": torch.randn(9, 2, 8), "v": torch.randn(9, 2, 8),
         "cu_seqlens_q": torch.tensor([0, 3, 7], dtype=torch.int32),
         "cu_seqlens_k": torch.tensor([0, 4, 9], dtype=torch.int32),
         "max_seqlen_q": 4, "max_seqlen_k": 5}
    kw = {k: over.pop(k) for k in list(over) if k not in a}
    a.update(over)
    return tuple(a.values()), kw


def paged_args(**over):
    a = {"q": torch.randn(2, 1, 4, 8), "k_cache": torch.randn(5, 4, 2, 8),
         "v_cache": torch.randn(5, 4, 2, 8),
         "block_table": torch.tensor([[0, 3], [4, 1]], dtype=torch.int32),
         "seq_lens": torch.tensor([6, 8], dtype=torch.int32)}
    kw = {k: over.pop(k) for k in list(over) if k not in a}
    a.update(over)
    return tuple(a.values()), kw


def varlen_paged_args(**over):
    a = {"q": torch.randn(4, 4, 8), "k_cache": torch.randn(5, 4, 2, 8),
         "v_cache": torch.randn(5, 4, 2, 8),
         "block_table": torch.tensor([[0, 3], [4, 1], [2, 2]], dtype=torch.int32),
         "seq_lens": torch.tensor([6, 8, 0], dtype=torch.int32),
         "cu_seqlens_q": torch.tensor([0, 1, 4, 4], dtype=torch.int32)}
    kw = {k: over.pop(k) for k in list(over) if k not in a}
    a.update(over)
    return tuple(a.values()), kw


def kv_args(**over):
    a = {"k": torch.randn(3, 2, 8), "v": torch.randn(3, 2, 8),
         "k_cache": torch.randn(4, 5, 2, 8), "v_cache": torch.randn(4, 5, 2, 8),
         "slot_mapping": torch.tensor([0, -1, 7], dtype=torch.int64)}
    kw = {k: over.pop(k) for k in list(over) if k not in a}
    a.update(over)
    return tuple(a.values()), kw


def merge_args(**over):
    a = {"out_a": torch.randn(2, 5, 3, 8), "lse_a": torch.randn(2, 3, 5),
         "out_b": torch.randn(2, 5, 3, 8), "lse_b": torch.randn(2, 3, 5)}
    a.update(over)
    return tuple(a.values()), {}


def matmul_args(**over):
    a = {"a": torch.randn(3, 6), "b": torch.randn(6, 4)}
    kw = {k: over.pop(k) for k in list(over) if k not in a}
    a.update(over)
    return tuple(a.values()), kw


def linear_args(**over):
    a = {"x": torch.randn(3, 6), "weight": torch.randn(4, 6)}
    kw = {k: over.pop(k) for k in list(over) if k not in a}
    a.update(over)
    return tuple(a.values()), kw


def scaled_args(**over):
    a = {"a": torch.randn(3, 16).to(torch.float8_e4m3fn), "b": torch.randn(16, 4).to(torch.float8_e4m3fn),
         "scale_a": torch.tensor(1.0), "scale_b": torch.ones(4)}
    kw = {k: over.pop(k) for k in list(over) if k not in a}
    a.update(over)
    return tuple(a.values()), kw


def qlinear_args(**over):
    a = {"x": torch.randn(3, 64), "qweight": torch.zeros(5, 32, dtype=torch.uint8),
         "scales": torch.ones(5, 2), "zeros": None}
    kw = {"bits": 4, "group_size": 32}
    for k in list(over):
        (a if k in a else kw)[k] = over.pop(k)
    return tuple(a.values()), kw


def grouped_args(**over):
    a = {"x": torch.randn(6, 5), "weights": torch.randn(3, 5, 4),
         "group_sizes": torch.tensor([2, 0, 4], dtype=torch.int32)}
    a.update(over)
    return tuple(a.values()), {}


OPS = {"attention": (pk.attention, attn_args), "varlen_attention": (pk.varlen_attention, varlen_args),
       "paged_attention": (pk.paged_attention, paged_args),
       "varlen_paged_attention": (pk.varlen_paged_attention, varlen_paged_args),
       "write_kv_cache": (pk.write_kv_cache, kv_args),
       "merge_attention_states": (pk.merge_attention_states, merge_args),
       "matmul": (pk.matmul, matmul_args), "linear": (pk.linear, linear_args),
       "scaled_matmul": (pk.scaled_matmul, scaled_args),
       "quantized_linear": (pk.quantized_linear, qlinear_args),
       "grouped_matmul": (pk.grouped_matmul, grouped_args)}

V, T = ValueError, TypeError
_SHARED_CACHE = torch.randn(4, 5, 2, 8)    # passed as both caches
_CACHE_WITH_K = torch.randn(4, 5, 2, 8)    # k is a view into it
CASES = [
    # attention
    ("attention", dict(q=torch.randint(0, 3, (2, 5, 4, 8))), T, r"^q: .*dtype"),
    ("attention", dict(k=torch.randn(2, 7, 2, 8, dtype=BF16)), T, r"^k: .*dtype"),
    ("attention", dict(k=torch.randn(2, 7, 2, 8, device=META)), V, r"^k: expected device cpu"),
    ("attention", dict(v=torch.randn(2, 6, 2, 8)), V, r"^v: seqlen"),
    ("attention", dict(k=torch.randn(3, 7, 2, 8)), V, r"^k: batch"),
    ("attention", dict(q=torch.randn(2, 5, 8)), V, r"^q: expected 4 dimensions"),
    ("attention", dict(q=torch.randn(2, 5, 4, 0), k=torch.randn(2, 7, 2, 0), v=torch.randn(2, 7, 2, 0)), V, r"head_dim"),
    ("attention", dict(q=torch.randn(1, 2, 2, 264), k=torch.randn(1, 2, 2, 264), v=torch.randn(1, 2, 2, 264)), V, r"head_dim must be in \[1, 256\]"),
    ("attention", dict(k=torch.randn(2, 7, 3, 8), v=torch.randn(2, 7, 3, 8)), V, r"heads_kv \(3\) must divide heads_q \(4\)"),
    ("attention", dict(window=(-2, 0)), V, r"^window"),
    ("attention", dict(window=(3,)), V, r"^window"),
    ("attention", dict(causal=1), T, r"^causal"),
    ("attention", dict(softcap=-1.0), V, r"^softcap"),
    ("attention", dict(softmax_scale=float("nan")), V, r"^softmax_scale"),
    ("attention", dict(softmax_scale=torch.tensor(float("nan"), dtype=torch.float64)), V, r"^softmax_scale"),
    ("attention", dict(softmax_scale="0.1"), T, r"^softmax_scale: expected a finite float, got str"),
    ("attention", dict(softcap="1"), T, r"^softcap: .*got str"),
    ("attention", dict(window=(1.7, 0.5)), T, r"^window\[0\]: expected an integer, got float 1.7"),
    ("attention", dict(alibi_slopes=torch.rand(3)), V, r"^alibi_slopes"),
    ("attention", dict(alibi_slopes=torch.rand(4, dtype=torch.float16)), T, r"^alibi_slopes"),
    ("attention", dict(alibi_slopes=torch.rand(4, device=META)), V, r"^alibi_slopes: expected device"),
    # varlen
    ("varlen_attention", dict(cu_seqlens_q=torch.tensor([0.0, 3.0, 7.0])), T, r"^cu_seqlens_q"),
    ("varlen_attention", dict(cu_seqlens_k=torch.tensor([0, 4, 9])), T, r"^cu_seqlens_k"),   # int64
    ("varlen_attention", dict(cu_seqlens_q=torch.tensor([0, 3, 6], dtype=torch.int32)), V, r"^cu_seqlens_q: expected to start at 0 and end at 7"),
    ("varlen_attention", dict(cu_seqlens_k=torch.tensor([0, 4], dtype=torch.int32)), V, r"^cu_seqlens_k: length"),
    ("varlen_attention", dict(cu_seqlens_q=torch.tensor([0, 5, 3, 7], dtype=torch.int32), cu_seqlens_k=torch.tensor([0, 2, 4, 9], dtype=torch.int32)), V, r"^cu_seqlens_q: expected non-decreasing"),
    ("varlen_attention", dict(max_seqlen_q=3), V, r"^max_seqlen_q"),
    ("varlen_attention", dict(max_seqlen_k=-1), V, r"^max_seqlen_k"),
    ("varlen_attention", dict(cu_seqlens_q=torch.tensor([0, 3, 7], dtype=torch.int32, device=META)), V, r"^cu_seqlens_q: expected device"),
    ("varlen_attention", dict(k=torch.randn(9, 3, 8), v=torch.randn(9, 3, 8)), V, r"heads_kv"),
    ("varlen_attention", dict(alibi_slopes=torch.rand(3, 4)), V, r"^alibi_slopes: expected shape \[4\] or \[2, 4\]"),
    ("varlen_attention", dict(window=(1, -5)), V, r"^window"),
    # paged
    ("paged_attention", dict(block_table=torch.tensor([[0, 3], [4, 1]])), T, r"^block_table"),      # int64
    ("paged_attention", dict(seq_lens=torch.tensor([6.0, 8.0])), T, r"^seq_lens"),
    ("paged_attention", dict(block_table=torch.tensor([[0, 5], [4, 1]], dtype=torch.int32)), V, r"^block_table: row 0 uses block ids outside \[0, 5\)"),
    ("paged_attention", dict(block_table=torch.tensor([[0, 3], [-1, 1]], dtype=torch.int32)), V, r"^block_table: row 1"),
    ("paged_attention", dict(seq_lens=torch.tensor([6, 9], dtype=torch.int32)), V, r"^seq_lens: entry 1 is 9"),
    ("paged_attention", dict(seq_lens=torch.tensor([-1, 8], dtype=torch.int32)), V, r"^seq_lens: entry 0"),
    ("paged_attention", dict(seq_lens=torch.tensor([6], dtype=torch.int32)), V, r"^seq_lens: length"),
    ("paged_attention", dict(k_cache=torch.randn(5, 4, 2, 8, dtype=BF16), v_cache=torch.randn(5, 4, 2, 8, dtype=BF16)), T, r"^k_cache: expected dtype"),
    ("paged_attention", dict(v_cache=torch.randn(5, 4, 2, 7)), V, r"^v_cache: expected shape"),
    ("paged_attention", dict(k_cache=torch.randn(5, 4, 2, 7), v_cache=torch.randn(5, 4, 2, 7)), V, r"^k_cache: head_dim"),
    ("paged_attention", dict(k_cache=torch.randn(2, 300, 2, 8), v_cache=torch.randn(2, 300, 2, 8)), V, r"^k_cache: block_size"),
    ("paged_attention", dict(k_cache=torch.randn(5, 4, 3, 8), v_cache=torch.randn(5, 4, 3, 8)), V, r"heads_kv \(3\)"),
    ("paged_attention", dict(k_scale=0.0), V, r"^k_scale"),
    ("paged_attention", dict(k_scale=torch.ones(3)), V, r"^k_scale: expected .* one scale per KV head \[2\], got a tensor of shape \(3,\)"),
    ("paged_attention", dict(k_scale=torch.tensor([1.0, -1.0])), V, r"^k_scale: expected finite scales > 0"),
    ("paged_attention", dict(v_scale=torch.ones(2, dtype=torch.int32)), T, r"^v_scale: expected a floating tensor"),
    ("paged_attention", dict(v_scale=torch.ones(2, device=META)), V, r"^v_scale: expected device cpu"),
    ("paged_attention", dict(softmax_scale="0.3"), T, r"^softmax_scale: .*got str"),
    ("paged_attention", dict(v_scale=float("inf")), V, r"^v_scale"),
    ("paged_attention", dict(seq_lens=torch.tensor([6, 8], dtype=torch.int32, device=META)), V, r"^seq_lens: expected device"),
    ("paged_attention", dict(window=(0, -3)), V, r"^window"),
    # sinks (attention sinks: one finite logit per query head, on q's device)
    ("attention", dict(sinks=torch.zeros(3)), V, r"^sinks: expected shape \[4\]"),
    ("attention", dict(sinks=torch.zeros(4, dtype=torch.int32)), T, r"^sinks"),
    ("attention", dict(sinks=torch.tensor([0.0, float("nan"), 0.0, 0.0])), V, r"^sinks: expected finite values"),
    ("varlen_attention", dict(sinks=torch.zeros(4, device=META)), V, r"^sinks: expected device cpu"),
    ("paged_attention", dict(sinks=torch.zeros(1, 4)), V, r"^sinks: expected 1 dimension"),
    ("varlen_paged_attention", dict(sinks=[0.0] * 4), T, r"^sinks"),
    # varlen_paged_attention (valid call: q_lens 1, 3, 0; seq_lens 6, 8, 0 = a padded slot)
    ("varlen_paged_attention", dict(q=torch.randn(1, 4, 4, 8)), V, r"^q: expected 3 dimensions"),
    ("varlen_paged_attention", dict(cu_seqlens_q=torch.tensor([0, 1, 4, 4])), T, r"^cu_seqlens_q"),  # int64
    ("varlen_paged_attention", dict(cu_seqlens_q=torch.tensor([1, 1, 4, 4], dtype=torch.int32)), V, r"^cu_seqlens_q: expected to start at 0"),
    ("varlen_paged_attention", dict(cu_seqlens_q=torch.tensor([0, 1, 3, 3], dtype=torch.int32)), V, r"^cu_seqlens_q: .*end at 4"),
    ("varlen_paged_attention", dict(cu_seqlens_q=torch.tensor([0, 3, 1, 4], dtype=torch.int32)), V, r"^cu_seqlens_q: expected non-decreasing"),
    ("varlen_paged_attention", dict(cu_seqlens_q=torch.tensor([0, 4], dtype=torch.int32)), V, r"^block_table: rows"),
    ("varlen_paged_attention", dict(max_seqlen_q=2), V, r"^max_seqlen_q: expected >= the longest query run \(3\)"),
    ("varlen_paged_attention", dict(max_seqlen_q=2.0), V, r"^max_seqlen_q: expected an int"),
    ("varlen_paged_attention", dict(seq_lens=torch.tensor([6, 2, 0], dtype=torch.int32)), V, r"^seq_lens: entry 1 is 2; expected q_len \(3\)"),
    ("varlen_paged_attention", dict(seq_lens=torch.tensor([6, 8], dtype=torch.int32)), V, r"^seq_lens: length"),
    ("varlen_paged_attention", dict(block_table=torch.tensor([[0, 3], [4, 7], [0, 0]], dtype=torch.int32)), V, r"^block_table: row 1 uses block ids outside"),
    ("varlen_paged_attention", dict(alibi_slopes=torch.ones(2, 4)), V, r"^alibi_slopes: expected shape \[4\] or \[3, 4\]"),
    ("varlen_paged_attention", dict(k_scale=-1.0), V, r"^k_scale"),
    ("varlen_paged_attention", dict(cu_seqlens_q=torch.tensor([0, 1, 4, 4], dtype=torch.int32, device=META)), V, r"^cu_seqlens_q: expected device"),
    # write_kv_cache
    ("write_kv_cache", dict(k_cache=_SHARED_CACHE, v_cache=_SHARED_CACHE), V, r"^v_cache: .*shares memory with k_cache"),
    ("write_kv_cache", dict(k=_CACHE_WITH_K[0, :3], k_cache=_CACHE_WITH_K), V, r"^k: .*shares memory with k_cache"),
    ("write_kv_cache", dict(k_cache=torch.randn(1, 1, 2, 8).expand(4, 5, 2, 8)), V, r"^k_cache: .*stride-0"),
    ("write_kv_cache", dict(k_scale="1.0"), T, r"^k_scale: expected a finite float > 0, got str"),
    ("write_kv_cache", dict(v_scale=torch.ones(1, 2)), V, r"^v_scale: .*got a tensor of shape \(1, 2\)"),
    ("write_kv_cache", dict(slot_mapping=torch.tensor([0, 5, 20])), V, r"^slot_mapping: expected values in \[-1, 20\)"),
    ("write_kv_cache", dict(slot_mapping=torch.tensor([0, -2, 3])), V, r"^slot_mapping"),
    ("write_kv_cache", dict(slot_mapping=torch.tensor([7, -1, 7])), V, r"^slot_mapping: slot 7 appears more than once"),
    ("write_kv_cache", dict(slot_mapping=torch.tensor([0.0, 1.0, 2.0])), T, r"^slot_mapping"),
    ("write_kv_cache", dict(slot_mapping=torch.tensor([0, 1])), V, r"^slot_mapping: length"),
    ("write_kv_cache", dict(slot_mapping=torch.tensor([0, 1, 2], device=META)), V, r"^slot_mapping: expected device"),
    ("write_kv_cache", dict(v=torch.randn(3, 2, 7)), V, r"^v: expected shape"),
    ("write_kv_cache", dict(v=torch.randn(3, 2, 8, dtype=BF16)), T, r"^v: expected dtype"),
    ("write_kv_cache", dict(k_cache=torch.randn(4, 5, 3, 8), v_cache=torch.randn(4, 5, 3, 8)), V, r"^k_cache: expected \[num_blocks"),
    ("write_kv_cache", dict(k_cache=torch.zeros(4, 5, 2, 8, dtype=torch.int8), v_cache=torch.zeros(4, 5, 2, 8, dtype=torch.int8)), T, r"^k_cache: expected dtype"),
    ("write_kv_cache", dict(v_scale=0.0), V, r"^v_scale"),
    ("write_kv_cache", dict(k=torch.randn(3, 2, 8, device=META), v=torch.randn(3, 2, 8, device=META)), V, r"expected device meta"),
    # merge
    ("merge_attention_states", dict(lse_a=torch.randn(2, 5, 3)), V, r"^lse_a: expected shape"),
    ("merge_attention_states", dict(lse_b=torch.randn(2, 3, 5, dtype=torch.float16)), T, r"^lse_b"),
    ("merge_attention_states", dict(out_b=torch.randn(2, 5, 3, 4)), V, r"^out_b: expected shape"),
    ("merge_attention_states", dict(out_b=torch.randn(2, 5, 3, 8, dtype=BF16)), T, r"^out_b"),
    ("merge_attention_states", dict(out_a=torch.randn(5, 8), out_b=torch.randn(5, 8)), V, r"^out_a"),
    ("merge_attention_states", dict(lse_b=torch.randn(2, 3, 5, device=META)), V, r"^lse_b: expected device"),
    # matmul
    ("matmul", dict(b=torch.randn(5, 4)), V, r"^b: rows"),
    ("matmul", dict(b=torch.randn(6, 4, dtype=BF16)), T, r"^b: expected dtype"),
    ("matmul", dict(a=torch.randint(0, 3, (3, 6)), b=torch.randint(0, 3, (6, 4))), T, r"^a"),
    ("matmul", dict(a=torch.randn(6)), V, r"^a: expected \[\.\.\., M, K\]"),
    ("matmul", dict(activation="tanh"), V, r"^activation"),
    ("matmul", dict(bias=torch.randn(5)), V, r"^bias: length"),
    ("matmul", dict(out_dtype=torch.int32), T, r"^out_dtype"),
    ("matmul", dict(b=torch.randn(6, 4, device=META)), V, r"^b: expected device"),
    ("matmul", dict(bias=torch.randn(4, device=META)), V, r"^bias: expected device"),
    # linear
    ("linear", dict(weight=torch.randn(4, 5)), V, r"^weight: columns"),
    ("linear", dict(weight=torch.randn(4, 6, device=META)), V, r"^weight: expected device"),
    ("linear", dict(activation="swish"), V, r"^activation"),
    ("linear", dict(bias=torch.randn(3)), V, r"^bias"),
    ("linear", dict(weight=torch.randn(4, 6, dtype=torch.float16)), T, r"^weight"),
    # scaled_matmul
    ("scaled_matmul", dict(a=torch.randn(3, 16)), T, r"^a: expected dtype"),
    ("scaled_matmul", dict(b=torch.randint(-5, 5, (16, 4), dtype=torch.int8)), T, r"^b: expected dtype"),
    ("scaled_matmul", dict(b=torch.randn(12, 4).to(torch.float8_e4m3fn)), V, r"^b: rows"),
    ("scaled_matmul", dict(scale_a=torch.ones(2)), V, r"^scale_a: expected 1 element .* or 3"),
    ("scaled_matmul", dict(scale_b=torch.ones(4, dtype=torch.float16)), T, r"^scale_b"),
    ("scaled_matmul", dict(scale_a=torch.tensor(1.0, device=META)), V, r"^scale_a: expected device"),
    ("scaled_matmul", dict(out_dtype=torch.int8), T, r"^out_dtype"),
    ("scaled_matmul", dict(bias=torch.randn(5)), V, r"^bias"),
    # quantized_linear
    ("quantized_linear", dict(bits=3), V, r"^bits"),
    ("quantized_linear", dict(group_size=24), V, r"^group_size"),
    ("quantized_linear", dict(group_size=0), V, r"^group_size"),
    ("quantized_linear", dict(qweight=torch.zeros(5, 64, dtype=torch.uint8)), V, r"^qweight: expected \[N, 32\]"),
    ("quantized_linear", dict(qweight=torch.zeros(5, 32, dtype=torch.int8)), T, r"^qweight"),
    ("quantized_linear", dict(scales=torch.ones(5, 3)), V, r"^scales: expected shape \[5, 2\]"),
    ("quantized_linear", dict(scales=[[1.0, 1.0]] * 5), T, r"^scales: expected a torch.Tensor, got list"),
    ("quantized_linear", dict(zeros=[[8, 8]] * 5), T, r"^zeros: expected a torch.Tensor, got list"),
    ("quantized_linear", dict(zeros=torch.ones(5, 1)), V, r"^zeros: expected shape"),
    ("quantized_linear", dict(zeros=torch.ones(5, 2, dtype=BF16)), T, r"^zeros"),
    ("quantized_linear", dict(scales=torch.ones(5, 2, device=META)), V, r"^scales: expected device"),
    ("quantized_linear", dict(x=torch.randn(3, 64, dtype=torch.float64)), T, r"^x"),
    ("quantized_linear", dict(bias=torch.randn(6)), V, r"^bias"),
    # grouped_matmul
    ("grouped_matmul", dict(group_sizes=torch.tensor([2, 0, 3], dtype=torch.int32)), V, r"^group_sizes: expected non-negative sizes summing to x's rows \(6\)"),
    ("grouped_matmul", dict(group_sizes=torch.tensor([7, -1, 0], dtype=torch.int32)), V, r"^group_sizes"),
    ("grouped_matmul", dict(group_sizes=torch.tensor([2.0, 0.0, 4.0])), T, r"^group_sizes"),
    ("grouped_matmul", dict(group_sizes=torch.tensor([2, 4], dtype=torch.int32)), V, r"^group_sizes: length"),
    ("grouped_matmul", dict(weights=torch.randn(3, 4, 4)), V, r"^weights: dim 1"),
    ("grouped_matmul", dict(weights=torch.randn(3, 5, 4, device=META)), V, r"^weights: expected device"),
    ("grouped_matmul", dict(weights=torch.randn(3, 5, 4, dtype=BF16)), T, r"^weights"),
]


def _id(case):
    op, over, exc, _ = case
    return f"{op}-{'+'.join(over)}-{exc.__name__}"


@pytest.mark.parametrize("op,over,exc,pattern", CASES, ids=[_id(c) for c in CASES])
def test_bad_input(op, over, exc, pattern, monkeypatch):
    fn, build = OPS[op]
    args, kwargs = build(**dict(over))
    # No implementation may run: validation comes first.
    called = []   # every op's kernel enters the dispatcher through _run.dispatch
    monkeypatch.setattr(importlib.import_module("polykernels.ops._run"), "dispatch",
                        lambda *a, **k: called.append(a[0]))
    snapshots = [t.clone() for t in args if isinstance(t, torch.Tensor) and t.device.type != "meta"]
    with pytest.raises(exc, match=pattern) as info:
        fn(*args, **kwargs)
    assert called == [], f"an implementation ran before validation failed: {called}"
    # pk.explain validates the same way
    with pytest.raises(exc, match=pattern):
        pk.explain(op, *args, **kwargs)
    # inputs (the caches, for write_kv_cache) are unchanged, bit for bit
    after = [t for t in args if isinstance(t, torch.Tensor) and t.device.type != "meta"]
    for before, now in zip(snapshots, after):
        assert torch.equal(before.reshape(-1).view(torch.uint8), now.contiguous().reshape(-1).view(torch.uint8)), \
            "an input was modified by a call that failed validation"
    assert str(info.value)


def test_every_public_op_has_bad_input_cases():
    from polykernels.ops.explain import ARGS
    assert {c[0] for c in CASES} == set(OPS) == set(ARGS)


def test_write_kv_cache_valid_slots_before_bad_one_not_written():
    (k, v, kc, vc, _), _ = kv_args()
    kc0, vc0 = kc.clone(), vc.clone()
    with pytest.raises(ValueError, match="slot_mapping"):
        pk.write_kv_cache(k, v, kc, vc, torch.tensor([0, 5, 20]))
    assert torch.equal(kc, kc0) and torch.equal(vc, vc0)
    # and a valid call does write (so the check above can fail)
    pk.write_kv_cache(k, v, kc, vc, torch.tensor([0, 5, 19]))
    assert torch.equal(kc[0, 0], k[0]) and torch.equal(vc[3, 4], v[2])


@pytest.mark.parametrize("layout", ["one tensor [2, blocks, ...] (vLLM)", "interleaved [blocks, 2, ...]"])
def test_kv_caches_split_from_one_tensor_are_accepted_and_written(layout):
    """The aliasing check refuses shared memory, not the two usual ways of allocating both
    caches in one tensor: disjoint halves, and per-block interleaving (elements never shared)."""
    k, v = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    slots = torch.tensor([0, 6, 19])
    if layout.startswith("one"):
        whole = torch.zeros(2, 4, 5, 2, 8)
        k_cache, v_cache = whole.unbind(0)
    else:
        whole = torch.zeros(4, 2, 5, 2, 8)
        k_cache, v_cache = whole.unbind(1)
    pk.write_kv_cache(k, v, k_cache, v_cache, slots)
    for i, s in enumerate(slots.tolist()):
        assert torch.equal(k_cache[s // 5, s % 5], k[i]) and torch.equal(v_cache[s // 5, s % 5], v[i])
    assert int((whole != 0).sum()) == 2 * k.numel()   # nothing else written


# -- index values no check could read --------------------------------------------------------
# Under torch.compile the public checks cannot read tensor values; the op then runs its impls
# at run time. Each impl that runs on CPU must refuse a bad index itself (the C++ glue, the torch
# provider and the reference check what they read), so failover never ends in a plausible
# answer. (GPU kernels range-check what they read and write NaN rows instead: docs/dispatch.md,
# tests/test_triton_index_poison_*.py.)
def _bad_index_cases():
    paged = (torch.randn(2, 1, 4, 8), torch.randn(5, 4, 2, 8), torch.randn(5, 4, 2, 8),
             torch.tensor([[0, -1], [4, 1]], dtype=torch.int32), torch.tensor([6, 8], dtype=torch.int32))
    kv = (torch.randn(3, 2, 8), torch.randn(3, 2, 8), torch.randn(4, 5, 2, 8), torch.randn(4, 5, 2, 8),
          torch.tensor([0, -5, 7]))
    varlen = (torch.randn(7, 4, 8), torch.randn(9, 2, 8), torch.randn(9, 2, 8),
              torch.tensor([0, 5, 3, 7], dtype=torch.int32), torch.tensor([0, 4, 6, 9], dtype=torch.int32))
    grouped = (torch.randn(6, 5), torch.randn(3, 5, 4), torch.tensor([2, 0, 2], dtype=torch.int32))
    vpaged = (torch.randn(4, 4, 8), torch.randn(5, 4, 2, 8), torch.randn(5, 4, 2, 8),
              torch.tensor([[0, 3], [4, 1]], dtype=torch.int32), torch.tensor([6, 8], dtype=torch.int32),
              torch.tensor([0, 3, 1], dtype=torch.int32))  # decreasing offsets
    return {
        "varlen_paged_attention": (lambda *a: pk.varlen_paged_attention(*a, 3), vpaged,
                                   vpaged + (3, 0.3, -1, -1, 0.0, None, 1.0, 1.0), r"cu_seqlens_q"),
        "paged_attention": (lambda *a: pk.paged_attention(*a), paged,
                            paged + (0.3, -1, -1, 0.0, None, 1.0, 1.0), r"block_table"),
        "write_kv_cache": (lambda k, v, kc, vc, s: (pk.write_kv_cache(k, v, kc, vc, s), kc.sum())[1], kv,
                           kv + (1.0, 1.0), r"slot"),
        "varlen_attention": (lambda *a: pk.varlen_attention(*a, 5, 5), varlen,
                             varlen + (5, 5, False, 0.3, -1, -1, 0.0, None), r"cu_seqlens_q"),
        "grouped_matmul": (lambda *a: pk.grouped_matmul(*a), grouped, grouped, r"group_sizes"),
    }


@pytest.mark.parametrize("op", list(_bad_index_cases()))
def test_bad_index_values_under_torch_compile_raise(op):
    fn, args, _, pattern = _bad_index_cases()[op]
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="eager", fullgraph=True)
    with pytest.raises(Exception, match=pattern):
        compiled(*args)


@pytest.mark.parametrize("op", list(_bad_index_cases()))
def test_every_cpu_impl_refuses_a_bad_index_itself(op):
    from polykernels.dispatch import registry
    _, _, internal, _ = _bad_index_cases()[op]
    registry.ensure_loaded()
    impls = [i for i in registry.impls[op] if i.backend in ("cpu", "torch", "reference")]
    assert {i.backend for i in impls} >= {"reference"}
    for impl in impls:
        if impl.supports(*internal) is not None:
            continue   # refuses the call outright
        with pytest.raises((ValueError, RuntimeError, IndexError)):
            impl.fn(*internal)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float8_e4m3fn])
def test_every_cpu_impl_refuses_duplicate_slots(cache_dtype):
    """Two tokens into one slot would race (an fp8 cache could keep half of each row): every
    impl that reads the slots refuses them, before writing anything."""
    from polykernels.dispatch import registry
    registry.ensure_loaded()
    k, v = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    caches = [torch.randn(4, 5, 2, 8).to(cache_dtype) for _ in range(2)]
    before = [c.clone() for c in caches]
    args = (k, v, *caches, torch.tensor([4, 11, 4]), 1.0, 1.0)
    impls = [i for i in registry.impls["write_kv_cache"] if i.backend in ("cpu", "torch", "reference")]
    assert {i.name for i in impls} >= {"cpp", "reference"}
    for impl in impls:
        with pytest.raises((ValueError, RuntimeError), match="appears more than once"):
            impl.fn(*args)
        for b, c in zip(before, caches):
            assert torch.equal(b.view(torch.uint8), c.view(torch.uint8)), impl.label
