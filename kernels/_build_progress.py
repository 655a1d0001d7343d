"""Visible progress for the C++ extension build, shared by setup.py (ahead of time) and
kernels/_extension.py (JIT).

torch.utils.cpp_extension runs ``ninja -v`` with its output on file descriptor 1: one full
compiler command line per finished object, then that compiler's warnings or errors. While a
``NinjaProgress`` is active, descriptor 1 goes through a pipe to a thread that turns each
``[n/N] <command> ... -c <path>/cpu/gemm.cpp ...`` line into
``polykernels: [n/N] cpu/gemm.cpp (0:41)`` on stderr. A failed compile's output is shown
whole; a successful compile's warnings (mostly from torch's own headers) are counted, not
shown. The whole output is kept in a log file either way.

Imports nothing from torch or polykernels, so setup.py can load it as a plain file.
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time

# Seconds one source takes on one core of this project's CI machines (2-core AMD EPYC, GCC 12,
# torch 2.13 / 2.14 headers, measured 2026-11-30 from ninja's log): the torch-facing bindings
# include ATen, the torch-free kernels do not, and nvcc compiles each .cu for two targets.
SECONDS_PER_SOURCE = {"binding": 20.0, "kernel": 4.0, "cuda": 25.0}

_STATUS = re.compile(r"^\s*\[(\d+)/(\d+)\]\s+(.*)$")
_SOURCE = re.compile(r"\s-c\s+(\S+\.(?:cpp|cu|cc|c))\b")


def estimate_seconds(sources: list[str], jobs: int) -> float:
    """Wall-clock guess for compiling ``sources`` with ``jobs`` parallel compilers."""
    total = 0.0
    for src in sources:
        if src.endswith(".cu"):
            total += SECONDS_PER_SOURCE["cuda"]
        elif os.sep + "cpu" + os.sep in src or "/cpu/" in src:
            total += SECONDS_PER_SOURCE["kernel"]
        else:
            total += SECONDS_PER_SOURCE["binding"]
    return total / max(1, jobs)


def jobs() -> int:
    """Parallel compile jobs as torch's cpp_extension picks them (MAX_JOBS, else all cores)."""
    try:
        return max(1, int(os.environ["MAX_JOBS"]))
    except (KeyError, ValueError):
        return max(1, (os.cpu_count() or 1) + 2)  # ninja's own default


def announce(sources: list[str], where: str, stream=None) -> None:
    """The up-front line: what is built, where, and about how long a full compile takes."""
    stream = stream or sys.stderr
    n_jobs = min(jobs(), os.cpu_count() or 1)
    secs = estimate_seconds(sources, n_jobs)
    cuda = sum(s.endswith(".cu") for s in sources)
    what = f"{len(sources)} C++ sources" + (f" ({cuda} CUDA)" if cuda else "")
    reuse = " (up-to-date objects there are reused)" if os.path.exists(
        os.path.join(where, "build.ninja")) else ""
    print(f"polykernels: building the C++ extension, {what}, in {where}{reuse}: a full compile "
          f"takes about {_clock(max(30.0, secs))} with {n_jobs} parallel job(s) (MAX_JOBS); "
          "progress follows", file=stream, flush=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def _short(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[-2:])


class NinjaProgress:
    """Context manager: condense ninja's verbose output on fd 1 into progress lines on fd 2.

    ``log_path`` receives the full, unfiltered output. If descriptor 1 cannot be redirected
    (no real file descriptors), it does nothing.
    """

    def __init__(self, log_path: str | None = None, prefix: str = "polykernels: "):
        self.log_path = log_path
        self.prefix = prefix
        self._saved = None
        self._seen_status = False
        self.warnings = 0

    def __enter__(self):
        try:
            sys.stdout.flush()
            self._saved = os.dup(1)
        except (OSError, ValueError, AttributeError):
            self._saved = None
            return self
        self._start = time.monotonic()
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 1)
        os.close(write_fd)
        self._reader = os.fdopen(read_fd, "r", encoding="utf-8", errors="replace")
        self._log = open(self.log_path, "a", encoding="utf-8") if self.log_path else None
        self._err = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="replace")
        self._thread = threading.Thread(target=self._pump, name="polykernels-build-progress",
                                        daemon=True)
        self._thread.start()
        return self

    def _pump(self) -> None:
        block: list[str] = []   # the output of the edge whose status line came last
        for line in self._reader:
            if self._log:
                self._log.write(line)
            m = _STATUS.match(line)
            if not m:
                block.append(line)
                continue
            self._flush_block(block)
            block = []
            self._seen_status = True
            src = _SOURCE.search(m.group(3))
            what = _short(src.group(1)) if src else ("link" if " -shared " in m.group(3)
                                                    else m.group(3)[:60])
            self._emit(f"{self.prefix}[{m.group(1)}/{m.group(2)}] {what} "
                       f"({_clock(time.monotonic() - self._start)})\n")
        self._flush_block(block)

    def _flush_block(self, block: list[str]) -> None:
        """A failed edge's output (or output outside any edge) is shown whole; a successful
        compile's warnings are only counted (they stay in the log)."""
        if not block:
            return
        if self._seen_status and not any("FAILED:" in l or "error:" in l
                                         for l in block):
            self.warnings += sum("warning:" in l for l in block)
            return
        for line in block:
            self._emit(line)

    def _emit(self, line: str) -> None:
        self._err.write(line)
        self._err.flush()

    def __exit__(self, *exc):
        if self._saved is None:
            return False
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._saved, 1)   # closes the pipe's last write end: the reader sees EOF
        os.close(self._saved)
        self._thread.join(timeout=10)
        self._reader.close()
        if self._log:
            self._log.close()
        warned = f", {self.warnings} compiler warning line(s) not shown" if self.warnings else ""
        self._err.write(f"{self.prefix}build step finished after "
                        f"{_clock(time.monotonic() - self._start)}{warned}"
                        + (f" (full log: {self.log_path})" if self.log_path else "") + "\n")
        self._err.close()
        return False
