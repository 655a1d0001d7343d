"""The autotune cache: benchmarks once, stores the winner on disk, reuses it."""
import json

import pytest

from polykernels.triton import autotune
from polykernels.triton.config import KernelConfig


def _kernel_stub():
    return 1


@pytest.fixture
def tuned_env(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYKERNELS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "interpreting", lambda: False)
    autotune.clear_memory_cache()
    yield tmp_path
    autotune.clear_memory_cache()


def test_picks_fastest_and_caches_on_disk(tuned_env):
    cands = [KernelConfig(block_m=64), KernelConfig(block_m=128, extra=(("waves_per_eu", 2),)),
             KernelConfig(block_m=32)]
    calls = []

    def bench(cfg):
        calls.append(cfg)
        if cfg.block_m == 32:
            raise RuntimeError("out of resources")   # a failing candidate is skipped
        return {64: 2.0, 128: 1.0}[cfg.block_m]

    best = autotune.pick_config("k", _kernel_stub, (1024, 128), cands, bench, device_name="Fake GPU")
    assert best == cands[1] and len(calls) == 3
    files = list((tuned_env / "autotune").glob("*.json"))
    assert len(files) == 1
    stored = json.loads(files[0].read_text())
    assert len(stored) == 1 and next(iter(stored.values()))["block_m"] == 128

    # A new process (empty memory cache) reads the disk cache and benchmarks nothing.
    autotune.clear_memory_cache()
    again = autotune.pick_config("k", _kernel_stub, (1024, 128), cands,
                                 lambda cfg: pytest.fail("must not benchmark"), device_name="Fake GPU")
    assert again == cands[1]
    # Another shape bucket is tuned separately.
    other = autotune.pick_config("k", _kernel_stub, (8, 128), cands,
                                 lambda cfg: {64: 0.5, 128: 1.0, 32: 9.0}[cfg.block_m],
                                 device_name="Fake GPU")
    assert other == cands[0]


def test_interpreter_and_single_candidate_skip_benchmark(monkeypatch):
    cands = [KernelConfig(block_m=16), KernelConfig(block_m=32)]
    monkeypatch.setattr(autotune, "interpreting", lambda: True)
    assert autotune.pick_config("k", _kernel_stub, (1,), cands, lambda c: pytest.fail("bench")) == cands[0]
    monkeypatch.setattr(autotune, "interpreting", lambda: False)
    assert autotune.pick_config("k", _kernel_stub, (1,), cands[1:], lambda c: pytest.fail("bench")) == cands[1]


def test_all_candidates_failing_raises(tuned_env):
    def bench(cfg):
        raise RuntimeError("nope")
    with pytest.raises(RuntimeError, match="no candidate config"):
        autotune.pick_config("k2", _kernel_stub, (3,), [KernelConfig(), KernelConfig(block_m=8)],
                             bench, device_name="Fake GPU")
