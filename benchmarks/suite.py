"""The benchmark suite behind ``polykernels bench``: runs every op's benchmark on one device.

Usage: ``python -m benchmarks.suite [--device cpu|cuda] [--quick] [--csv F] [--json F]
[--plot F.png] [--only attention,matmul]``. A script that fails is reported and the suite
exits non-zero after running the rest. After the table: per workload, the default (unpinned)
call's speed over the best row of the run (goal >= 0.97x).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

import torch

from .common import Report, add_common_args, default_device, environment

SCRIPTS = ["bench_merge", "bench_attention", "bench_decode", "bench_matmul", "bench_dispatch"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="polykernels bench", description=__doc__)
    add_common_args(parser)
    parser.add_argument("--only", default=None, help="comma list of scripts (without bench_)")
    args = parser.parse_args(argv)
    device = torch.device(args.device) if args.device else default_device()
    report = Report(str(device), meta=environment(device))
    wanted = SCRIPTS if not args.only else [f"bench_{n.strip()}" for n in args.only.split(",")]
    failed = []
    for name in wanted:
        print(f"== {name} on {device}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            module.run(report, device, args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"== {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
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
