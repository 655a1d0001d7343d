"""Shared benchmark helpers: timing, roofline figures, the report table, CSV/JSON/plot output.

Each ``benchmarks/bench_<op>.py`` defines ``run(report, device, quick)`` and ends with
``if __name__ == "__main__": main_for(run)``. Timing is the median after warm-up (CPU:
``time.perf_counter`` around synchronised calls; CUDA: ``triton.testing.do_bench``). Ratios
against torch come from rows measured in the same run.

Rows of one workload (same op and shape): the script's torch baseline ("torch"), each impl
pinned with ``pk.use`` (the impl's name; the torch *provider* impl is "pk:torch", so it never
clashes with the baseline), and "default": the public call unpinned, whatever dispatch picks
(``Row.picked``, from ``pk.explain``). ``contenders`` lists them. The default row carries
``vs_best`` = best ms of the other rows / default ms (goal: >= ``DEFAULT_GOAL``), kept up to
date as rows arrive and summarised after the table.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# CPU: a call slower than this is timed once, after one warm-up call (at that length more
# calls add nothing but minutes: e.g. torch's bf16 GEMM without native bf16 instructions takes
# seconds per 1024^3 call on an AVX2 machine). A slow call already made (``first_ms``: the one
# whose output was checked for errors) serves as that warm-up.
SLOW_CALL_MS = 1000.0


def timed_call(fn, device):
    """(fn(), its milliseconds)."""
    device = torch.device(device)
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, (time.perf_counter() - t0) * 1e3


def time_ms(fn, device, warmup: int = 3, rep: int = 10, min_time_s: float = 0.0,
            first_ms: float | None = None) -> float:
    """Median milliseconds of ``fn()`` after ``warmup`` calls (CPU: see ``SLOW_CALL_MS``)."""
    device = torch.device(device)
    if device.type == "cuda":
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    return time_interleaved({"fn": fn}, rep, warmup, device, {"fn": first_ms or 0.0},
                            min_time_s)["fn"]


def time_interleaved(fns: dict, rounds: int, warmup: int = 2, device="cpu",
                     first_ms: dict | None = None, min_time_s: float = 0.0,
                     spreads: dict | None = None) -> dict:
    """Median ms per contender, calling each once per round in turn: on a shared, noisy CPU
    the contenders' times then come from calls made under the same load. A contender slower
    than ``SLOW_CALL_MS`` (in warm-up, or already in ``first_ms[name]``, the call that served
    as its warm-up, and once more) is timed once. ``min_time_s``: more rounds until then
    (at most 10x ``rounds``). The order rotates from round to round. ``spreads`` (a dict)
    receives each contender's relative spread (see ``relative_spread``)."""
    if not fns:
        return {}
    device = torch.device(device)
    times = {name: [] for name in fns}
    slow = set()
    for name, fn in fns.items():
        if (first_ms or {}).get(name, 0.0) > SLOW_CALL_MS:
            ms = timed_call(fn, device)[1]
            if ms > SLOW_CALL_MS:
                slow.add(name)
                times[name].append(ms)
                continue
        for _ in range(warmup):
            if timed_call(fn, device)[1] > SLOW_CALL_MS:
                slow.add(name)
                break
    start = time.perf_counter()
    names = list(fns)
    n = 0
    while n < rounds or (time.perf_counter() - start < min_time_s and n < 10 * rounds):
        # each round starts one contender later: none is always the one after a given other
        # (caches, frequency) or always first
        for name in names[n % len(names):] + names[:n % len(names)]:
            if not (name in slow and times[name]):
                times[name].append(timed_call(fns[name], device)[1])
        n += 1
    if spreads is not None:
        spreads.update({name: relative_spread(t) for name, t in times.items()})
    return {name: statistics.median(t) for name, t in times.items()}


def relative_spread(samples: list[float]) -> float | None:
    """Interquartile range / median of the samples (None below 4 samples): how far apart
    two rows' medians may be from noise alone on this machine at this moment."""
    if len(samples) < 4:
        return None
    q1, _, q3 = statistics.quantiles(samples, n=4)
    return (q3 - q1) / statistics.median(samples)


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
    picked: str | None = None            # "default" rows: the impl dispatch chose
    vs_best: float | None = None         # "default" rows: best other row's ms / this ms
    best: str | None = None              # "default" rows: which row that best is
    contender: bool = True               # False: a variant (e.g. an fp8 cache), never "best"
    spread: float | None = None          # interquartile range / median of its samples

    @property
    def label(self) -> str:
        return f"{self.impl} ({self.picked})" if self.picked else self.impl


DEFAULT = "default"
DEFAULT_GOAL = 0.97    # the default call should reach this fraction of the best row's speed


def judge(vs_best: float, spread: float | None) -> str:
    """"ok" at or above the goal; "noise" below it but within ``spread`` of parity (the rows
    cannot be told apart here); "BELOW" otherwise."""
    if vs_best >= DEFAULT_GOAL:
        return "ok"
    if spread is not None and vs_best >= 1.0 - spread:
        return "noise"
    return "BELOW"


@dataclass
class Report:
    device: str
    rows: list[Row] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def add(self, *, op: str, shape: str, impl: str, ms: float, flops: float | None = None,
            nbytes: float | None = None, baseline: str | None = None,
            max_err: float | None = None, peak_tflops: float | None = None,
            peak_gbs: float | None = None, note: str = "", picked: str | None = None,
            contender: bool = True, spread: float | None = None) -> Row:
        """Add a timed row. ``baseline`` names the impl of an earlier row with the same op and
        shape (e.g. "torch"); its time gives the ratio. Peak figures give % of roofline.
        ``picked``: for the "default" row, the impl dispatch chose. ``contender=False``: a
        variant of the workload that does not count as a best time."""
        row = Row(op, shape, impl, ms, note=note, max_err=max_err, baseline=baseline,
                  picked=picked, contender=contender, spread=spread)
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
        self._update_vs_best(op, shape)
        _progress(row)
        return row

    def _update_vs_best(self, op: str, shape: str) -> None:
        rows = [r for r in self.rows if r.op == op and r.shape == shape]
        timed = [r for r in rows if r.impl != DEFAULT and r.contender and math.isfinite(r.ms)]
        best = min(timed, key=lambda r: r.ms, default=None)
        for r in rows:
            if r.impl == DEFAULT and best is not None and math.isfinite(r.ms) and r.ms > 0:
                r.vs_best, r.best = best.ms / r.ms, best.impl

    def header(self) -> str:
        """One line naming what the numbers come from: device, CPU kind or GPU, threads, load."""
        m = self.meta
        where = m.get("gpu") or f"{m.get('cpu')} [{m.get('cpu_features') or 'no AVX2'}]"
        load = m.get("load_average")
        return (f"# {m.get('date')}: {self.device}, {where}, {m.get('threads')} threads, torch "
                f"{m.get('torch')}" + ("" if load is None else f", load average {load:.2f} at start"))

    def table(self) -> str:
        head = ["op", "shape", "impl", "ms", "spread", "TFLOP/s", "GB/s", "% peak", "vs base",
                "default/best", "max err", "note"]
        lines = []
        for r in self.rows:
            lines.append([r.op, r.shape, r.label, f"{r.ms:.4g}",
                          "" if r.spread is None else f"{100 * r.spread:.0f}%",
                          "" if r.tflops is None else f"{r.tflops:.4g}",
                          "" if r.gbs is None else f"{r.gbs:.4g}",
                          "" if r.pct_of_peak is None else f"{r.pct_of_peak:.1f}",
                          "" if r.vs_baseline is None else f"{r.vs_baseline:.2f}x {r.baseline}",
                          "" if r.vs_best is None else f"{r.vs_best:.2f}x {r.best}",
                          "" if r.max_err is None else f"{r.max_err:.2e}", r.note])
        return _format(head, lines)

    def summary(self) -> str:
        """One line per workload with a default row: what dispatch picked, the best row of the
        run, default / best (speed), the larger spread of the two rows, and the verdict: "ok"
        (>= ``DEFAULT_GOAL``), "noise" (below it by less than that spread: the two rows'
        difference is not resolvable on this machine now) or "BELOW"."""
        rows = [r for r in self.rows if r.impl == DEFAULT]
        if not rows:
            return ""
        lines, verdicts = [], []
        for r in rows:
            best = next((b for b in self.rows if (b.op, b.shape, b.impl) == (r.op, r.shape, r.best)),
                        None)
            noise = max([x for x in (r.spread, best.spread if best else None) if x is not None],
                        default=None)
            verdict = "" if r.vs_best is None else judge(r.vs_best, noise)
            verdicts.append(verdict)
            lines.append([r.op, r.shape, r.picked or "?", r.best or "-",
                          "" if r.vs_best is None else f"{r.vs_best:.3f}x",
                          "" if noise is None else f"{100 * noise:.0f}%", verdict])
        judged = [v for v in verdicts if v]
        head = ["op", "shape", "default picked", "best row", "default/best", "spread",
                f">= {DEFAULT_GOAL}"]
        return (f"default call vs the best row of each workload (speed ratio; goal >= {DEFAULT_GOAL}x;"
                f" spread: interquartile range / median of the noisier row's samples):\n"
                + _format(head, lines)
                + f"\n{judged.count('ok')}/{len(judged)} workloads meet the goal; "
                f"{judged.count('noise')} more are below it by less than their spread, "
                f"{judged.count('BELOW')} below it")


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


def _format(head: list[str], lines: list[list]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)] if lines else [len(h) for h in head]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


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
        print(f"  . {row.op} {row.shape} {row.label}: {row.ms:.4g} ms", file=sys.stderr, flush=True)


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
        from polykernels.dispatch.accelerator import cpu_features
        model, features = cpu_features()
        meta["cpu"] = model or platform.processor() or platform.machine()
        meta["cpu_features"] = " ".join(sorted(features))   # the machine kind: AVX2 / AVX-512 / AMX
        meta["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        meta["load_average"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
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


def row_name(impl: str) -> str:
    """Row name of a pinned impl ("pk:torch" for the torch provider: "torch" is the baseline)."""
    return "pk:torch" if impl == "torch" else impl


def refusal(op: str, impl: str, *args, **kwargs) -> str | None:
    """None if impl ``impl`` accepts this public call of ``op`` (pk.explain under the pin),
    else why not."""
    import polykernels as pk
    with pk.use(**{op: impl}):
        d = pk.explain(op, *args, **kwargs)
    return None if d.chosen is not None else ("; ".join(d.refused.values()) or "refused")


def picked(op: str, *args, **kwargs) -> str:
    """The row name of the impl an unpinned call of ``op`` runs for these arguments
    (pk.explain; call it after the first call, so that the decision is the one that call made)."""
    import polykernels as pk
    d = pk.explain(op, *args, **kwargs)
    return row_name(d.chosen.name) if d.chosen is not None else "none"


def contenders(op: str, device, args: tuple, kwargs: dict | None = None,
               skip: tuple[str, ...] = ()) -> list[tuple[str, dict | None, str | None]]:
    """What to time for one workload of ``op`` called as ``pk.<op>(*args, **kwargs)``:
    (row name, pk.use choices, refusal) for each impl that ``timed_impls`` lists (except
    ``skip``), refusal None when that impl accepts these arguments; then ("default", None,
    None): the unpinned call. Time a row under ``pk.use(**choices)`` (no pin for default)."""
    kwargs = kwargs or {}
    rows = [(row_name(impl), {op: impl}, refusal(op, impl, *args, **kwargs))
            for impl in timed_impls(op, torch.device(device)) if impl not in skip]
    return rows + [(DEFAULT, None, None)]


def pinned(choices: dict | None):
    """``pk.use(**choices)``, or no pin at all for None (the default row)."""
    import contextlib
    import polykernels as pk
    return contextlib.nullcontext() if choices is None else pk.use(**choices)


def pinned_call(choices: dict | None, fn, *args, **kwargs):
    """A zero-argument call of ``fn(*args, **kwargs)`` under ``pinned(choices)``."""
    if choices is None:
        return lambda: fn(*args, **kwargs)

    def call():
        with pinned(choices):
            return fn(*args, **kwargs)
    return call


def time_rows(fns: dict, device, warmup: int = 3, rep: int = 10,
              first_ms: dict | None = None, spreads: dict | None = None) -> dict:
    """Median ms per named zero-argument function. CPU: interleaved rounds, so contenders
    (e.g. the default call and the impl it picks) are compared under the same load; GPU:
    ``time_ms`` each."""
    if torch.device(device).type == "cuda":
        return {name: time_ms(fn, device) for name, fn in fns.items()}
    return time_interleaved(fns, rounds=rep, warmup=warmup, device=device, first_ms=first_ms,
                            spreads=spreads)


def impl_rows(report: Report, op: str, device, args: tuple, kwargs: dict | None = None, *,
              shape: str, row_op: str | None = None, reps: dict | None = None, err_fn=None,
              setup=None, skip: tuple[str, ...] = (), baseline: str | None = "torch",
              baselines: dict | None = None, **add_kw) -> None:
    """The rows of one workload: ``baselines`` ({row name: (zero-argument fn, report.add
    keywords)}, the torch formulations), then ``pk.<op>(*args, **kwargs)`` once per
    ``contenders`` entry (each impl pinned, then the unpinned default), all timed together by
    ``time_rows`` (interleaved rounds on CPU: every row under the same load; ``reps``: its
    warmup / rep). ``err_fn(first result) -> max err``; ``setup()`` runs before each pk row's
    first call; other keywords go to ``report.add`` for the pk rows. A refusing or failing
    impl gets a NaN row that says why; the run goes on."""
    import polykernels as pk
    kwargs = kwargs or {}
    public = getattr(pk, op)
    rows = contenders(op, device, args, kwargs, skip)
    baselines = baselines or {}
    fns = {name: fn for name, (fn, _) in baselines.items()}
    first, errs, why = {}, {}, {}
    for name, choices, refused in rows:
        if refused is not None:
            why[name] = f"refused: {refused}"
            continue
        call = pinned_call(choices, public, *args, **kwargs)
        try:
            if setup is not None:
                setup()
            out, call_ms = timed_call(call, device)
            if choices is not None:   # the default's first call may include measuring
                first[name] = call_ms
            errs[name] = err_fn(out) if err_fn is not None else None
            fns[name] = call
        except Exception as e:  # an impl that fails this case: say so, keep going
            why[name] = f"failed: {e}"
    spreads = {}
    ms = time_rows(fns, device, first_ms=first, spreads=spreads, **(reps or {}))
    for name, (_, row_kw) in baselines.items():
        report.add(op=row_op or op, shape=shape, impl=name, ms=ms[name], spread=spreads.get(name),
                   **row_kw)
    for name, choices, _ in rows:
        if name in why:
            report.add(op=row_op or op, shape=shape, impl=name, ms=float("nan"), note=why[name][:80])
            continue
        report.add(op=row_op or op, shape=shape, impl=name, ms=ms[name], max_err=errs[name],
                   spread=spreads.get(name),
                   baseline=baseline, picked=None if choices else picked(op, *args, **kwargs),
                   **add_kw)


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
    print(report.header())
    print(report.table())
    if report.summary():
        print("\n" + report.summary())
    report.save(args.csv, args.json, args.plot)
    return report
