"""Shared benchmark helpers: timing, roofline figures, the report table, CSV/JSON/plot output.

Each ``benchmarks/bench_<op>.py`` defines ``run(report, device, quick)`` and ends with
``if __name__ == "__main__": main_for(run)``. Timing is the median after warm-up (CPU:
``time.perf_counter`` around synchronised calls; CUDA: ``triton.testing.do_bench``). Ratios
against torch come from rows measured in the same run.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device, warmup: int = 3, rep: int = 10, min_time_s: float = 0.0) -> float:
    """Median milliseconds of ``fn()`` after ``warmup`` calls."""
    device = torch.device(device)
    if device.type == "cuda":
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    for _ in range(warmup):
        fn()
    times = []
    start_all = time.perf_counter()
    while len(times) < rep or time.perf_counter() - start_all < min_time_s:
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 10 * rep:
            break
    return statistics.median(times)


_bandwidth_cache: dict[str, float] = {}


def copy_bandwidth_gbs(device, nbytes: int | None = None) -> float:
    """Device copy bandwidth measured now (bytes read + written / time), GB/s."""
    device = torch.device(device)
    key = str(device)
    if key not in _bandwidth_cache:
        nbytes = nbytes or (1 << 30 if device.type == "cuda" else 256 << 20)
        src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
        dst = torch.empty_like(src)
        ms = time_ms(lambda: dst.copy_(src), device, warmup=2, rep=7)
        _bandwidth_cache[key] = 2 * nbytes / (ms * 1e-3) / 1e9
    return _bandwidth_cache[key]


@dataclass
class Row:
    op: str
    shape: str
    impl: str
    ms: float
    tflops: float | None = None
    gbs: float | None = None
    vs_baseline: float | None = None     # baseline ms / this ms (> 1: faster than baseline)
    baseline: str | None = None
    max_err: float | None = None
    pct_of_peak: float | None = None     # % of the roofline figure given (FLOP or bandwidth)
    note: str = ""


@dataclass
class Report:
    device: str
    rows: list[Row] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def add(self, *, op: str, shape: str, impl: str, ms: float, flops: float | None = None,
            nbytes: float | None = None, baseline: str | None = None,
            max_err: float | None = None, peak_tflops: float | None = None,
            peak_gbs: float | None = None, note: str = "") -> Row:
        """Add a timed row. ``baseline`` names the impl of an earlier row with the same op and
        shape (e.g. "torch"); its time gives the ratio. Peak figures give % of roofline."""
        row = Row(op, shape, impl, ms, note=note, max_err=max_err, baseline=baseline)
        if flops is not None:
            row.tflops = flops / (ms * 1e-3) / 1e12
            if peak_tflops:
                row.pct_of_peak = 100 * row.tflops / peak_tflops
        if nbytes is not None:
            row.gbs = nbytes / (ms * 1e-3) / 1e9
            if peak_gbs and row.pct_of_peak is None:
                row.pct_of_peak = 100 * row.gbs / peak_gbs
        if baseline is not None:
            base = [r for r in self.rows if r.op == op and r.shape == shape and r.impl == baseline]
            if base:
                row.vs_baseline = base[-1].ms / ms
        self.rows.append(row)
        _progress(row)
        return row

    def table(self) -> str:
        head = ["op", "shape", "impl", "ms", "TFLOP/s", "GB/s", "% peak", "vs base", "max err", "note"]
        lines = []
        for r in self.rows:
            lines.append([r.op, r.shape, r.impl, f"{r.ms:.4g}",
                          "" if r.tflops is None else f"{r.tflops:.4g}",
                          "" if r.gbs is None else f"{r.gbs:.4g}",
                          "" if r.pct_of_peak is None else f"{r.pct_of_peak:.1f}",
                          "" if r.vs_baseline is None else f"{r.vs_baseline:.2f}x {r.baseline}",
                          "" if r.max_err is None else f"{r.max_err:.2e}", r.note])
        widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)] if lines else [len(h) for h in head]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*line) for line in lines]
        return "\n".join(out)

    def save(self, csv_path: str | None = None, json_path: str | None = None,
             plot_path: str | None = None) -> None:
        if csv_path:
            with open(csv_path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(asdict(self.rows[0]).keys()) if self.rows else ["op"])
                w.writeheader()
                for r in self.rows:
                    w.writerow(asdict(r))
        if json_path:
            with open(json_path, "w") as f:
                json.dump({"meta": self.meta, "rows": [asdict(r) for r in self.rows]}, f, indent=1)
        if plot_path:
            plot(self, plot_path)


def plot(report: Report, path: str) -> None:
    """Bar chart of the ratio vs baseline per (op, shape, impl) (needs matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in report.rows if r.vs_baseline is not None]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(rows)), 4))
    ax.bar(range(len(rows)), [r.vs_baseline for r in rows])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r.op} {r.shape} {r.impl}" for r in rows], rotation=80, fontsize=6)
    ax.set_ylabel("speed-up vs baseline")
    ax.set_title(f"polykernels on {report.device}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_quiet = False


def _progress(row: Row) -> None:
    if not _quiet:
        print(f"  . {row.op} {row.shape} {row.impl}: {row.ms:.4g} ms", file=sys.stderr, flush=True)


def environment(device: torch.device) -> dict:
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device),
            "command": " ".join(sys.argv), "threads": torch.get_num_threads()}
    try:
        import triton
        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    else:
        meta["cpu"] = platform.processor() or platform.machine()
        meta["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return meta


def max_abs_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out.float() - ref.float()).abs().max().item() if out.numel() else 0.0


def timed_impls(op: str, device: torch.device) -> list[str]:
    """Impl names registered for ``op`` that really run on ``device`` (the Triton
    interpreter is excluded from timing: it is not a speed)."""
    import polykernels  # noqa: F401  (registers the ops)
    from polykernels.dispatch import registry
    registry.ensure_loaded()
    names = []
    for impl in registry.impls.get(op, []):
        backend = registry.backends[impl.backend]
        if backend.serves(device.type) and backend.is_available() and impl.name not in names:
            names.append(impl.name)
    return names


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the accelerator)")
    parser.add_argument("--quick", action="store_true", help="a few small shapes")
    parser.add_argument("--csv", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None, help="PNG path (needs matplotlib)")


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def main_for(run) -> Report:
    """Entry point for one benchmark script: parse args, run, print table, save outputs."""
    parser = argparse.ArgumentParser(description=(run.__module__ or "benchmark"))
    add_common_args(parser)
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else default_device()
    report = Report(str(device), meta=environment(device))
    run(report, device, args.quick)
    print(report.table())
    report.save(args.csv, args.json, args.plot)
    return report
