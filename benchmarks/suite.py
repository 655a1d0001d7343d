"""The benchmark suite behind ``polykernels bench``: runs every op's benchmark on one device.

Usage: ``python -m benchmarks.suite [--device cpu|cuda] [--quick] [--csv F] [--json F]
[--plot F.png] [--only attention,matmul]``. A script that fails is reported and the suite
exits non-zero after running the rest. After the table: per workload, the default (unpinned)
call's speed over the best row of the run (goal >= 0.97x). Progress goes to stderr: a line
``[k/K] bench_x (elapsed, ETA)`` per script, then ``[i/N] <row> ...`` per row (common.Progress).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

import torch

from .common import Progress, Report, add_common_args, default_device, environment, fmt_duration

SCRIPTS = ["bench_merge", "bench_attention", "bench_decode", "bench_varlen_paged", "bench_matmul",
           "bench_dispatch"]


def _when(left: list[str], device, quick: bool, elapsed: float, done: int, total: int) -> str:
    """"elapsed mm:ss, ETA mm:ss" before the first of the scripts ``left``: the ETA is the sum
    of their last completed runs' times where all are known, else elapsed per script so far
    times the scripts left (none before the first)."""
    last = [Progress.expected_s(name, device, quick) for name in left]
    if all(t is not None for t in last):
        eta = sum(last)
    elif done:
        eta = elapsed / done * (total - done)
    else:
        eta = None
    return (f"elapsed {fmt_duration(elapsed)}"
            + ("" if eta is None else f", ETA {fmt_duration(eta)}"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="polykernels bench", description=__doc__)
    add_common_args(parser)
    parser.add_argument("--only", default=None, help="comma list of scripts (without bench_)")
    args = parser.parse_args(argv)
    device = torch.device(args.device) if args.device else default_device()
    report = Report(str(device), meta=environment(device))
    wanted = SCRIPTS if not args.only else [f"bench_{n.strip()}" for n in args.only.split(",")]
    failed = []
    suite_start = time.perf_counter()
    for k, name in enumerate(wanted):
        when = _when(wanted[k:], device, args.quick, time.perf_counter() - suite_start, k,
                     len(wanted))
        print(f"[{k + 1}/{len(wanted)}] {name} on {device} ({when})", file=sys.stderr, flush=True)
        start = time.perf_counter()
        report.progress = Progress.for_script(name, device, args.quick)
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            module.run(report, device, args.quick)
            report.progress.finish()
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"[{k + 1}/{len(wanted)}] {name}: {report.progress.done} rows in "
              f"{fmt_duration(time.perf_counter() - start)}", file=sys.stderr, flush=True)
    report.finish()
    print(report.header())
    print(report.table())
    if report.summary():
        print("\n" + report.summary())
    report.save(args.csv, args.json, args.plot)
    if failed:
        print(f"benchmark scripts failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
