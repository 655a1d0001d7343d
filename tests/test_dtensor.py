"""DTensor sharding rules (polykernels/distributed.py): two gloo processes on the CPU.

This file is also the worker: the module-scoped fixture runs it twice as a script (ranks 0
and 1, torchrun's environment variables, MASTER_ADDR=127.0.0.1 and a free port); each rank
runs every case below on DTensors, compares the gathered result (``full_tensor()``) with the
op on the unsharded tensors, checks the placements the rules promise (so a case cannot pass
by silently gathering everything) and writes its results to a JSON file; each test reads its
case's result from both ranks. One launch for all cases: the two processes' imports dominate
(~25 s in all on a busy 2-core VM, ~10 s idle).
"""
from __future__ import annotations

import datetime
import importlib
import json
import os
import socket
import subprocess
import sys
import traceback

import pytest
import torch

WORLD = 2

CASES = [
    "attention_heads_gqa", "attention_gqa_uneven_heads_is_not_split", "attention_batch",
    "attention_replicated", "attention_backward_heads", "varlen_attention_heads_fwd_bwd",
    "paged_attention_heads", "paged_attention_fp8_per_head_scales", "paged_attention_out_heads",
    "varlen_paged_attention_heads", "write_kv_cache_heads",
    "write_kv_cache_refuses_redistributing_the_cache", "merge_attention_states_heads",
    "linear_column_parallel", "linear_row_parallel", "linear_row_parallel_with_activation",
    "matmul_column_and_row_parallel", "quantized_linear_n_sharded",
    "quantized_linear_k_sharded_is_gathered", "grouped_matmul_replicated",
    "registered_at_import",
]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")


# -- the launcher (pytest side) -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out_dir):
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               WORLD_SIZE=str(WORLD), POLYKERNELS_SELECT="priority", OMP_NUM_THREADS="1",
               PK_DTENSOR_OUT=str(out_dir))
    env.pop("TRITON_INTERPRET", None)   # Triton impls are not wanted here (slow on CPU)
    procs = [subprocess.Popen([sys.executable, __file__],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(WORLD)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return procs, logs


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    for attempt in range(2):
        out_dir = tmp_path_factory.mktemp("dtensor")
        procs, logs = _launch(out_dir)
        # the free port may be taken between _free_port() and the store's bind: retry once
        if attempt == 0 and any("EADDRINUSE" in log or "Address already in use" in log
                                for p, log in zip(procs, logs) if p.returncode):
            continue
        break
    per_rank = []
    for r, (p, log) in enumerate(zip(procs, logs)):
        path = out_dir / f"rank{r}.json"
        assert p.returncode == 0 and path.exists(), f"rank {r} failed:\n{log[-4000:]}"
        per_rank.append(json.loads(path.read_text()))
    return per_rank


@pytest.mark.parametrize("case", CASES)
def test_dtensor(results, case):
    for rank, res in enumerate(results):
        assert res.get(case) == "ok", f"rank {rank}: {res.get(case, 'not run')}"


# -- the worker (one per rank) ------------------------------------------------------------------


def _close(got, want, what, atol=1e-5, rtol=1e-5):
    from torch.distributed.tensor import DTensor
    if isinstance(got, DTensor):
        got = got.full_tensor()
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _placements(t, want, what):
    got = tuple(t.placements)
    assert got == tuple(want), f"{what}: placements {got}, expected {tuple(want)}"


def _cases(mesh):
    import polykernels as pk
    from torch.distributed.tensor import Partial, Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.experimental import implicit_replication

    def dt(t, *placements):
        return distribute_tensor(t, mesh, list(placements) or [Replicate()])

    # Index tensors (cu_seqlens, block_table, seq_lens, slot_mapping, group_sizes) are passed
    # as plain tensors under implicit_replication(): the public functions read their values on
    # the host to validate them, which a DTensor does not allow (.tolist()).

    R = Replicate()

    def attention_heads_gqa():
        q = torch.randn(2, 6, 4, 16)                       # 4 query heads, 2 KV heads (GQA)
        k, v = torch.randn(2, 9, 2, 16), torch.randn(2, 9, 2, 16)
        alibi, sinks = torch.rand(4), torch.randn(4)
        kw = dict(causal=True, alibi_slopes=alibi, sinks=sinks, return_lse=True)
        out, lse = pk.attention(dt(q, Shard(2)), dt(k, Shard(2)), dt(v, Shard(2)),
                                **dict(kw, alibi_slopes=dt(alibi, Shard(0)),
                                       sinks=dt(sinks, Shard(0))))
        _placements(out, [Shard(2)], "out")
        _placements(lse, [Shard(1)], "lse")
        ref_out, ref_lse = pk.attention(q, k, v, **kw)
        _close(out, ref_out, "out")
        _close(lse, ref_lse, "lse")

    def attention_gqa_uneven_heads_is_not_split():
        # 6 query heads over 3 KV heads: 3 + 3 query heads but 2 + 1 KV heads per rank would
        # break the groups, so the heads rule is dropped and DTensor redistributes instead
        q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 3, 8), torch.randn(2, 4, 3, 8)
        out = pk.attention(dt(q, Shard(2)), dt(k, Shard(2)), dt(v, Shard(2)), causal=True)
        assert tuple(out.placements) != (Shard(2),), out.placements
        _close(out, pk.attention(q, k, v, causal=True), "out")

    def attention_batch():
        q, k, v = torch.randn(2, 5, 2, 8), torch.randn(2, 7, 2, 8), torch.randn(2, 7, 2, 8)
        alibi = torch.rand(2, 2)                           # [batch, heads]: sharded with batch
        out = pk.attention(dt(q, Shard(0)), dt(k, Shard(0)), dt(v, Shard(0)),
                           alibi_slopes=dt(alibi, Shard(0)))
        _placements(out, [Shard(0)], "out")
        _close(out, pk.attention(q, k, v, alibi_slopes=alibi), "out")

    def attention_replicated():
        q, k, v = torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8)
        out = pk.attention(dt(q), dt(k), dt(v), window=(2, 0))
        _placements(out, [R], "out")
        _close(out, pk.attention(q, k, v, window=(2, 0)), "out")

    def attention_backward_heads():
        q = torch.randn(2, 6, 4, 16)
        k, v = torch.randn(2, 8, 2, 16), torch.randn(2, 8, 2, 16)
        sinks = torch.randn(4)
        w_out, w_lse = torch.randn(2, 6, 4, 16), torch.randn(2, 4, 6)

        def grads(q, k, v, sinks, w_out, w_lse):
            leaves = [t.detach().requires_grad_() for t in (q, k, v, sinks)]
            out, lse = pk.attention(*leaves[:3], causal=True, sinks=leaves[3], return_lse=True)
            ((out * w_out).sum() + (lse * w_lse).sum()).backward()   # dlse flows too
            return [t.grad for t in leaves]

        got = grads(dt(q, Shard(2)), dt(k, Shard(2)), dt(v, Shard(2)), dt(sinks, Shard(0)),
                    dt(w_out, Shard(2)), dt(w_lse, Shard(1)))
        want = grads(q, k, v, sinks, w_out, w_lse)
        for name, g, w in zip(("dq", "dk", "dv", "dsinks"), got, want):
            _placements(g, [Shard(0) if name == "dsinks" else Shard(2)], name)
            _close(g, w, name, atol=1e-4, rtol=1e-4)

    def varlen_attention_heads_fwd_bwd():
        cu = torch.tensor([0, 3, 8], dtype=torch.int32)
        q, k, v = torch.randn(8, 4, 8), torch.randn(8, 2, 8), torch.randn(8, 2, 8)
        with implicit_replication():   # plain index tensors: replicated (see _cases)
            out, lse = pk.varlen_attention(dt(q, Shard(1)), dt(k, Shard(1)), dt(v, Shard(1)),
                                           cu, cu, 5, 5, causal=True, return_lse=True)
        _placements(out, [Shard(1)], "out")
        _placements(lse, [Shard(0)], "lse")
        ref_out, ref_lse = pk.varlen_attention(q, k, v, cu, cu, 5, 5, causal=True,
                                               return_lse=True)
        _close(out, ref_out, "out")
        _close(lse, ref_lse, "lse")
        # backward (varlen_attention_backward sharded on heads)
        w = torch.randn(8, 4, 8)
        leaves = [dt(t, Shard(1)).requires_grad_() for t in (q, k, v)]
        with implicit_replication():   # the backward gets the plain cu_seqlens too
            out = pk.varlen_attention(*leaves, cu, cu, 5, 5, causal=True)
            (out * dt(w, Shard(1))).sum().backward()
        ref = [t.clone().requires_grad_() for t in (q, k, v)]
        (pk.varlen_attention(*ref, cu, cu, 5, 5, causal=True) * w).sum().backward()
        for name, g, r in zip(("dq", "dk", "dv"), leaves, ref):
            _placements(g.grad, [Shard(1)], name)
            _close(g.grad, r.grad, name, atol=1e-4, rtol=1e-4)

    def paged_inputs():
        kc, vc = torch.randn(6, 4, 2, 16), torch.randn(6, 4, 2, 16)   # 2 KV heads
        table = torch.tensor([[0, 3, 5], [1, 2, 4], [5, 0, 0]], dtype=torch.int32)
        seq_lens = torch.tensor([10, 7, 0], dtype=torch.int32)       # one padded slot
        return kc, vc, table, seq_lens

    def paged_attention_heads():
        kc, vc, table, seq_lens = paged_inputs()
        q, sinks = torch.randn(3, 2, 4, 16), torch.randn(4)           # q_len 2, 4 q heads
        with implicit_replication():
            out, lse = pk.paged_attention(dt(q, Shard(2)), dt(kc, Shard(2)), dt(vc, Shard(2)),
                                          table, seq_lens, sinks=dt(sinks, Shard(0)),
                                          return_lse=True)
        _placements(out, [Shard(2)], "out")
        _placements(lse, [Shard(1)], "lse")
        ref_out, ref_lse = pk.paged_attention(q, kc, vc, table, seq_lens, sinks=sinks,
                                              return_lse=True)
        _close(out, ref_out, "out")
        _close(lse, ref_lse, "lse")

    def paged_attention_fp8_per_head_scales():
        # per-KV-head scales [Hkv] (kv_scales [2, Hkv] inside) sharded with the caches; gloo
        # cannot scatter fp8, so each rank builds its shards itself (from_local)
        from torch.distributed.tensor import DTensor
        kc, vc, table, seq_lens = paged_inputs()
        kc8, vc8 = kc.to(torch.float8_e4m3fn), vc.to(torch.float8_e4m3fn)
        q, ks, vs = torch.randn(3, 1, 4, 16), torch.tensor([0.5, 2.0]), torch.tensor([1.5, 0.25])

        def local(t, dim):
            part = t.chunk(WORLD, dim=dim)[mesh.get_rank()].contiguous()
            return DTensor.from_local(part, mesh, [Shard(dim)], run_check=False)

        with implicit_replication():
            out = pk.paged_attention(dt(q, Shard(2)), local(kc8, 2), local(vc8, 2), table,
                                     seq_lens, k_scale=local(ks, 0), v_scale=local(vs, 0))
        _placements(out, [Shard(2)], "out")
        _close(out, pk.paged_attention(q, kc8, vc8, table, seq_lens, k_scale=ks, v_scale=vs),
               "out")

    def paged_attention_out_heads():
        kc, vc, table, seq_lens = paged_inputs()
        q = torch.randn(3, 2, 4, 16)
        buf = dt(torch.zeros(3, 2, 4, 16), Shard(2))
        with implicit_replication():
            got = pk.paged_attention(dt(q, Shard(2)), dt(kc, Shard(2)), dt(vc, Shard(2)),
                                     table, seq_lens, out=buf)
        assert got is buf
        _placements(buf, [Shard(2)], "out")
        _close(buf, pk.paged_attention(q, kc, vc, table, seq_lens), "out")

    def varlen_paged_attention_heads():
        kc, vc, table, seq_lens = paged_inputs()
        cu = torch.tensor([0, 3, 4, 4], dtype=torch.int32)
        q = torch.randn(4, 4, 16)
        with implicit_replication():
            out = pk.varlen_paged_attention(dt(q, Shard(1)), dt(kc, Shard(2)),
                                            dt(vc, Shard(2)), table, seq_lens, cu, 3)
        _placements(out, [Shard(1)], "out")
        _close(out, pk.varlen_paged_attention(q, kc, vc, table, seq_lens, cu, 3), "out")

    def write_kv_cache_heads():
        kc, vc, _, _ = paged_inputs()
        k, v = torch.randn(3, 2, 16), torch.randn(3, 2, 16)
        slots = torch.tensor([5, -1, 17], dtype=torch.int64)
        dkc, dvc = dt(kc, Shard(2)), dt(vc, Shard(2))
        with implicit_replication():
            pk.write_kv_cache(dt(k, Shard(1)), dt(v, Shard(1)), dkc, dvc, slots)
        pk.write_kv_cache(k, v, kc, vc, slots)
        _placements(dkc, [Shard(2)], "k_cache")
        _close(dkc, kc, "k_cache", atol=0, rtol=0)
        _close(dvc, vc, "v_cache", atol=0, rtol=0)
        # replicated caches: k and v are gathered, every replica written
        kc2, vc2 = dt(torch.zeros(6, 4, 2, 16)), dt(torch.zeros(6, 4, 2, 16))
        with implicit_replication():
            pk.write_kv_cache(dt(k, Shard(1)), dt(v, Shard(1)), kc2, vc2, slots)
        _placements(kc2, [R], "k_cache")
        assert torch.equal(kc2.to_local()[1, 1], k[0]), "replicated k_cache not written"

    def write_kv_cache_refuses_redistributing_the_cache():
        kc, vc, _, _ = paged_inputs()
        k, v = torch.randn(2, 2, 16), torch.randn(2, 2, 16)
        try:   # a cache sharded on blocks would be gathered into a copy and the write lost
            with implicit_replication():
                pk.write_kv_cache(dt(k), dt(v), dt(kc, Shard(0)), dt(vc, Shard(0)),
                                  torch.tensor([3, -1]))
        except NotImplementedError as e:
            assert "keep their placement" in str(e), e
        else:
            raise AssertionError("a block-sharded cache was accepted")

    def merge_attention_states_heads():
        oa, ob = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
        la, lb = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
        out, lse = pk.merge_attention_states(dt(oa, Shard(2)), dt(la, Shard(1)),
                                             dt(ob, Shard(2)), dt(lb, Shard(1)))
        _placements(out, [Shard(2)], "out")
        ref_out, ref_lse = pk.merge_attention_states(oa, la, ob, lb)
        _close(out, ref_out, "out")
        _close(lse, ref_lse, "lse")

    def linear_column_parallel():
        x, w, b = torch.randn(2, 3, 16), torch.randn(8, 16), torch.randn(8)
        out = pk.linear(dt(x), dt(w, Shard(0)), dt(b, Shard(0)), activation="silu")
        _placements(out, [Shard(2)], "out")
        _close(out, pk.linear(x, w, b, activation="silu"), "out")

    def linear_row_parallel():
        x, w, b = torch.randn(2, 3, 16), torch.randn(8, 16), torch.randn(8)
        out = pk.linear(dt(x, Shard(2)), dt(w, Shard(1)), dt(b))   # bias replicated
        _placements(out, [Partial()], "out")
        _close(out, pk.linear(x, w, b), "out", atol=1e-4, rtol=1e-4)

    def linear_row_parallel_with_activation():
        # relu(sum of partial products) != sum of relu(partials): never Partial with an
        # activation, also right after the same shapes without one (DTensor caches its
        # sharding decisions: `activation` must be part of the key, positional or keyword)
        x, w = torch.randn(5, 16), torch.randn(8, 16)
        dx, dw = dt(x, Shard(1)), dt(w, Shard(1))
        _placements(pk.linear(dx, dw), [Partial()], "out without activation")
        lin = torch.ops.polykernels.linear
        _placements(lin(dx, dw, None, activation=None), [Partial()], "out (keyword None)")
        for out in (pk.linear(dx, dw, activation="relu"), lin(dx, dw, None, activation="relu")):
            assert not any(p.is_partial() for p in out.placements), out.placements
            _close(out, pk.linear(x, w, activation="relu"), "out", atol=1e-4, rtol=1e-4)

    def matmul_column_and_row_parallel():
        a, b, bias = torch.randn(3, 5, 16), torch.randn(16, 8), torch.randn(8)
        ref = pk.matmul(a, b, bias=bias)
        col = pk.matmul(dt(a), dt(b, Shard(1)), bias=dt(bias, Shard(0)))
        _placements(col, [Shard(2)], "column-parallel out")
        _close(col, ref, "column-parallel out", atol=1e-4, rtol=1e-4)
        row = pk.matmul(dt(a, Shard(2)), dt(b, Shard(0)), bias=dt(bias))
        _placements(row, [Partial()], "row-parallel out")
        _close(row, ref, "row-parallel out", atol=1e-4, rtol=1e-4)

    def quantized_linear_n_sharded():
        w, x, bias = torch.randn(16, 64), torch.randn(3, 64), torch.randn(16)
        qw, scales, zeros = pk.quantize_weight(w, bits=4, group_size=32, symmetric=False)
        kw = dict(bits=4, group_size=32)
        out = pk.quantized_linear(dt(x), dt(qw, Shard(0)), dt(scales, Shard(0)),
                                  dt(zeros, Shard(0)), bias=dt(bias, Shard(0)), **kw)
        _placements(out, [Shard(1)], "out")
        _close(out, pk.quantized_linear(x, qw, scales, zeros, bias=bias, **kw), "out",
               atol=1e-4, rtol=1e-4)

    def quantized_linear_k_sharded_is_gathered():
        # int4 packs along K and groups run along K: a K shard is refused, so DTensor
        # gathers qweight / scales instead of splitting bytes or groups; still correct
        w, x = torch.randn(16, 64), torch.randn(3, 64)
        qw, scales, _ = pk.quantize_weight(w, bits=4, group_size=32)
        out = pk.quantized_linear(dt(x, Shard(1)), dt(qw, Shard(1)), dt(scales, Shard(1)),
                                  bits=4, group_size=32)
        assert not any(p.is_partial() for p in out.placements), out.placements
        _close(out, pk.quantized_linear(x, qw, scales, bits=4, group_size=32), "out",
               atol=1e-4, rtol=1e-4)

    def grouped_matmul_replicated():
        x, ws = torch.randn(6, 8), torch.randn(3, 8, 4)
        sizes = torch.tensor([2, 0, 4], dtype=torch.int32)
        with implicit_replication():
            out = pk.grouped_matmul(dt(x), dt(ws), sizes)
        _placements(out, [R], "out")
        _close(out, pk.grouped_matmul(x, ws, sizes), "out", atol=1e-4, rtol=1e-4)

    def registered_at_import():
        # rank 0 imported polykernels first (the import hook registered the rules when
        # torch.distributed.tensor was imported), rank 1 imported torch.distributed.tensor
        # first (registered at `import polykernels`)
        import polykernels.distributed as pkd
        assert PK_IMPORTED_BEFORE_DTENSOR == (mesh.get_rank() == 0), PK_IMPORTED_BEFORE_DTENSOR
        assert pkd.is_registered()
        assert pkd._HOOK not in sys.meta_path, "the one-shot import hook is still installed"

    return {name: fn for name, fn in locals().items() if name in CASES}


PK_IMPORTED_BEFORE_DTENSOR = False


def _worker() -> None:
    global PK_IMPORTED_BEFORE_DTENSOR
    rank = int(os.environ["RANK"])
    if rank != 0:   # the other import order (see registered_at_import)
        importlib.import_module("torch.distributed.tensor")
    PK_IMPORTED_BEFORE_DTENSOR = "torch.distributed.tensor" not in sys.modules
    import polykernels  # noqa: F401
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=90))
    results = {}
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        for name, fn in _cases(mesh).items():
            torch.manual_seed(0)          # the same global tensors on every rank
            try:
                fn()
                results[name] = "ok"
            except Exception:
                results[name] = traceback.format_exc(limit=-6)
    finally:
        out = os.path.join(os.environ["PK_DTENSOR_OUT"], f"rank{rank}.json")
        with open(out, "w") as fh:
            json.dump(results, fh)
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker()
