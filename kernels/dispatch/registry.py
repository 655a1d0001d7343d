"""Backends, implementations, selection, failover.

One op has several implementations ("impls"): ``triton``, ``cuda``, ``cpp``, ``reference``
and whatever plugins add. For a call, the candidates are the impls whose backend serves the
tensors' device type and is available here, ordered by priority; each candidate's
``supports(*args)`` either accepts (None) or refuses with a reason. The first accepting one
runs. If it raises, the next runs (failover), one warning is logged per (op, impl, error
type), and the failed impl is demoted for that key (for a while, see below);
``POLYKERNELS_STRICT=1`` re-raises.
Failover reacts only to exceptions: results are never compared at run time.

An explicit choice (``with pk.use(attention="triton")`` or
``POLYKERNELS_IMPL="attention=triton,matmul=cpp"``) runs that impl or raises ``NoImplError``
listing why every candidate was refused; it never fails over.

Decisions are cached per key: (op, device, dtypes, shape class, flags), LRU-bounded. The shape
class keeps sizes up to 256 exact and buckets larger ones to powers of two, plus whether the
last dim is contiguous; integer arguments are classed the same way and float arguments only
as zero / one / other — so ``supports()`` may depend on dtypes, devices, flags, the last-dim
stride, small sizes (head dims, block sizes) and whether a scale is 0 or 1, but must not draw
lines between two large sizes inside one power-of-two bucket or between two other floats.

Selection (selection.py): with ``POLYKERNELS_SELECT=measure`` (default) the candidates with a
positive priority are timed once per key on the real inputs and ordered fastest first, the
result persisted per machine; ``priority`` keeps the fixed order. A failed impl is demoted for
its key for DEMOTION_S seconds, and only when another candidate then succeeds on the same
input (if every candidate fails, the input is the likely cause and nothing is demoted).
"""
from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from ..triton.common import interpreting
from . import selection

log = logging.getLogger("polykernels")

ANY_DEVICE = "*"
# Triton impls under the interpreter rank below everything else on CPU: they are slow and
# exist there to prove correctness, so they run only when chosen explicitly.
INTERPRETER_PRIORITY_OFFSET = -10_000
MAX_CACHED_DECISIONS = 4096   # LRU bound of the decision cache
DEMOTION_S = 60.0             # a failed impl is retried for its input class after this long
_now = time.monotonic         # the demotion clock (tests replace it)


class InvalidInputError(ValueError):
    """The input's values are wrong (an index out of range, offsets that decrease, group sizes
    that do not sum to the rows). Raised by the value checks, in the public functions and in
    the impls that read index values; dispatch raises it at once: no failover (another impl
    could only be one that does not check) and no demotion (the impl was right to refuse)."""


class WrongResultError(RuntimeError):
    """An impl returned outputs whose shape, dtype or device differ from the op's contract."""


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
    how: str = "priority"        # "priority", "measured", "measured (table)", "explicit choice"
    times_ms: dict[str, float] = field(default_factory=dict)  # label -> median ms (measured)
    final: bool = True           # False: priority order used where measuring was not allowed
    checked: bool = False        # the chosen impl's result was checked against the op's fake
    priorities: dict[str, int] = field(default_factory=dict)  # label -> effective priority here

    @property
    def chosen(self) -> Impl | None:
        return self.candidates[0] if self.candidates else None

    def copy(self) -> "Decision":
        """A copy whose lists and dicts can be changed (cached decisions are shared)."""
        return dataclasses.replace(self, candidates=list(self.candidates),
                                   refused=dict(self.refused), times_ms=dict(self.times_ms),
                                   priorities=dict(self.priorities))

    def __str__(self) -> str:
        def timed(label):
            return f", {self.times_ms[label]:.3g} ms" if label in self.times_ms else ""
        head = (f"chose {self.chosen.label}" if self.chosen else "no implementation can run")
        lines = [f"op {self.op} on {self.device}: {head} (by {self.how}{timed(self.chosen.label) if self.chosen else ''})"]
        for impl in self.candidates[1:]:
            prio = self.priorities.get(impl.label, impl.priority)
            lines.append(f"  fallback {impl.label} (priority {prio}{timed(impl.label)})")
        for label, reason in self.refused.items():
            lines.append(f"  refused {label}: {reason}")
        return "\n".join(lines)


class Registry:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.backends: dict[str, Backend] = {}
        self.impls: dict[str, list[Impl]] = {}
        self._cache: collections.OrderedDict[tuple, Decision] = collections.OrderedDict()
        # key -> {label: (reason, monotonic time the demotion expires)}
        self._demoted: dict[tuple, dict[str, tuple[str, float]]] = {}
        self._warned: set[tuple] = set()
        self._loaders: list[Callable[[], None]] = []
        self._loaded = False
        self._loading_thread: int | None = None
        self.load_errors: dict[str, str] = {}
        self.loaded_plugins: list[str] = []
        self._checked_env: set[str] = set()   # POLYKERNELS_IMPL values whose op names were checked
        # (op, args, result) -> None or what is wrong with the result's shapes / dtypes; set by
        # the ops layer (the op's fake kernel says what is expected). Run on an impl's first
        # result per decision, and on every result of a failover.
        self.result_check: Callable[[str, tuple, object], str | None] | None = None

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
        TRITON_INTERPRET=1. An impl written for an older signature of the op (fewer trailing
        optional arguments, e.g. before ``sinks``) keeps working: see ``_fit_to_op``.
        """
        if isinstance(backends, str):
            backends = (backends,)
        if interpretable is None:
            interpretable = name == "triton"
        fn, supports = _fit_to_op(op, fn, supports or (lambda *a: None))
        with self._lock:
            lst = list(self.impls.get(op, []))   # copy on write: readers iterate a snapshot
            for b in backends:
                if b not in self.backends:
                    raise ValueError(f"backend: {b!r} is not registered (known: {sorted(self.backends)})")
                lst = [i for i in lst if not (i.name == name and i.backend == b)]
                lst.append(Impl(op, name, b, fn, supports, priority, interpretable))
            self.impls[op] = lst
            self._cache.clear()

    def add_loader(self, loader: Callable[[], None]) -> None:
        """A function run once, before the first dispatch, that registers more impls."""
        self._loaders.append(loader)

    def ensure_loaded(self) -> None:
        """Run the loaders once. Other threads wait until they are done (a half-loaded registry
        would refuse explicit choices); the loading thread itself may dispatch meanwhile."""
        if self._loaded or self._loading_thread == threading.get_ident():
            return
        with self._lock:
            if self._loaded:
                return
            self._loading_thread = threading.get_ident()
            try:
                for loader in self._loaders:
                    loader()
            finally:
                self._loading_thread = None
                self._loaded = True
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
        decision.priorities = {impl.label: prio for prio, _, impl in ranked}
        return decision

    def decide(self, op: str, args: tuple) -> tuple[tuple, Decision]:
        """(cache key, decision) for an automatic choice, cached per key (LRU-bounded).

        With the ``measure`` policy the candidates with a positive priority are ordered by
        measured time (see selection.py); where measuring is not allowed the priority order is
        used and the decision is revisited by a later call."""
        if not self._loaded:
            self.ensure_loaded()
        key = call_key(args, op)
        decision = self._cache.get(key)
        if decision is not None and decision.final:
            return key, decision
        with self._lock:
            decision = self._cache.get(key)
            if decision is None or not decision.final:
                decision = self._decide(op, device_of(args), args)
                if selection.policy() == "measure":
                    decision = self._measured(key, decision, args)
                self._cache[key] = decision
                while len(self._cache) > MAX_CACHED_DECISIONS:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
        return key, decision

    def _measured(self, key: tuple, decision: Decision, args: tuple) -> Decision:
        # effective priority: Triton under the interpreter (registered 100, offset far below 0)
        # and the reference (0) are never timed
        timed = [i for i in decision.candidates if decision.priorities[i.label] > 0]
        if len(timed) < 2:
            return decision
        rest = [i for i in decision.candidates if decision.priorities[i.label] <= 0]
        device = device_of(args)
        key_text = repr(key)
        path = selection.table_path(device)
        entry = selection.TABLE.get(path, key_text)
        by_label = {i.label: i for i in timed}
        if entry is not None and set(entry["order"]) <= set(by_label):
            decision.candidates = [by_label[l] for l in entry["order"]] + \
                [i for i in timed if i.label not in entry["order"]] + rest
            decision.how, decision.times_ms = "measured (table)", dict(entry["ms"])
            return decision
        why_not = selection.why_not_measure(args)
        if why_not is not None:
            decision.how, decision.final = f"priority ({why_not}: not measured)", False
            return decision
        times, errors = selection.time_candidates(decision.op, timed, args, selection.budget_s())
        for label, err in errors.items():
            decision.refused[label] = f"raised while being measured: {err}"
        order = selection.measured_order(times, [i.label for i in timed])
        decision.candidates = [by_label[l] for l in order] + rest
        decision.how, decision.times_ms = "measured", times
        if order:
            selection.TABLE.put(path, key_text, {"order": order, "ms": times})
        return decision

    def _explicit_decision(self, op: str, choice: str, args: tuple) -> Decision:
        """The decision for a pinned impl (whether it accepts this input class), cached like
        the automatic ones (a pinned call in a loop must not re-run every supports())."""
        key = ("explicit", choice, *call_key(args, op))
        decision = self._cache.get(key)
        if decision is None:
            decision = self._decide(op, device_of(args), args, only=choice)
            decision.how = "explicit choice"
            with self._lock:
                self._cache[key] = decision
                while len(self._cache) > MAX_CACHED_DECISIONS:
                    self._cache.popitem(last=False)
        return decision

    def explain(self, op: str, args: tuple) -> Decision:
        self.ensure_loaded()
        choice = self._explicit_choice(op)
        if choice is not None:
            return self._explicit_decision(op, choice, args).copy()
        key, cached = self.decide(op, args)
        demoted = self._active_demotions(key)
        d = cached.copy()
        d.candidates = [i for i in d.candidates if i.label not in demoted]
        for label, reason in demoted.items():
            d.refused[label] = f"demoted after failing here (retried after {DEMOTION_S:.0f} s): {reason}"
        return d

    # -- running --------------------------------------------------------------------------
    def call(self, op: str, *args):
        """Run op with the chosen impl, failing over to the next on an exception."""
        if not self._loaded:
            self.ensure_loaded()
        choice = self._explicit_choice(op)
        if choice is not None:
            decision = self._explicit_decision(op, choice, args)
            if decision.chosen is None:
                raise NoImplError(_explicit_error(op, choice, decision, self.impls.get(op, [])))
            result = decision.chosen.fn(*args)
            if not decision.checked:   # an explicit choice never fails over: a bad result raises
                error = self._wrong_result(decision.chosen, op, args, result)
                if error is not None:
                    raise error
                decision.checked = True
            return result

        key = call_key(args, op)
        decision = self._cache.get(key)
        if decision is None or not decision.final:   # a new input class: decide (cached)
            key, decision = self.decide(op, args)
        candidates = decision.candidates
        if candidates and not self._demoted:   # the common case: nothing has failed
            impl = candidates[0]
            try:
                result = impl.fn(*args)
            except InvalidInputError:
                raise
            except Exception as e:
                if strict():
                    raise
                return self._fail_over(key, candidates[1:], [(impl, e)], op, args)
            if decision.checked:
                return result
            error = self._wrong_result(impl, op, args, result)
            if error is None:
                decision.checked = True
                return result
            if strict():
                raise error
            return self._fail_over(key, candidates[1:], [(impl, error)], op, args)
        return self._fail_over(key, candidates, [], op, args)

    def _wrong_result(self, impl: Impl, op: str, args: tuple, result) -> WrongResultError | None:
        problem = None if self.result_check is None else self.result_check(op, args, result)
        return None if problem is None else WrongResultError(f"{impl.label} {problem}")

    def _fail_over(self, key: tuple, candidates: list[Impl],
                   failures: list[tuple[Impl, Exception]], op: str, args: tuple):
        """Try the candidates in order (skipping demoted ones); ``failures`` are earlier ones."""
        demoted = self._active_demotions(key)
        for impl in candidates:
            if impl.label in demoted:
                continue
            try:
                result = impl.fn(*args)
                error = self._wrong_result(impl, op, args, result)
                if error is not None:
                    raise error
            except InvalidInputError:
                raise
            except Exception as e:
                if strict():
                    raise
                failures.append((impl, e))
                continue
            for bad, error in failures:   # the input was fine for `impl`: the others failed
                self._demote(key, bad, error)
            return result
        if failures:
            # Every candidate failed: most likely the input itself is bad. Demote nothing, so
            # a later valid call of this class still finds every impl. The last error is raised
            # (the last resort's, usually the reference's).
            raise failures[-1][1]
        raise NoImplError(str(self.explain(op, args)))

    def _active_demotions(self, key: tuple) -> dict[str, str]:
        if not self._demoted:   # the common case: nothing has failed
            return {}
        entry = self._demoted.get(key)
        if not entry:
            return {}
        now = _now()
        return {label: reason for label, (reason, until) in entry.items() if until > now}

    def _demote(self, key: tuple, impl: Impl, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"
        with self._lock:
            entry = self._demoted.setdefault(key, {})
            entry[impl.label] = (reason, _now() + DEMOTION_S)
            if len(self._demoted) > MAX_CACHED_DECISIONS:
                self._demoted.pop(next(iter(self._demoted)))
            warn_key = (impl.op, impl.label, type(error).__name__)
            first = warn_key not in self._warned
            self._warned.add(warn_key)
        if first:
            log.warning("polykernels: %s impl %s failed (%s); falling back to the next "
                        "implementation for this input class (retried after %.0f s)",
                        impl.op, impl.label, reason, DEMOTION_S)

    def reset_caches(self) -> None:
        """Forget decisions, demotions and warnings (tests; after changing availability)."""
        with self._lock:
            self._cache.clear()
            self._demoted.clear()
            self._warned.clear()

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
        also covers X_backward unless it has its own or the chosen impl has no backward.
        Unknown op names in either raise."""
        override = _override.get()
        env = _impl_env()
        if not override and not env:   # the common case, on every call: nothing chosen
            return None
        env_table = _parse_impl_env(env or "")
        if override and not override.keys() <= self.impls.keys():
            self.check_op_names(override, "pk.use")
        if env_table and env not in self._checked_env:
            self.check_op_names(env_table, "POLYKERNELS_IMPL")
            self._checked_env.add(env)
        for table in (override, env_table):
            if op in table:
                return table[op]
            forward = op[: -len("_backward")] if op.endswith("_backward") else None
            if forward in table:
                # X=impl covers X_backward only where impl has a backward (attention="torch"
                # has none: the backward is then chosen automatically)
                if any(i.name == table[forward] for i in self.impls.get(op, [])):
                    return table[forward]
                return None
        return None


# -- call keys ---------------------------------------------------------------------------------
def _positional_capacity(fn: Callable) -> int | None:
    """How many positional arguments fn takes (None: any number, or not inspectable)."""
    import inspect
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    n = 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            n += 1
    return n


def _fit_to_op(op: str, fn: Callable, supports: Callable) -> tuple[Callable, Callable]:
    """Ops gain trailing optional arguments over time (kv_scales, sinks). An impl registered
    with fewer parameters than the op now passes (a plugin written for an older signature)
    gets the arguments it knows; a call that sets one it does not know (not None) is refused
    by its supports(), naming the argument, so it never silently ignores it."""
    defined = getattr(getattr(torch.ops, "polykernels", None), op, None)
    if defined is None or not hasattr(defined, "default"):
        return fn, supports
    names = [a.name for a in defined.default._schema.arguments]
    n = _positional_capacity(fn)
    if n is None or n >= len(names):
        return fn, supports
    newer = names[n:]

    def fitted_supports(*args):
        for name, a in zip(newer, args[n:]):
            if a is not None:
                return f"impl takes the op's first {n} arguments; it cannot handle {name}"
        return supports(*args[:n])

    def fitted_fn(*args):
        return fn(*args[:n])

    return fitted_fn, fitted_supports


def _size_class(n: int) -> int:
    return n if n <= 256 else 1 << (n - 1).bit_length()


def _arg_key(a):
    if isinstance(a, torch.Tensor):
        return _tensor_key(a)
    if isinstance(a, (list, tuple)):
        return tuple(_arg_key(x) for x in a)
    if isinstance(a, bool) or a is None:
        return a
    if isinstance(a, int):     # sizes such as max_seqlen: the same classes as tensor dims
        return _size_class(a)
    if isinstance(a, float):   # scales: only zero / one / other can change what an impl does
        return ("f", a == 0.0, a == 1.0)
    return a   # str, dtype: hashable flags


# shape -> its size classes (every dim through _size_class), memoised: one dict lookup per
# tensor instead of max() over the dims (0.3 us) or a map (1 us). Bounded: cleared when full.
_SHAPE_CLASSES: dict = {}
_MAX_SHAPE_CLASSES = 4096


def _shape_class(shape) -> tuple:
    dims = shape if not shape or max(shape) <= 256 else tuple(map(_size_class, shape))
    if len(_SHAPE_CLASSES) >= _MAX_SHAPE_CLASSES:
        _SHAPE_CLASSES.clear()
    _SHAPE_CLASSES[shape] = dims
    return dims


def _tensor_key(a: torch.Tensor) -> tuple:
    # the device object stands for (type, index); a shape with every dim <= 256 is its own
    # size class (torch.Size hashes and compares as the tuple)
    shape = a.shape
    dims = _SHAPE_CLASSES.get(shape) or _shape_class(shape)
    # whether the last dim is dense (impls refuse a strided one); is_contiguous() first: the
    # common case, and cheaper than stride(-1)
    return (a.dtype, a.device, dims,
            a.is_contiguous() or shape[-1] <= 1 or a.stride(-1) == 1)


def call_key(args: tuple, op: str = "") -> tuple:
    """The decision cache's key for op(*args). Hot path (every call; ~0.55 us per tensor on a
    Zen 3 VM): tensors and None, the common arguments, are handled inline; the result must
    equal what _arg_key gives (tests/test_dispatch.py checks)."""
    key = [op]
    for a in args:
        if isinstance(a, torch.Tensor):   # _tensor_key, inlined: ~0.5 us less for four tensors
            shape = a.shape
            key.append((a.dtype, a.device, _SHAPE_CLASSES.get(shape) or _shape_class(shape),
                        a.is_contiguous() or shape[-1] <= 1 or a.stride(-1) == 1))
        elif a is None:
            key.append(None)
        else:
            key.append(_arg_key(a))
    return tuple(key)


def device_of(args: tuple) -> torch.device:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")


# -- explicit choices -------------------------------------------------------------------------
_override: contextvars.ContextVar[dict] = contextvars.ContextVar("polykernels_use", default={})
_env_cache: dict[str, dict[str, str]] = {}


def _impl_env_portable() -> str | None:
    return os.environ.get("POLYKERNELS_IMPL")


def _impl_env_fast() -> str | None:
    # os.environ.get encodes the key on every call (~1 us, a fifth of a cached dispatch);
    # CPython's os.environ keeps its data in ``_data`` under encoded keys, read directly here
    # (setenv / putenv through os.environ update it; monkeypatch.setenv does)
    raw = _ENV_DATA.get(_ENV_KEY)
    return None if raw is None else os.environ.decodevalue(raw)


try:
    _ENV_DATA, _ENV_KEY = os.environ._data, os.environ.encodekey("POLYKERNELS_IMPL")
    _impl_env = _impl_env_fast
except AttributeError:   # not CPython's os._Environ
    _impl_env = _impl_env_portable


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
