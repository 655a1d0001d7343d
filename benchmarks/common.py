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

Reading a table: every row's error is ``rel err`` = max|out - ref| / max|ref| against the
reference run on upcast copies (fp32 for 16-bit inputs, fp64 for fp32: ``reference_output``),
and ``err/tol`` is that over the workload's tolerance, the project's rule (docs/testing.md):
``TOL_FACTOR`` (backward: ``TOL_FACTOR_BWD``) x the rel err of torch's own same-dtype result
(the "torch" row, marked "base") + the dtype's floor; <= 1 is "ok". A row whose timing cannot
be trusted (spread above ``SPREAD_LIMIT``, or the 1-minute load average above the thread count
while it ran) carries "!" and a footnote says why. While a script runs, one line per row goes
to stderr: ``[i/N] <row> ... (elapsed mm:ss, ETA mm:ss)``, N and the ETA from the previous run
of the same script (``Progress``).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import statistics
import sys
import textwrap
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


def llc_bytes() -> int:
    """This CPU's last-level cache in bytes (sysfs; 32 MiB where it does not say)."""
    best = 0
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(root):
            with open(os.path.join(root, entry, "size")) as fh:
                text = fh.read().strip()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            best = max(best, int(text.rstrip("KMG")) * mult)
    except (OSError, ValueError):
        pass
    return best or 32 << 20


_evict_buffers: dict[str, torch.Tensor] = {}


def evict_cpu_caches() -> None:
    """Read a buffer of twice the last-level cache, so that the next call finds its inputs in
    DRAM, as a server's decode step does (each layer's weights were evicted by the other
    layers'). Read, not written: dirty lines would be written back during the timed call."""
    buf = _evict_buffers.get("cpu")
    if buf is None:
        buf = torch.ones(2 * llc_bytes() // 4, dtype=torch.float32)
        _evict_buffers["cpu"] = buf
    buf.sum()


def time_interleaved(fns: dict, rounds: int, warmup: int = 2, device="cpu",
                     first_ms: dict | None = None, min_time_s: float = 0.0,
                     spreads: dict | None = None, cold: bool = False) -> dict:
    """Median ms per contender, calling each once per round in turn: on a shared, noisy CPU
    the contenders' times then come from calls made under the same load. A contender slower
    than ``SLOW_CALL_MS`` (in warm-up, or already in ``first_ms[name]``, the call that served
    as its warm-up, and once more) is timed once. ``min_time_s``: more rounds until then
    (at most 10x ``rounds``). Each round calls the contenders in a fresh (seeded) random
    order: with a fixed or rotated order every contender always follows the same other one,
    and a row right after a row running the same kernel (the default after the impl it
    picks) found its data warm in the last-level cache (measured on the AVX2 VM: weight-only
    M1, a 22 MB weight, ran 1.5x faster there). ``spreads`` (a dict) receives each
    contender's relative spread (see ``relative_spread``). ``cold``: the last-level cache is
    evicted before each timed call (``evict_cpu_caches``, not timed), for workloads whose
    data would fit in it but comes from DRAM in a server (GPU timing, triton's do_bench,
    clears the L2 by itself)."""
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
    order = random.Random(len(names))   # seeded: the same schedule for the same contenders
    n = 0
    while n < rounds or (time.perf_counter() - start < min_time_s and n < 10 * rounds):
        order.shuffle(names)   # no contender always first, or always after a given other
        for name in names:
            if not (name in slow and times[name]):
                if cold:
                    evict_cpu_caches()
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


def read_bandwidth_gbs(device, nbytes: int | None = None) -> float:
    """Device read bandwidth measured now: a sum over a buffer that does not fit in cache
    (bytes read / time), GB/s. The limit of a read-only kernel such as paged decode, which
    the copy figure (read + write) is not."""
    device = torch.device(device)
    key = f"read {device}"
    if key not in _bandwidth_cache:
        nbytes = nbytes or (1 << 30 if device.type == "cuda" else 256 << 20)
        src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
        ms = time_ms(lambda: src.sum(), device, warmup=2, rep=7)
        _bandwidth_cache[key] = nbytes / (ms * 1e-3) / 1e9
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
    rel_err: float | None = None         # max|out - ref| / max|ref| against the upcast reference
    err_floor: float | None = None       # the output dtype's floor, relative (see ``rel_err``)
    tol: float | None = None             # the workload's tolerance on rel_err (``Report.judge``)
    load: float | None = None            # 1-min load average while timed (max of before / after)
    unreliable: str = ""                 # why its time cannot be trusted ("" if it can)

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


SPREAD_LIMIT = 0.10    # a row whose spread (IQR / median) is above this is flagged unreliable
TOL_BASE = "torch"     # the row whose error sets its workload's tolerance: torch in the same dtype
TOL_FACTOR = 2.0       # docs/testing.md: 2x torch's own error (forward) ...
TOL_FACTOR_BWD = 3.0   # ... 3x for a backward ("bwd" in the op's name)


def tol_factor(op: str) -> float:
    return TOL_FACTOR_BWD if "bwd" in op or "backward" in op else TOL_FACTOR


def format_err(row: Row) -> tuple[str, str]:
    """The table's ("rel err", "err/tol") cells of a row: e.g. ("3.1e-03", "0.41x ok"),
    ("9.2e-02", "2.3x OVER"), the tolerance's own row ("1.6e-03", "base"), a legacy bare
    absolute error ("abs 1.9e-03", "")."""
    if row.rel_err is None:
        return ("" if row.max_err is None else f"abs {row.max_err:.2e}"), ""
    err = f"{row.rel_err:.1e}"
    if row.impl == TOL_BASE:
        return err, "base"
    if row.tol is None:
        return err, ""
    ratio = row.rel_err / row.tol if row.tol > 0 else (0.0 if row.rel_err == 0 else math.inf)
    if not math.isfinite(ratio):
        return err, "OVER"    # a non-finite output (rel err inf), or a 0 tolerance missed
    return err, f"{ratio:.2g}x {'ok' if ratio <= 1 else 'OVER'}"


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


@dataclass
class Report:
    device: str
    rows: list[Row] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    progress: Progress | None = field(default=None, repr=False, compare=False)
    _load: float | None = field(default=None, repr=False, compare=False)   # at the last add

    def add(self, *, op: str, shape: str, impl: str, ms: float, flops: float | None = None,
            nbytes: float | None = None, baseline: str | None = None,
            max_err: Err | float | None = None, peak_tflops: float | None = None,
            peak_gbs: float | None = None, note: str = "", picked: str | None = None,
            contender: bool = True, spread: float | None = None) -> Row:
        """Add a timed row. ``baseline`` names the impl of an earlier row with the same op and
        shape (e.g. "torch"); its time gives the ratio. Peak figures give % of roofline.
        ``picked``: for the "default" row, the impl dispatch chose. ``contender=False``: a
        variant of the workload that does not count as a best time. ``max_err``: an ``Err``
        (``rel_err(out, reference)``: judged against the workload's tolerance), or a bare
        absolute error (older scripts: shown as such, not judged)."""
        row = Row(op, shape, impl, ms, note=note, baseline=baseline,
                  picked=picked, contender=contender, spread=spread)
        if isinstance(max_err, Err):
            row.max_err, row.rel_err, row.err_floor = max_err.abs, max_err.rel, max_err.floor
        else:
            row.max_err = max_err
        # the load before this row's timing (the last row's end, or the run's start) and after
        now = load_average()
        before = self.meta.get("load_average") if not self.rows else self._load
        loads = [x for x in (before, now) if x is not None]
        row.load, self._load = (max(loads) if loads else None), now
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
        if self.progress is None:
            self.progress = Progress(None)
        if not _quiet:
            self.progress.step(f"{row.op} {row.shape} {row.label}", f"{row.ms:.4g} ms")
        else:
            self.progress.done += 1
        return row

    def _update_vs_best(self, op: str, shape: str) -> None:
        rows = [r for r in self.rows if r.op == op and r.shape == shape]
        timed = [r for r in rows if r.impl != DEFAULT and r.contender and math.isfinite(r.ms)]
        best = min(timed, key=lambda r: r.ms, default=None)
        for r in rows:
            if r.impl == DEFAULT and best is not None and math.isfinite(r.ms) and r.ms > 0:
                r.vs_best, r.best = best.ms / r.ms, best.impl

    @property
    def threads(self) -> int:
        return self.meta.get("threads") or torch.get_num_threads()

    def judge(self) -> None:
        """Fill each row's ``tol`` (``tol_factor`` x the rel err of its workload's ``TOL_BASE``
        row + its own dtype floor; None without that row's error) and ``unreliable`` (spread
        above ``SPREAD_LIMIT``; 1-minute load average above the thread count while it ran).
        Idempotent: the table, the plot and the saved files call it (rows may change after
        they are added, e.g. a script re-pointing ``baseline``)."""
        base = {(r.op, r.shape): r.rel_err for r in self.rows
                if r.impl == TOL_BASE and r.rel_err is not None}
        for r in self.rows:
            b = base.get((r.op, r.shape))
            r.tol = None if r.rel_err is None or b is None else \
                tol_factor(r.op) * b + (r.err_floor or 0.0)
            why = []
            if r.spread is not None and r.spread > SPREAD_LIMIT and math.isfinite(r.ms):
                why.append("spread")
            if r.load is not None and r.load > self.threads and math.isfinite(r.ms):
                why.append("load")
            r.unreliable = "+".join(why)

    def finish(self) -> None:
        """Record the end of the run (the load average then, for the header)."""
        self.meta["load_average_end"] = load_average()

    def header(self) -> str:
        """One line naming what the numbers come from: device, CPU kind or GPU, threads, load."""
        m = self.meta
        where = m.get("gpu") or f"{m.get('cpu')} [{m.get('cpu_features') or 'no AVX2'}]"
        load, end = m.get("load_average"), m.get("load_average_end")
        loads = ""
        if load is not None:
            loads = (f", load average {load:.2f} at start"
                     + ("" if end is None else f", {end:.2f} at end"))
        return (f"# {m.get('date')}: {self.device}, {where}, {m.get('threads')} threads, torch "
                f"{m.get('torch')}" + loads)

    def table(self) -> str:
        """The rows, then footnotes: which rows are unreliable and why, how errors are judged."""
        self.judge()
        head = ["op", "shape", "impl", "ms", "spread", "!", "TFLOP/s", "GB/s", "% peak", "vs base",
                "default/best", "rel err", "err/tol", "note"]
        lines = []
        for r in self.rows:
            lines.append([r.op, r.shape, r.label, f"{r.ms:.4g}",
                          "" if r.spread is None else f"{100 * r.spread:.0f}%",
                          "!" if r.unreliable else "",
                          "" if r.tflops is None else f"{r.tflops:.4g}",
                          "" if r.gbs is None else f"{r.gbs:.4g}",
                          "" if r.pct_of_peak is None else f"{r.pct_of_peak:.1f}",
                          "" if r.vs_baseline is None else f"{r.vs_baseline:.2f}x {r.baseline}",
                          "" if r.vs_best is None else f"{r.vs_best:.2f}x {r.best}",
                          *format_err(r), r.note])
        return _format(head, lines) + "".join(f"\n{n}" for n in self.footnotes())

    def footnotes(self) -> list[str]:
        """What the "!" and err/tol columns mean for this table (empty lines left out)."""
        self.judge()
        notes = []
        flagged = [r for r in self.rows if r.unreliable]
        if flagged:
            spread = sum("spread" in r.unreliable for r in flagged)
            loaded = [r.load for r in flagged if "load" in r.unreliable]
            why = []
            if spread:
                why.append(f"{spread} with a spread (IQR / median of its samples) above "
                           f"{100 * SPREAD_LIMIT:.0f}%")
            if loaded:
                why.append(f"{len(loaded)} timed while the 1-minute load average (up to "
                           f"{max(loaded):.2f}) was above the {self.threads} threads")
            notes.append(f"! {len(flagged)} of {len(self.rows)} rows unreliable: {'; '.join(why)}. "
                         "Their times and ratios may be off by more than the spread shows: "
                         "re-run on a quiet machine before drawing conclusions from them.")
        judged = [r for r in self.rows if r.rel_err is not None]
        if judged:
            over = [r for r in judged if r.tol is not None and r.rel_err > r.tol]
            notes.append(
                f"rel err: max|out - ref| / max|ref| against the reference on fp32 (16-bit inputs)"
                f" / fp64 (fp32 inputs) copies; err/tol: rel err over {TOL_FACTOR:g}x (bwd "
                f"{TOL_FACTOR_BWD:g}x) the \"{TOL_BASE}\" row's (\"base\": torch in the same "
                f"dtype) + the dtype's floor (docs/testing.md); <= 1x is ok. "
                + (f"{len(over)} row{'s' if len(over) > 1 else ''} OVER tolerance." if over else
                   "No row is over its tolerance."))
        if any(r.rel_err is None and r.max_err is not None for r in self.rows):
            notes.append("abs: a bare max |out - ref| (not judged against a tolerance).")
        return notes

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
        self.judge()
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


# Provider colours, the same in every panel and every plot (tab10); other impl names take the
# colours left, in order of first appearance.
_COLOURS = {"triton": "#1f77b4", "cpp": "#ff7f0e", "pk:torch": "#2ca02c", "default": "#d62728",
            "reference": "#7f7f7f", "sdpa:flash": "#9467bd", "sdpa:math": "#8c564b",
            "sdpa:efficient": "#e377c2", "sdpa:cudnn": "#bcbd22", "torch": "#17becf"}
_SPARE = ["#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
          "#dbdb8d", "#9edae5", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]
_ABBREV = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16", "float8_e4m3fn": "fp8",
           "float8_e4m3fnuz": "fp8", "float8_e5m2": "fp8e5"}


def provider_colours(impls: list[str]) -> dict[str, str]:
    """{impl: colour} for these impl names: the fixed ones, then spare colours in order."""
    spare = iter(_SPARE * (1 + len(impls) // len(_SPARE)))
    return {i: _COLOURS.get(i) or next(spare) for i in impls}


def _short(shape: str) -> list[str]:
    return [_ABBREV.get(t, t) for t in shape.split()]


def _shape_labels(shapes: list[str], width: int) -> tuple[list[str], str]:
    """Wrapped x labels for one panel's shapes, less the words all of them share (returned
    apart, for the panel title)."""
    words = [_short(s) for s in shapes]
    common = [w for w in words[0] if all(w in ws for ws in words[1:])] if len(words) > 1 else []
    labels = []
    for ws in words:
        rest = [w for w in ws if w not in common] or ["—"]   # the title says it all
        labels.append(textwrap.fill(" ".join(rest), width=width, break_long_words=False))
    return labels, " ".join(common)


def _ticks(lo: float, hi: float) -> list[float]:
    """Readable speed-up ticks between lo and hi (log axis): 1-2-5 steps, finer when the
    range is narrow, always 1."""
    steps = [1, 2, 5]
    if hi / lo < 4:
        steps = [1, 1.25, 1.5, 2, 3, 5, 7.5]
    if hi / lo < 1.6:
        steps = [1, 1.1, 1.2, 1.3, 1.5, 1.7, 2, 2.5, 3, 4, 5, 6, 7, 8, 9]
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    ticks = [m * 10.0 ** e for e in decades for m in steps]
    return sorted({round(t, 6) for t in ticks if lo <= t <= hi} | {1.0})


def plot(report: Report, path: str):
    """One panel per op family (the rows' ``op``): per shape, one bar per impl of its speed-up
    over the row's named ``baseline`` (log scale, bars grow from the 1x line, up when faster),
    one colour per impl across all panels, one legend; hatched bars are rows flagged
    unreliable ("!" in the table). Writes a PNG (matplotlib, Agg) and returns the figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    report.judge()
    rows = [r for r in report.rows if r.vs_baseline is not None and math.isfinite(r.vs_baseline)
            and r.vs_baseline > 0]
    families: dict[str, list[Row]] = {}
    for r in rows:
        families.setdefault(r.op, []).append(r)
    seen = list(dict.fromkeys(r.impl for r in rows))   # known providers first, default last
    impls = ([i for i in _COLOURS if i in seen and i != DEFAULT]
             + [i for i in seen if i not in _COLOURS] + [i for i in seen if i == DEFAULT])
    colours = provider_colours(impls)
    shapes_of = {op: list(dict.fromkeys(r.shape for r in rs)) for op, rs in families.items()}
    impls_of = {op: [i for i in impls if any(r.impl == i for r in rs)]
                for op, rs in families.items()}
    # inches per shape (a group of bars): the panels' width; two columns while they are narrow
    group_in = {op: 0.5 + 0.22 * len(names) for op, names in impls_of.items()}
    widest = max([len(shapes_of[op]) * g for op, g in group_in.items()], default=1.0)
    panel_w = min(14.0, max(5.5, 1.2 + widest))
    n = max(len(families), 1)
    ncols = 2 if n > 1 and panel_w <= 10 else 1
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_w * ncols, 3.9 * nrows + 0.9),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        fig.delaxes(ax)
    for ax, (op, rs) in zip(axes.flat, families.items()):
        shapes, names = shapes_of[op], impls_of[op]
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            for x, shape in enumerate(shapes):
                hit = [r for r in rs if r.shape == shape and r.impl == name]
                if not hit:
                    continue
                r = hit[-1]
                v = r.vs_baseline
                pos = x - 0.4 + width * (j + 0.5)
                ax.bar(pos, v - 1.0, bottom=1.0, width=width * 0.92, color=colours[name],
                       edgecolor="black" if r.unreliable else colours[name], linewidth=0.6,
                       hatch="///" if r.unreliable else None)
                if len(shapes) * len(names) <= 40:
                    ax.annotate(f"{v:.0f}" if v >= 10 else f"{v:.2g}", (pos, v),
                                xytext=(0, 2 if v >= 1 else -2), textcoords="offset points",
                                ha="center", va="bottom" if v >= 1 else "top", fontsize=6.5,
                                rotation=90 if len(names) > 4 else 0)
        values = [r.vs_baseline for r in rs]
        lo, hi = min(values + [1.0]) / 1.35, max(values + [1.0]) * 1.35
        ax.set_yscale("log")
        ax.set_ylim(lo, hi)
        ax.yaxis.set_major_locator(FixedLocator(_ticks(lo, hi)))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}x"))
        ax.axhline(1.0, color="black", lw=1.0, zorder=0)
        ax.grid(axis="y", color="0.88", lw=0.6, zorder=-1)
        ax.set_axisbelow(True)
        # a panel with few shapes keeps its bars' width: its groups centred, space either side
        span = max(len(shapes), (panel_w - 1.2) / group_in[op])
        middle = (len(shapes) - 1) / 2
        ax.set_xlim(middle - span / 2 - 0.1, middle + span / 2 + 0.1)
        labels, common = _shape_labels(shapes, max(8, int(13 * (panel_w - 1.2) / span)))
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(labels, fontsize=7.5)
        base = ", ".join(sorted({r.baseline for r in rs if r.baseline}))
        title = f"{op}: speed-up over {base}"
        if common:
            title += "\n" + textwrap.shorten(common, 90)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("speed-up (log)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7.5)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    if not families:
        ax = axes.flat[0]
        ax.text(0.5, 0.5, "no rows with a speed-up over a baseline", ha="center", va="center")
        ax.set_axis_off()
    m = report.meta
    where = m.get("gpu") or m.get("cpu") or ""
    fig.suptitle(f"polykernels on {report.device}" + (f", {where}" if where else "")
                 + (f", {m['threads']} threads" if m.get("threads") else "")
                 + (f"  ({m['date']})" if m.get("date") else ""), fontsize=10)
    handles = [Patch(color=colours[i], label="default (unpinned call)" if i == DEFAULT else i)
               for i in impls]
    if any(r.unreliable for r in rows):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="///",
                             label="unreliable (! in the table)"))
    handles.append(Line2D([], [], color="black", lw=1.0, label="baseline = 1x"))
    fig.legend(handles=handles, loc="outside lower center",
               ncol=max(1, min(len(handles), int(fig.get_figwidth() / 1.9))),
               fontsize=8, frameon=False)
    fig.get_layout_engine().set(h_pad=0.08, w_pad=0.1)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


_quiet = False


def fmt_duration(seconds: float) -> str:
    """mm:ss (h:mm:ss from an hour)."""
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


def _history_path() -> str:
    root = os.environ.get("POLYKERNELS_CACHE_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "polykernels"))
    return os.path.join(root, "bench_progress.json")


def _script_key(name: str, device, quick: bool) -> str:
    return f"{name} {torch.device(device).type}{' quick' if quick else ''}"


def _load_history() -> dict:
    try:
        with open(_history_path()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


class Progress:
    """Plain-text progress, one stderr line per step: ``[i/N] <label> ... <detail> (elapsed
    mm:ss, ETA mm:ss)``. ``total`` None: "[i/?]" and no ETA. ``history``: the elapsed seconds
    at each step of a previous run of the same work; the ETA is then that run's remaining time
    scaled by how fast this run goes (else elapsed / i x the steps left). ``key``: where
    ``finish`` stores this run's steps for the next one (see ``for_script``)."""

    def __init__(self, total: int | None, *, history: list[float] | None = None,
                 key: str | None = None, stream=None, clock=time.monotonic):
        self.total, self.history, self.key = total, history or None, key
        self.stream, self.clock = stream, clock
        self.start = clock()
        self.done = 0
        self.times: list[float] = []

    @classmethod
    def for_script(cls, name: str, device, quick: bool, **kw) -> "Progress":
        """Progress for one benchmark script: its row count and timings from the last completed
        run of it on this device type with the same --quick (in the cache directory)."""
        key = _script_key(name, device, quick)
        times = (_load_history().get(key) or {}).get("elapsed") or None
        return cls(len(times) if times else None, history=times, key=key, **kw)

    @staticmethod
    def expected_s(name: str, device, quick: bool) -> float | None:
        """Seconds the last completed run of that script took to its last row (None: unknown)."""
        times = (_load_history().get(_script_key(name, device, quick)) or {}).get("elapsed")
        return times[-1] if times else None

    def eta(self, elapsed: float) -> float | None:
        i = self.done
        if not self.total or not i:
            return None
        if self.history and i <= len(self.history) and self.history[i - 1] > 0:
            then = self.history[i - 1]
            return max(0.0, (self.history[-1] - then) * elapsed / then)
        return elapsed / i * max(self.total - i, 0)

    def line(self, label: str, detail: str = "") -> str:
        elapsed = self.clock() - self.start
        total = "?" if not self.total else str(max(self.total, self.done))
        eta = self.eta(elapsed)
        when = f"elapsed {fmt_duration(elapsed)}"
        if eta is not None:
            when += f", ETA {fmt_duration(eta)}"
        detail = f" {detail}" if detail else ""
        return f"[{self.done}/{total}] {label} ...{detail} ({when})"

    def step(self, label: str, detail: str = "") -> str:
        """Count one step done, print its line (stderr) and return it."""
        self.done += 1
        self.times.append(self.clock() - self.start)
        text = self.line(label, detail)
        print(text, file=self.stream or sys.stderr, flush=True)
        return text

    def finish(self) -> None:
        """Store this run's steps for the next run's N and ETA (a completed run only)."""
        if self.key is None or not self.times:
            return
        history = _load_history()
        history[self.key] = {"elapsed": [round(t, 3) for t in self.times]}
        try:
            os.makedirs(os.path.dirname(_history_path()), exist_ok=True)
            with open(_history_path(), "w") as f:
                json.dump(history, f, indent=1)
        except OSError:
            pass


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
    """A bare max |out - ref| (prefer ``rel_err``: a table row judges it against a tolerance)."""
    return (out.float() - ref.float()).abs().max().item() if out.numel() else 0.0


# The floor of the tolerance, per output dtype, x max(1, max|ref|) (the tests' helpers' rule,
# docs/testing.md): it keeps a tolerance from being 0 where torch happens to be exact.
FLOOR = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


@dataclass(frozen=True, order=True)
class Err:
    """A row's error against the reference: ``rel`` = max|out - ref| / max|ref| (inf where the
    output has a non-finite value the reference has not), ``abs`` = max|out - ref|, ``floor``
    = the output dtype's tolerance floor in the same relative units. Ordered by ``rel``
    (``max`` over several outputs picks the worst)."""
    rel: float
    abs: float = field(compare=False, default=0.0)
    floor: float = field(compare=False, default=0.0)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> Err:
    """``out``'s error against ``ref`` (the reference: ``reference_output``, or any fp32/fp64
    oracle) as an ``Err``; pass it as a row's ``max_err``."""
    if not out.numel():
        return Err(0.0, 0.0, 0.0)
    o, r = out.detach().double(), ref.detach().to(out.device).double()
    finite = torch.isfinite(r)
    bad = bool((~torch.isfinite(o) & finite).any())
    diff = (o - r).abs()[finite & torch.isfinite(o)]
    err = diff.max().item() if diff.numel() else 0.0
    scale = r[finite].abs().max().item() if finite.any() else 0.0
    rel = math.inf if bad else (err / scale if scale > 0 else (0.0 if err == 0 else math.inf))
    floor = FLOOR.get(out.dtype, 0.0) * max(1.0, scale) / scale if scale > 0 else 0.0
    return Err(rel, math.inf if bad else err, floor)


def _wider(dtype: torch.dtype, full: bool) -> torch.dtype:
    """The reference's dtype for ``dtype``: fp32 for 16-bit floats, fp64 for fp32 (``full``)."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if full and dtype == torch.float32:
        return torch.float64
    return dtype


def upcast(x, full: bool = True):
    """Copies for the reference: 16-bit float tensors (and ``torch.dtype`` values such as an
    ``out_dtype``) as fp32, fp32 as fp64 (``full``); other tensors (ints, fp8) and values as
    they are; tuples, lists and dict values recursively."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(_wider(x.dtype, full)) if x.is_floating_point() else x
    if isinstance(x, torch.dtype):
        return _wider(x, full)
    if isinstance(x, (tuple, list)):
        return type(x)(upcast(v, full) for v in x)
    if isinstance(x, dict):
        return {k: upcast(v, full) for k, v in x.items()}
    return x


def reference_output(op: str, args: tuple, kwargs: dict | None = None):
    """``pk.<op>(*args, **kwargs)`` by the reference impl on ``upcast`` copies: the oracle the
    rows' ``rel_err`` is taken against. Where the op refuses fp64 somewhere (e.g. fp32-only
    scales), fp32 copies of the 16-bit tensors only."""
    import polykernels as pk
    kwargs = kwargs or {}
    with pk.use(**{op: "reference"}):
        try:
            return getattr(pk, op)(*upcast(args), **upcast(kwargs))
        except (TypeError, ValueError):
            return getattr(pk, op)(*upcast(args, full=False), **upcast(kwargs, full=False))



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
              first_ms: dict | None = None, spreads: dict | None = None, cold: bool = False) -> dict:
    """Median ms per named zero-argument function. CPU: interleaved rounds, so contenders
    (e.g. the default call and the impl it picks) are compared under the same load (``cold``:
    see ``time_interleaved``); GPU: ``time_ms`` each (do_bench clears the L2 between calls)."""
    if torch.device(device).type == "cuda":
        return {name: time_ms(fn, device) for name, fn in fns.items()}
    return time_interleaved(fns, rounds=rep, warmup=warmup, device=device, first_ms=first_ms,
                            spreads=spreads, cold=cold)


def impl_rows(report: Report, op: str, device, args: tuple, kwargs: dict | None = None, *,
              shape: str, row_op: str | None = None, reps: dict | None = None, err_fn=None,
              setup=None, skip: tuple[str, ...] = (), baseline: str | None = "torch",
              baselines: dict | None = None, **add_kw) -> None:
    """The rows of one workload: ``baselines`` ({row name: (zero-argument fn, report.add
    keywords)}, the torch formulations), then ``pk.<op>(*args, **kwargs)`` once per
    ``contenders`` entry (each impl pinned, then the unpinned default), all timed together by
    ``time_rows`` (interleaved rounds on CPU: every row under the same load; ``reps``: its
    warmup / rep). ``err_fn(first result)`` -> the row's ``max_err`` (``rel_err(out, ref)``
    against ``reference_output``; the baselines' go in their keywords: the "torch" row's sets
    the tolerance); ``setup()`` runs before each pk row's first call; other keywords go to
    ``report.add`` for the pk rows. A refusing or failing impl gets a NaN row that says why;
    the run goes on."""
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
    name = os.path.splitext(os.path.basename(getattr(sys.modules.get(run.__module__), "__file__",
                                                     None) or "bench"))[0]
    report.progress = Progress.for_script(name, device, args.quick)
    run(report, device, args.quick)
    report.progress.finish()
    report.finish()
    print(report.header())
    print(report.table())
    if report.summary():
        print("\n" + report.summary())
    report.save(args.csv, args.json, args.plot)
    return report
