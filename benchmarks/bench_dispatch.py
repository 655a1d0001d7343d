"""Dispatch overhead: what the public call costs on top of the impl it runs (1 thread).

Cached decision: a tiny op (pk.matmul 4x4 fp32, pk.merge_attention_states B1 H1 D8) called
through dispatch() (the registry: the cached decision), through the public function under
torch.inference_mode (as servers call it) and with autograd on, vs the chosen impl's function
called directly with the internal arguments; each row is a per-call time (median over rounds
of a batch of calls, the batches interleaved, after warm-up), the note gives the difference
in microseconds per call.

First call of a new shape class: pk.matmul [m, 64] x [64, 64] and pk.attention
[1, s, 4, 64] bf16 for sizes no earlier call used (a fresh selection table, so nothing is
read from disk): median ms of the first call over several classes after one warm-up class.
With measured selection this includes measuring the candidates (the note says how the
decision was made and what a second call of that class costs).
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time

import torch

import polykernels as pk
from benchmarks.common import main_for, time_interleaved

_BATCH = 200   # calls per timed sample: a single call of a few microseconds is below the noise


def _batched(fn, inference_mode=False):
    def batch():
        with torch.inference_mode(inference_mode):   # entered once per batch, not per call
            for _ in range(_BATCH):
                fn()
    return batch


def _cached(report, device, quick):
    """Three layers on top of the chosen impl's own function:
    dispatch() (the cached decision: call key, lookup, failover loop), the public function in
    torch.inference_mode (argument checks + the torch.library op, as servers call it), and the
    public function with autograd on (the op's Autograd kernel too)."""
    from polykernels.dispatch import dispatch
    from polykernels.ops.explain import internal_args
    a, b = torch.randn(4, 4, device=device), torch.randn(4, 4, device=device)
    out_a, out_b = torch.randn(1, 1, 1, 8, device=device), torch.randn(1, 1, 1, 8, device=device)
    lse_a, lse_b = torch.randn(1, 1, 1, device=device), torch.randn(1, 1, 1, device=device)
    cases = [("matmul", "4x4 fp32", (a, b)),
             ("merge_attention_states", "B1 S1 H1 D8 fp32", (out_a, lse_a, out_b, lse_b))]
    for op, shape, args in cases:
        public = getattr(pk, op)
        public(*args)                                  # decides (and measures) once
        impl = pk.explain(op, *args).chosen
        direct_args = internal_args(op, *args)
        fns = {"direct": lambda: impl.fn(*direct_args),
               "dispatch": lambda: dispatch(op, *direct_args),
               "inference": lambda: public(*args),
               "grad": lambda: public(*args)}
        ms = time_interleaved({k: _batched(f, k == "inference") for k, f in fns.items()},
                              rounds=5 if quick else 15, device=device)
        us = {k: v / _BATCH * 1e3 for k, v in ms.items()}
        label = f"{op} {shape}, cached decision"
        rows = [(f"direct ({impl.name})", "direct", "the chosen impl's function, internal args"),
                ("dispatch()", "dispatch", "the cached decision: overhead {:.1f} us/call"),
                (f"pk.{op} (inference_mode)", "inference", "public call: overhead {:.1f} us/call"),
                (f"pk.{op} (autograd on)", "grad", "public call: overhead {:.1f} us/call")]
        for name, key, note in rows:
            report.add(op="dispatch", shape=label, impl=name, ms=us[key] / 1e3,
                       note=note.format(us[key] - us["direct"]))


def _first_calls(report, device, quick):
    """Median first-call ms over fresh shape classes, after one warm-up class."""
    def matmul(n):
        a, w = torch.randn(n, 64, device=device), torch.randn(64, 64, device=device)
        return "matmul", (a, w), {}

    def attention(n):
        q, k, v = (torch.randn(1, n, 4, 64, dtype=torch.bfloat16, device=device) for _ in range(3))
        return "attention", (q, k, v), dict(causal=True)

    sizes = [37, 41, 43, 47] if quick else [37, 41, 43, 47, 53, 59, 61]   # new classes (<= 256: exact)
    previous = os.environ.get("POLYKERNELS_CACHE_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["POLYKERNELS_CACHE_DIR"] = tmp        # an empty selection table
        try:
            for make, shape in ((matmul, "matmul [m, 64] x [64, 64] fp32"),
                                (attention, "attention [1, s, 4, 64] bf16 causal")):
                first, second, hows = [], [], set()
                for i, n in enumerate(sizes):
                    op, args, kwargs = make(n)
                    fn = getattr(pk, op)
                    t0 = time.perf_counter()
                    fn(*args, **kwargs)
                    t1 = time.perf_counter()
                    fn(*args, **kwargs)
                    t2 = time.perf_counter()
                    if i:                                 # the first class warms up
                        first.append((t1 - t0) * 1e3)
                        second.append((t2 - t1) * 1e3)
                    d = pk.explain(op, *args, **kwargs)
                    hows.add(f"{getattr(d, 'how', 'priority')} -> {d.chosen.name}")
                ms1, ms2 = statistics.median(first), statistics.median(second)
                report.add(op="dispatch", shape=f"{shape}, first call of a new shape class",
                           impl=f"pk.{op}", ms=ms1,
                           note=f"+{ms1 - ms2:.3g} ms over the 2nd call ({ms2:.3g} ms); "
                                f"{'; '.join(sorted(hows))}"[:120])
        finally:
            if previous is None:
                os.environ.pop("POLYKERNELS_CACHE_DIR", None)
            else:
                os.environ["POLYKERNELS_CACHE_DIR"] = previous


def run(report, device, quick: bool) -> None:
    # One thread: dispatch is single-threaded Python, and a tiny op that opens a 2-thread
    # parallel region on a shared machine waits for a descheduled worker for a time slice
    # (milliseconds), which would bury the microseconds measured here.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _cached(report, device, quick)
        _first_calls(report, device, quick)
    finally:
        torch.set_num_threads(prev)


if __name__ == "__main__":
    main_for(run)
