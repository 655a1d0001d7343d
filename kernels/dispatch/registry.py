"""Backends, implementations, selection, failover.

One op has several implementations ("impls"): ``triton``, ``cuda``, ``cpp``, ``reference``
and whatever plugins add. For a call, the candidates are the impls whose backend serves the
tensors' device type and is available here, ordered by priority; each candidate's
``supports(*args)`` either accepts (None) or refuses with a reason. The first accepting one
runs. If it raises, the next runs (failover), one warning is logged per (op, impl, error
type), and the failed impl is demoted for that key; ``POLYKERNELS_STRICT=1`` re-raises.
Failover reacts only to exceptions: results are never compared at run time.

An explicit choice (``with pk.use(attention="triton")`` or
``POLYKERNELS_IMPL="attention=triton,matmul=cpp"``) runs that impl or raises ``NoImplError``
listing why every candidate was refused; it never fails over.

Decisions are cached per key: (op, device, dtypes, shape class, flags). The shape class keeps
sizes up to 256 exact and buckets larger ones to powers of two, plus whether the last dim is
contiguous — so ``supports()`` may depend on dtypes, devices, flags, the last-dim stride and
small sizes (head dims, block sizes), but must not draw lines between two large sizes inside
one power-of-two bucket.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from ..triton.common import interpreting

log = logging.getLogger("polykernels")

ANY_DEVICE = "*"
# Triton impls under the interpreter rank below everything else on CPU: they are slow and
# exist there to prove correctness, so they run only when chosen explicitly.
INTERPRETER_PRIORITY_OFFSET = -10_000


class NoImplError(RuntimeError):
    """No implementation can run this call (or the explicitly chosen one cannot)."""


@dataclass(frozen=True)
class Backend:
    name: str
    device_types: tuple[str, ...]           # torch device types it serves; ("*",) = all
    is_available: Callable[[], bool]
    priority: int = 0                       # tie-breaker between impls of equal priority
    triton_target: Callable[[torch.device], tuple | None] | None = None

    def serves(self, device_type: str) -> bool:
        return ANY_DEVICE in self.device_types or device_type in self.device_types


@dataclass(frozen=True)
class Impl:
    op: str
    name: str                               # the name used in overrides: "triton", "cpp", ...
    backend: str
    fn: Callable
    supports: Callable[..., str | None]
    priority: int = 0
    interpretable: bool = False             # may run on CPU tensors under TRITON_INTERPRET=1

    @property
    def label(self) -> str:
        return f"{self.name}@{self.backend}"


@dataclass
class Decision:
    """What dispatch would do for one call: the ordered runnable impls and every refusal."""
    op: str
    device: str
    candidates: list[Impl] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)   # label -> reason

    @property
    def chosen(self) -> Impl | None:
        return self.candidates[0] if self.candidates else None

    def __str__(self) -> str:
        lines = [f"op {self.op} on {self.device}: "
                 + (f"chose {self.chosen.label}" if self.chosen else "no implementation can run")]
        for impl in self.candidates[1:]:
            lines.append(f"  fallback {impl.label} (priority {impl.priority})")
        for label, reason in self.refused.items():
            lines.append(f"  refused {label}: {reason}")
        return "\n".join(lines)


class Registry:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.backends: dict[str, Backend] = {}
        self.impls: dict[str, list[Impl]] = {}
        self._cache: dict[tuple, Decision] = {}
        self._demoted: dict[tuple, dict[str, str]] = {}   # key -> {label: reason}
        self._warned: set[tuple] = set()
        self._loaders: list[Callable[[], None]] = []
        self._loaded = False
        self.load_errors: dict[str, str] = {}
        self.loaded_plugins: list[str] = []
        self._checked_env: set[str] = set()   # POLYKERNELS_IMPL values whose op names were checked

    # -- registration -------------------------------------------------------------------
    def register_backend(self, backend: Backend) -> None:
        with self._lock:
            self.backends[backend.name] = backend
            self._cache.clear()

    def register_impl(self, op: str, name: str, *, backends: Iterable[str] | str, fn: Callable,
                      supports: Callable[..., str | None] | None = None, priority: int = 0,
                      interpretable: bool | None = None) -> None:
        """Register ``fn`` as impl ``name`` of ``op`` for each backend in ``backends``.

        ``supports(*args)`` gets the op's internal arguments and returns None or a reason.
        ``interpretable`` (default: name == "triton") lets the impl run on CPU tensors under
        TRITON_INTERPRET=1.
        """
        if isinstance(backends, str):
            backends = (backends,)
        if interpretable is None:
            interpretable = name == "triton"
        with self._lock:
            lst = self.impls.setdefault(op, [])
            for b in backends:
                if b not in self.backends:
                    raise ValueError(f"backend: {b!r} is not registered (known: {sorted(self.backends)})")
                lst[:] = [i for i in lst if not (i.name == name and i.backend == b)]
                lst.append(Impl(op, name, b, fn, supports or (lambda *a: None), priority,
                                interpretable))
            self._cache.clear()

    def add_loader(self, loader: Callable[[], None]) -> None:
        """A function run once, before the first dispatch, that registers more impls."""
        self._loaders.append(loader)

    def ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._loaded = True   # set first: loaders may dispatch
            for loader in self._loaders:
                loader()
            self._cache.clear()

    # -- selection ------------------------------------------------------------------------
    def _eligibility(self, impl: Impl, device: torch.device) -> tuple[int | None, str | None]:
        """(effective priority, None) if impl may run on device, else (None, reason)."""
        backend = self.backends[impl.backend]
        if backend.serves(device.type):
            try:
                available = backend.is_available()
            except Exception as e:  # a backend probe must never break dispatch
                return None, f"backend {backend.name} availability check failed: {e}"
            if not available:
                return None, f"backend {backend.name} is not available on this machine"
            return impl.priority, None
        if impl.interpretable and device.type == "cpu":
            if interpreting():
                return impl.priority + INTERPRETER_PRIORITY_OFFSET, None
            return None, "Triton runs on CPU tensors only under TRITON_INTERPRET=1"
        return None, f"backend {backend.name} does not serve device type {device.type!r}"

    def _decide(self, op: str, device: torch.device, args: tuple,
                only: str | None = None) -> Decision:
        decision = Decision(op, str(device))
        impls = self.impls.get(op, [])
        if not impls:
            raise NoImplError(f"polykernels: no implementation registered for op {op!r}")
        ranked: list[tuple[int, int, Impl]] = []
        seen_names: set[str] = set()
        for impl in impls:
            if only is not None and impl.name != only:
                continue
            prio, reason = self._eligibility(impl, device)
            if reason is None:
                if impl.name in seen_names and impl.interpretable and device.type == "cpu":
                    continue   # one interpreter copy of a multi-backend Triton impl is enough
                try:
                    reason = impl.supports(*args)
                except Exception as e:
                    reason = f"supports() raised {type(e).__name__}: {e}"
            if reason is not None:
                decision.refused[impl.label] = reason
                continue
            seen_names.add(impl.name)
            ranked.append((prio, self.backends[impl.backend].priority, impl))
        ranked.sort(key=lambda t: (t[0], t[1]), reverse=True)
        decision.candidates = [impl for _, _, impl in ranked]
        return decision

    def decide(self, op: str, args: tuple) -> tuple[tuple, Decision]:
        """(cache key, decision) for an automatic choice, cached per key."""
        self.ensure_loaded()
        key = (op,) + call_key(args)
        decision = self._cache.get(key)
        if decision is None:
            with self._lock:
                decision = self._cache.get(key)
                if decision is None:
                    decision = self._decide(op, device_of(args), args)
                    self._cache[key] = decision
        return key, decision

    def explain(self, op: str, args: tuple) -> Decision:
        self.ensure_loaded()
        choice = self._explicit_choice(op)
        if choice is not None:
            return self._decide(op, device_of(args), args, only=choice)
        key, cached = self.decide(op, args)
        demoted = self._demoted.get(key, {})
        d = Decision(op, cached.device, [i for i in cached.candidates if i.label not in demoted],
                     dict(cached.refused))
        for label, reason in demoted.items():
            d.refused[label] = f"demoted after failing here: {reason}"
        return d

    # -- running --------------------------------------------------------------------------
    def call(self, op: str, *args):
        """Run op with the chosen impl, failing over to the next on an exception."""
        self.ensure_loaded()
        choice = self._explicit_choice(op)
        if choice is not None:
            decision = self._decide(op, device_of(args), args, only=choice)
            if decision.chosen is None:
                raise NoImplError(_explicit_error(op, choice, decision, self.impls.get(op, [])))
            return decision.chosen.fn(*args)

        key, decision = self.decide(op, args)
        demoted = self._demoted.get(key, {})
        last_error: Exception | None = None
        for impl in decision.candidates:
            if impl.label in demoted:
                continue
            try:
                return impl.fn(*args)
            except Exception as e:
                if strict():
                    raise
                self._demote(key, impl, e)
                last_error = e
        if last_error is not None:
            raise last_error
        raise NoImplError(str(self.explain(op, args)))

    def _demote(self, key: tuple, impl: Impl, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"
        with self._lock:
            self._demoted.setdefault(key, {})[impl.label] = reason
            warn_key = (impl.op, impl.label, type(error).__name__)
            first = warn_key not in self._warned
            self._warned.add(warn_key)
        if first:
            log.warning("polykernels: %s impl %s failed (%s); falling back to the next "
                        "implementation for this input class", impl.op, impl.label, reason)

    # -- explicit choice --------------------------------------------------------------------
    def known_ops(self) -> list[str]:
        """Every op name with at least one registered impl (``attention``, ``matmul``, ...)."""
        self.ensure_loaded()
        return sorted(self.impls)

    def check_op_names(self, names: Iterable[str], source: str) -> None:
        """ValueError naming ``source`` and the known ops if any of ``names`` is not an op
        (a typo such as ``atention`` would otherwise be ignored silently)."""
        known = self.known_ops()
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ValueError(f"{source}: unknown op name(s) {', '.join(map(repr, unknown))}; "
                             f"known ops: {', '.join(known)}")

    def _explicit_choice(self, op: str) -> str | None:
        """The explicit choice for op (pk.use first, then POLYKERNELS_IMPL); a choice for X
        also covers X_backward unless it has its own. Unknown op names in either raise."""
        override = _override.get()
        env = os.environ.get("POLYKERNELS_IMPL", "")
        env_table = _parse_impl_env(env)
        if override and not override.keys() <= self.impls.keys():
            self.check_op_names(override, "pk.use")
        if env_table and env not in self._checked_env:
            self.check_op_names(env_table, "POLYKERNELS_IMPL")
            self._checked_env.add(env)
        for table in (override, env_table):
            if op in table:
                return table[op]
            if op.endswith("_backward") and op[: -len("_backward")] in table:
                return table[op[: -len("_backward")]]
        return None

    def reset_caches(self) -> None:
        """Forget decisions, demotions and warnings (tests; after changing availability)."""
        with self._lock:
            self._cache.clear()
            self._demoted.clear()
            self._warned.clear()


# -- call keys ---------------------------------------------------------------------------------
def _size_class(n: int) -> int:
    return n if n <= 256 else 1 << (n - 1).bit_length()


def _arg_key(a):
    if isinstance(a, torch.Tensor):
        return ("T", a.dtype, a.device.type, a.device.index, a.dim(),
                tuple(_size_class(s) for s in a.shape),
                a.dim() == 0 or a.stride(-1) == 1 or a.shape[-1] <= 1)
    if isinstance(a, (list, tuple)):
        return tuple(_arg_key(x) for x in a)
    return a   # None, bool, int, float, str, dtype: hashable flags


def call_key(args: tuple) -> tuple:
    return tuple(_arg_key(a) for a in args)


def device_of(args: tuple) -> torch.device:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")


# -- explicit choices -------------------------------------------------------------------------
_override: contextvars.ContextVar[dict] = contextvars.ContextVar("polykernels_use", default={})
_env_cache: dict[str, dict[str, str]] = {}


def _parse_impl_env(value: str) -> dict[str, str]:
    parsed = _env_cache.get(value)
    if parsed is None:
        parsed = {}
        for item in filter(None, (s.strip() for s in value.split(","))):
            if "=" not in item:
                raise ValueError(f"POLYKERNELS_IMPL: expected 'op=impl[,op=impl]', got {item!r}")
            op, impl = (s.strip() for s in item.split("=", 1))
            parsed[op] = impl
        _env_cache[value] = parsed
    return parsed


def _explicit_error(op: str, choice: str, decision: Decision, impls: list[Impl]) -> str:
    names = sorted({i.name for i in impls})
    if choice not in names:
        return (f"polykernels: {op}={choice!r} was requested but {op} has no impl named "
                f"{choice!r} (registered: {', '.join(names)})")
    lines = [f"polykernels: {op}={choice!r} was requested but cannot run on {decision.device}:"]
    lines += [f"  {label}: {reason}" for label, reason in decision.refused.items()]
    return "\n".join(lines)


@contextlib.contextmanager
def use(**choices: str):
    """``with pk.use(attention="triton", matmul="cpp"):`` — run those impls or fail loudly."""
    merged = dict(_override.get())
    merged.update(choices)
    token = _override.set(merged)
    try:
        yield
    finally:
        _override.reset(token)


def strict() -> bool:
    return os.environ.get("POLYKERNELS_STRICT", "0") not in ("", "0")
