"""benchmarks/examples/paged_generation.py: the paged decode loop (pk.write_kv_cache +
pk.varlen_paged_attention + pk.linear, prefill and decode in the same call, sequences arriving
staggered) generates the same tokens as transformers' greedy generate on the same weights.

transformers is a test extra: this skips without it (the GPU machine's `-m gpu` run), and
tests/test_transformers_integration.py::test_transformers_is_installed fails wherever the full
suite runs without it.
"""
from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="transformers is not installed (pip install '.[test]')")

from benchmarks.examples import paged_generation  # noqa: E402


@pytest.mark.parametrize("argv", [["--tiny"], ["--tiny", "--arrival-gap", "0", "--block-size", "3",
                                              "--batch", "3", "--new-tokens", "5"]])
def test_paged_generation_matches_transformers(argv, capsys):
    result = paged_generation.main(argv)
    assert result["ours"] == result["transformers"], capsys.readouterr().out
    assert len(result["ours"]) == len(result["prompts"])
    assert all(len(t) == len(result["ours"][0]) > 0 for t in result["ours"])
    out = capsys.readouterr().out
    assert "tokens/s" in out and "tokens equal: " in out
