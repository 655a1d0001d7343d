"""benchmarks/common.py: the default row, default / best per workload, and the pk rows helper."""
import math

import torch

from benchmarks.common import DEFAULT, Report, impl_rows, judge, relative_spread, row_name


def test_default_vs_best_tracks_every_row_of_its_workload():
    r = Report("cpu")
    r.add(op="op", shape="s", impl="torch", ms=2.0)
    d = r.add(op="op", shape="s", impl=DEFAULT, ms=1.0, picked="cpp", baseline="torch")
    assert (d.vs_best, d.best) == (2.0, "torch")
    r.add(op="op", shape="s", impl="cpp", ms=0.5)              # arrives after the default row
    r.add(op="op", shape="s", impl="pk:torch", ms=float("nan"), note="refused: x")
    r.add(op="op", shape="s", impl="cpp fp8", ms=0.1, contender=False)   # a variant: not best
    r.add(op="op", shape="other", impl="cpp", ms=0.01)          # another workload
    assert (d.vs_best, d.best) == (0.5, "cpp")
    assert d.label == "default (cpp)" and "default (cpp)" in r.table()
    summary = r.summary()
    assert "0.500x" in summary and "BELOW" in summary and "0/1 workloads" in summary


def test_impl_rows_adds_each_impl_and_the_default_with_its_pick():
    r = Report("cpu")
    out_a, out_b = torch.randn(2, 1, 4, 8), torch.randn(2, 1, 4, 8)
    lse_a, lse_b = torch.randn(2, 4, 1), torch.randn(2, 4, 1)
    calls = []
    impl_rows(r, "merge_attention_states", "cpu", (out_a, lse_a, out_b, lse_b), shape="tiny",
              reps=dict(warmup=1, rep=4), err_fn=lambda out: 0.0,
              baselines={"torch": (lambda: calls.append(1), dict(note="a baseline"))})
    names = [row.impl for row in r.rows]
    assert names[0] == "torch" and r.rows[0].note == "a baseline" and len(calls) == 1 + 4
    assert names[-1] == DEFAULT and "reference" in names
    assert all(row.spread is not None and row.spread >= 0 for row in r.rows)
    assert r.rows[-1].vs_baseline is not None   # the pk rows' ratios are against that baseline
    default = r.rows[-1]
    assert default.picked in names[:-1]
    assert math.isfinite(default.ms) and default.vs_best is not None
    assert row_name("torch") == "pk:torch" and row_name("cpp") == "cpp"


def test_spread_and_the_noise_verdict():
    assert relative_spread([1.0, 1.0, 1.0]) is None                  # too few samples
    assert relative_spread([1.0, 1.0, 1.0, 1.0]) == 0.0
    assert 0.05 < relative_spread([0.9, 1.0, 1.0, 1.1, 1.0]) < 0.2
    assert judge(0.98, None) == "ok"
    assert judge(0.95, 0.08) == "noise" and judge(0.95, 0.02) == "BELOW" and judge(0.5, None) == "BELOW"
    r = Report("cpu")
    r.add(op="op", shape="s", impl="cpp", ms=1.0, spread=0.1)
    r.add(op="op", shape="s", impl=DEFAULT, ms=1.05, picked="cpp", spread=0.02)
    assert "noise" in r.summary() and "1 more are below it by less than their spread" in r.summary()


# --- progress, unreliable rows, errors against a tolerance, the plot (issue 13) ---

import io  # noqa: E402

import pytest  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.common import (Err, Progress, fmt_duration, plot, reference_output,  # noqa: E402
                               rel_err)


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_progress_lines_count_the_rows_and_give_an_eta():
    assert fmt_duration(0) == "00:00" and fmt_duration(65.4) == "01:05"
    assert fmt_duration(3725) == "1:02:05"
    clock, out = _Clock(), io.StringIO()
    p = Progress(4, stream=out, clock=clock)
    clock.t += 10
    line = p.step("matmul 64x64x64 fp32 cpp", "1.2 ms")
    assert line == "[1/4] matmul 64x64x64 fp32 cpp ... 1.2 ms (elapsed 00:10, ETA 00:30)"
    assert out.getvalue() == line + "\n"
    # a previous run's timings: its remaining time, scaled by this run's pace (2x slower here)
    clock = _Clock()
    p = Progress(4, history=[10.0, 20.0, 40.0, 80.0], stream=io.StringIO(), clock=clock)
    clock.t += 20
    assert p.step("a").endswith("(elapsed 00:20, ETA 02:20)")
    # no count known: no ETA; more rows than expected: the count grows, ETA 0
    clock = _Clock()
    p = Progress(None, stream=io.StringIO(), clock=clock)
    assert p.step("x") == "[1/?] x ... (elapsed 00:00)"
    p = Progress(1, stream=io.StringIO(), clock=clock)
    p.step("x")
    assert p.step("y").startswith("[2/2] y ...") and "ETA 00:00" in p.line("z")


def test_progress_remembers_a_scripts_row_count(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYKERNELS_CACHE_DIR", str(tmp_path))
    p = Progress.for_script("bench_x", "cpu", True, stream=io.StringIO())
    assert p.total is None and Progress.expected_s("bench_x", "cpu", True) is None
    for label in "abc":
        p.step(label)
    p.finish()
    again = Progress.for_script("bench_x", "cpu", True, stream=io.StringIO())
    assert again.total == 3 and again.history is not None
    assert Progress.expected_s("bench_x", "cpu", True) is not None
    assert Progress.for_script("bench_x", "cpu", False).total is None   # --quick or not: apart


def test_unreliable_rows_are_flagged_and_explained(monkeypatch):
    monkeypatch.setattr(common, "load_average", lambda: 1.0)
    r = Report("cpu", meta={"threads": 2, "load_average": 1.0})
    r.add(op="op", shape="s", impl="torch", ms=1.0, spread=0.02)
    noisy = r.add(op="op", shape="s", impl="cpp", ms=1.0, spread=0.25)
    r.judge()
    assert noisy.unreliable == "spread" and r.rows[0].unreliable == ""
    table = r.table()
    row_line = next(line for line in table.splitlines() if line.startswith("op ") and "cpp" in line)
    assert " ! " in row_line and "25%" in row_line
    assert "! 1 of 2 rows unreliable" in table and "above 10%" in table
    monkeypatch.setattr(common, "load_average", lambda: 3.5)    # busier than the 2 threads
    loaded = r.add(op="op", shape="t", impl="cpp", ms=1.0, spread=0.01)
    r.judge()
    assert loaded.unreliable == "load" and loaded.load == 3.5
    assert ("1 timed while the 1-minute load average (up to 3.50) was above the 2 threads"
            in r.table())
    quiet = Report("cpu", meta={"threads": 2})
    monkeypatch.setattr(common, "load_average", lambda: 0.5)
    quiet.add(op="op", shape="s", impl="cpp", ms=1.0, spread=0.05)
    assert "unreliable" not in quiet.table() and quiet.footnotes() == []


def test_errors_are_relative_and_judged_against_torchs_own():
    e = rel_err(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5], dtype=torch.float64))
    assert e.rel == pytest.approx(0.5 / 2.5) and e.abs == pytest.approx(0.5)
    assert rel_err(torch.tensor([float("nan")]), torch.tensor([1.0])).rel == math.inf
    bf = rel_err(torch.ones(3, dtype=torch.bfloat16), torch.full((3,), 4.0))
    assert bf.floor == pytest.approx(8e-3)   # 8e-3 x max(1, max|ref| = 4), over max|ref|
    assert max(Err(1e-3), Err(5e-3, 1.0)).rel == 5e-3    # the worst of several outputs
    r = Report("cpu", meta={"threads": 64})
    r.add(op="matmul", shape="s", impl="torch", ms=1.0, max_err=Err(1e-3, 2e-3, 0.0))
    ok = r.add(op="matmul", shape="s", impl="cpp", ms=1.0, baseline="torch", max_err=Err(1e-3))
    bad = r.add(op="matmul", shape="s", impl="triton", ms=1.0, baseline="torch",
                max_err=Err(5e-3, 1e-2, 0.0))
    bwd = [r.add(op="attention bwd", shape="s", impl=n, ms=1.0, max_err=Err(x))
           for n, x in (("torch", 1e-3), ("cpp", 2.5e-3))][1]
    legacy = r.add(op="other", shape="s", impl="cpp", ms=1.0, max_err=1.95e-3)
    r.judge()
    assert ok.tol == pytest.approx(2e-3) and bad.tol == pytest.approx(2e-3)
    assert bwd.tol == pytest.approx(3e-3)                 # backward: 3x torch's error
    assert common.format_err(r.rows[0]) == ("1.0e-03", "base")
    assert common.format_err(ok) == ("1.0e-03", "0.5x ok")
    assert common.format_err(bad) == ("5.0e-03", "2.5x OVER")
    assert common.format_err(bwd) == ("2.5e-03", "0.83x ok")
    assert common.format_err(legacy) == ("abs 1.95e-03", "")
    nan = r.add(op="matmul", shape="s", impl="cpp nan", ms=1.0, max_err=rel_err(
        torch.tensor([float("nan")]), torch.tensor([1.0])))
    r.judge()
    assert common.format_err(nan) == ("inf", "OVER")
    table = r.table()
    assert "rel err" in table and "err/tol" in table and "2 rows OVER tolerance" in table
    assert "abs: a bare max |out - ref|" in table
    assert legacy.rel_err is None and ok.max_err == 0.0 and bad.max_err == 1e-2


def test_reference_output_runs_the_reference_on_upcast_copies():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert reference_output("matmul", (a, b)).dtype == torch.float64
    assert reference_output("matmul", (a.bfloat16(), b.bfloat16())).dtype == torch.float32
    import polykernels as pk
    qa, sa = pk.quantize_int8(torch.randn(4, 16), "row")
    qb, sb = pk.quantize_int8(torch.randn(8, 16), "row")
    # fp32-only scales: the reference falls back to fp32 copies, its out_dtype fp32
    out = reference_output("scaled_matmul", (qa, qb.t(), sa, sb.reshape(1, -1)),
                           dict(out_dtype=torch.bfloat16))
    assert out.dtype == torch.float32


def test_plot_writes_one_panel_per_op_family(tmp_path):
    r = Report("cpu", meta={"threads": 2, "cpu": "test CPU", "date": "today"})
    for op, shapes in (("matmul", ["64x64x64 float32", "64x64x64 bfloat16"]),
                       ("attention fwd", ["B1 H8/8 S1024 D128 bfloat16 full"])):
        for shape in shapes:
            r.add(op=op, shape=shape, impl="torch", ms=2.0)
            r.add(op=op, shape=shape, impl="cpp", ms=1.0, baseline="torch", spread=0.3)
            r.add(op=op, shape=shape, impl="reference", ms=8.0, baseline="torch")
            r.add(op=op, shape=shape, impl=DEFAULT, ms=1.1, baseline="torch", picked="cpp")
            r.add(op=op, shape=shape, impl="triton", ms=float("nan"), note="refused")
    path = tmp_path / "bench.png"
    fig = plot(r, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 2
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("matmul: speed-up over torch") and "attention fwd" in titles[1]
    assert fig.axes[0].get_yscale() == "log"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:3] == ["cpp", "reference", "default (unpinned call)"]
    assert "baseline = 1x" in legend
    assert "unreliable (! in the table)" in legend
    assert len(plot(Report("cpu"), str(tmp_path / "empty.png")).axes) == 1   # says "no rows"
    colours = common.provider_colours(["cpp", "x", "triton", "y"])
    assert colours["cpp"] == common.provider_colours(["cpp"])["cpp"]   # fixed per provider
    assert colours["x"] != colours["y"]


def test_cold_rounds_evict_the_caches_before_every_timed_call(monkeypatch):
    from benchmarks import common
    assert common.llc_bytes() >= 1 << 20
    events = []
    monkeypatch.setattr(common, "evict_cpu_caches", lambda: events.append("evict"))
    fns = {"a": lambda: events.append("a"), "b": lambda: events.append("b")}
    common.time_interleaved(fns, rounds=3, warmup=1, cold=True)
    timed = events[2:]   # after one warm-up call each
    assert len(timed) == 12 and timed[0::2] == ["evict"] * 6 and sorted(timed[1::2]) == ["a"] * 3 + ["b"] * 3
    events.clear()
    common.time_interleaved(fns, rounds=2, warmup=0)
    assert "evict" not in events
