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
