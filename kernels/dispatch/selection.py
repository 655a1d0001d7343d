"""Measured selection: time the runnable candidates of an op once per input class, keep the
fastest first, and persist the result per machine.

Policy (``POLYKERNELS_SELECT``): ``measure`` (default) or ``priority`` (the registry's fixed
order, what ran before measuring existed). An explicit choice (``pk.use`` /
``POLYKERNELS_IMPL``) always wins over both.

What is measured: the candidates with a positive priority (our kernels and the vendor
``torch`` provider). The pure-torch reference (priority 0) and Triton under the interpreter
(negative) are never timed: they stay last, as the last resort. Each measured candidate runs
once to warm up, then in up to ``RUNS`` interleaved rounds (every candidate once per round, so
a change of load on shared CPUs hits all alike) until the time budget is spent
(``POLYKERNELS_SELECT_BUDGET_MS``, default 250 ms per decision, at least one round); the median
counts. The fastest goes first, except that the registry's own first choice (the highest
priority that was timed) keeps its place unless another candidate beats it by more than
``SWITCH_MARGIN`` (5%): a few runs on a shared machine cannot rank impls closer than that, and
a choice that flips with the noise is worse than a stable one. A candidate that raises while
being measured is dropped from that decision's order (it stays available to failover). Ops that write into arguments (``write_kv_cache``) are measured on scratch copies of
the written tensors, found from the op's schema.

Never measured (the priority order is used, and the decision is revisited in a later eager
call): while torch.compile traces, during CUDA graph capture, on fake or meta tensors.

The table lives in ``$POLYKERNELS_CACHE_DIR/selection/<fingerprint>.json`` (default
``~/.cache/polykernels``). The fingerprint covers the CPU model and its kernel-relevant flags,
GPU names, the torch / Triton / polykernels / Python versions and a digest of the package's
own kernel code, so a changed machine, software stack or kernel (a rebuilt C++ extension with
the same version number) measures anew. ``polykernels tune`` fills it ahead of time for common models.

Distributed serving: each process measures its own inputs, so two ranks could rank two
impls of nearly equal speed differently. To make every rank choose the same, run
``polykernels tune`` (or one warm-up pass) on the node before the ranks start: they then read
the same table and measure nothing; or set ``POLYKERNELS_SELECT=priority``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time

import torch

log = logging.getLogger("polykernels")

RUNS = 5                      # timed runs per candidate at most (after one warm-up run)
SWITCH_MARGIN = 0.05          # a faster candidate displaces the priority choice beyond this
DEFAULT_BUDGET_MS = 250.0     # per decision, all candidates together (warm-ups excepted)


def policy() -> str:
    value = os.environ.get("POLYKERNELS_SELECT", "measure").strip().lower() or "measure"
    if value not in ("measure", "priority"):
        raise ValueError(f"POLYKERNELS_SELECT: expected 'measure' or 'priority', got {value!r}")
    return value


def budget_s() -> float:
    try:
        return max(0.0, float(os.environ.get("POLYKERNELS_SELECT_BUDGET_MS", DEFAULT_BUDGET_MS))) / 1e3
    except ValueError:
        raise ValueError("POLYKERNELS_SELECT_BUDGET_MS: expected a number of milliseconds, got "
                         f"{os.environ['POLYKERNELS_SELECT_BUDGET_MS']!r}") from None


def why_not_measure(args: tuple) -> str | None:
    """None when timing these arguments is allowed now, else why not."""
    if torch.compiler.is_compiling():
        return "torch.compile is tracing"
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    for t in tensors:
        if t.device.type == "meta" or type(t).__name__ == "FakeTensor":
            return "fake or meta tensors"
    if any(t.device.type == "cuda" for t in tensors) and torch.cuda.is_current_stream_capturing():
        return "CUDA graph capture"
    return None


# -- fingerprint and persistent table -------------------------------------------------------
def _version(dist: str) -> str:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "none"


_CODE_SUFFIXES = (".py", ".cpp", ".h", ".cu", ".cuh")
_code_digest_memo: list[str] = []


def code_digest() -> str:
    """A hash of the package's kernel code (Python, C++, CUDA sources; the bindings of a
    source checkout too), read once per process (~0.7 MB). The version number alone misses a
    development rebuild: a table measured before a faster kernel landed would keep its stale
    choice."""
    if _code_digest_memo:
        return _code_digest_memo[0]
    from .. import _extension
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for root in (pkg, _extension._bindings_dir()):
        for folder, dirs, files in sorted(os.walk(root)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith(_CODE_SUFFIXES):
                    path = os.path.join(folder, name)
                    with open(path, "rb") as fh:
                        digest.update(os.path.relpath(path, root).encode() + b"\0" + fh.read())
    _code_digest_memo.append(digest.hexdigest()[:16])
    return _code_digest_memo[0]


def fingerprint(device: torch.device) -> str:
    """A short hash of what decides kernel speed on this machine for ``device``."""
    from .accelerator import cpu_features
    model, flags = cpu_features()
    parts = [model, ",".join(sorted(flags)), str(os.cpu_count()), torch.__version__,
             _version("triton"), _version("polykernels"), "%d.%d" % sys.version_info[:2],
             code_digest()]
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        parts += [props.name, str(torch.version.cuda or torch.version.hip),
                  str(getattr(props, "multi_processor_count", ""))]
        try:
            parts.append(str(torch.cuda.driver_version()) if hasattr(torch.cuda, "driver_version") else "")
        except Exception:
            pass
    elif device.type != "cpu":
        parts.append(device.type)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def table_path(device: torch.device) -> str:
    root = os.environ.get("POLYKERNELS_CACHE_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "polykernels"))
    return os.path.join(root, "selection", f"{device.type}-{fingerprint(device)}.json")


class Table:
    """key string -> {"order": [labels fastest first], "ms": {label: median ms}}, one JSON file
    per (device type, fingerprint). Loaded once; each new entry is merged into the file with an
    atomic replace, so processes sharing the cache directory only ever add to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, dict]] = {}   # path -> entries

    def _load(self, path: str) -> dict:
        entries = self._entries.get(path)
        if entries is None:
            try:
                with open(path, encoding="utf-8") as fh:
                    entries = json.load(fh).get("entries", {})
            except (OSError, ValueError):
                entries = {}
            self._entries[path] = entries
        return entries

    def get(self, path: str, key: str) -> dict | None:
        with self._lock:
            return self._load(path).get(key)

    def put(self, path: str, key: str, entry: dict) -> None:
        with self._lock:
            entries = self._load(path)
            entries[key] = entry
            try:
                with open(path, encoding="utf-8") as fh:
                    on_disk = json.load(fh).get("entries", {})
            except (OSError, ValueError):
                on_disk = {}
            on_disk.update(entries)
            entries.update(on_disk)
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump({"version": 1, "entries": on_disk}, fh, indent=0, sort_keys=True)
                os.replace(tmp, path)
            except OSError as e:  # a read-only cache only costs re-measuring
                log.warning("polykernels: could not save the selection table %s: %s", path, e)

    def forget(self) -> None:
        with self._lock:
            self._entries.clear()


TABLE = Table()


# -- measuring --------------------------------------------------------------------------------
def written_args(op: str) -> tuple[int, ...]:
    """Positions of the arguments ``op`` writes into, from its torch.library schema."""
    packet = getattr(torch.ops.polykernels, op, None)
    if packet is None:
        return ()
    schema = packet.default._schema
    return tuple(i for i, a in enumerate(schema.arguments)
                 if a.alias_info is not None and a.alias_info.is_write)


def _sync(args: tuple) -> None:
    for a in args:
        if isinstance(a, torch.Tensor) and a.device.type == "cuda":
            torch.cuda.synchronize(a.device)
            return


def measured_order(times: dict[str, float], by_priority: list[str]) -> list[str]:
    """Labels fastest first from {label: ms}; the first of ``by_priority`` that was timed stays
    first unless the fastest is more than SWITCH_MARGIN faster than it."""
    order = sorted(times, key=times.get)
    incumbent = next((label for label in by_priority if label in times), None)
    if incumbent is not None and times[incumbent] <= times[order[0]] * (1 + SWITCH_MARGIN):
        order.remove(incumbent)
        order.insert(0, incumbent)
    return order


def time_candidates(op: str, impls: list, args: tuple, budget: float) -> tuple[dict, dict]:
    """({label: median ms}, {label: error}) for each impl, within about ``budget`` seconds.

    One warm-up run each, then rounds in which every candidate runs once, so a change in the
    machine's load (shared CPUs) hits all candidates alike; at most RUNS rounds, and no new
    round once the budget is spent (at least one timed round)."""
    writes = written_args(op)

    def run_once(impl):
        call_args = tuple(a.clone() if i in writes and isinstance(a, torch.Tensor) else a
                          for i, a in enumerate(args))
        _sync(call_args)
        t0 = time.perf_counter()
        impl.fn(*call_args)
        _sync(call_args)
        return time.perf_counter() - t0

    samples: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    live = []
    for impl in impls:                       # warm-up: compiles, packs weights, allocates
        try:
            run_once(impl)
        except Exception as e:               # noqa: BLE001 (reported in explain, not hidden)
            errors[impl.label] = f"{type(e).__name__}: {e}"
            continue
        live.append(impl)
        samples[impl.label] = []
    spent = 0.0
    for _ in range(RUNS):
        for impl in list(live):
            try:
                dt = run_once(impl)
            except Exception as e:           # noqa: BLE001
                errors[impl.label] = f"{type(e).__name__}: {e}"
                live.remove(impl)
                samples.pop(impl.label, None)
                continue
            samples[impl.label].append(dt)
            spent += dt
        if spent >= budget:
            break
    return {label: statistics.median(ts) * 1e3 for label, ts in samples.items() if ts}, errors
