"""GPU tier: the decode path under CUDA graphs and without host synchronisation.

A server captures its decode step once and replays it with new inputs written into the same
tensors (q, seq_lens, block_table, the caches). The paged ops, given ``out=`` and
``max_seqlen_q``, must not synchronise with the host (a sync is an error inside capture, and
a stall outside it), and the replay must equal an eager call on the new inputs.
Skipped without a GPU (conftest); collected by the GPU run's dry run on CPU.
"""
from __future__ import annotations

import pytest
import torch

import polykernels as pk

HQ, HK, D, BS, NB = 32, 8, 128, 16, 512


def _state(device):
    torch.manual_seed(0)
    kc = torch.randn(NB, BS, HK, D, device=device, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    bt = torch.randperm(NB, device=device).to(torch.int32).view(8, NB // 8)
    sl = torch.randint(1, (NB // 8) * BS, (8,), device=device, dtype=torch.int32)
    cu = torch.arange(9, device=device, dtype=torch.int32)   # one decode row per sequence
    q = torch.randn(8, HQ, D, device=device, dtype=torch.bfloat16)
    return q, kc, vc, bt, sl, cu


@pytest.mark.gpu
def test_decode_step_has_no_host_sync():
    q, kc, vc, bt, sl, cu = _state("cuda")
    out = torch.empty_like(q)
    k_scale = torch.ones(HK, device="cuda")   # tensor scales stay on the device
    pk.varlen_paged_attention(q, kc, vc, bt, sl, cu, 1, out=out)        # warm: compile, decide
    torch.cuda.synchronize()
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pk.varlen_paged_attention(q, kc, vc, bt, sl, cu, 1, out=out)
        pk.paged_attention(q[:, None], kc, vc, bt, sl, out=out[:, None], k_scale=k_scale)
    finally:
        torch.cuda.set_sync_debug_mode(prev)


@pytest.mark.gpu
def test_decode_step_replays_in_a_cuda_graph():
    q, kc, vc, bt, sl, cu = _state("cuda")
    out = torch.empty_like(q)

    def step():
        pk.varlen_paged_attention(q, kc, vc, bt, sl, cu, 1, out=out)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()                                    # warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for seed in (1, 2):                           # new inputs, same tensors
        torch.manual_seed(seed)
        q.copy_(torch.randn_like(q))
        sl.copy_(torch.randint(1, (NB // 8) * BS, (8,), device="cuda", dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        want = pk.varlen_paged_attention(q, kc, vc, bt, sl, cu, 1)
        torch.testing.assert_close(out, want, rtol=0, atol=0)
