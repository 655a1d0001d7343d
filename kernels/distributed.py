"""DTensor sharding rules for the ``torch.ops.polykernels.*`` ops (torch.distributed.tensor).

Without them a DTensor reaching one of our ops fails with "does not have a sharding strategy
registered". With them DTensor runs each op on the local shards where a rule below allows it,
and otherwise redistributes the inputs (all-gather) to a placement some rule accepts, so the
result is always the unsharded op's result. Rules, per mesh dimension (DTensor combines them
over the dimensions of an N-D mesh):

* every op: all inputs Replicate -> outputs Replicate;
* attention / attention_backward, varlen_attention / varlen_attention_backward,
  paged_attention, varlen_paged_attention: sharded by heads: q, k, v (and dout, out, dq, dk,
  dv) on their heads dim, lse / dlse on theirs, the paged caches on theirs (dim 2), per-head
  inputs with them (alibi_slopes ``[H]`` or ``[B, H]``, sinks ``[H]``, per-KV-head fp8
  ``kv_scales [2, H_kv]``); cu_seqlens, block_table, seq_lens Replicate. GQA (heads_q !=
  heads_kv) needs heads_kv to split evenly (every rank then holds whole query groups); an
  uneven split is gathered instead. The dense ops and paged_attention are also sharded by
  batch (num_seqs): q, k, v, out, lse, block_table, seq_lens and ``[B, H]`` ALiBi on dim 0,
  the caches Replicate;
* write_kv_cache: the caches are written in place, so they are never redistributed (a write
  into a temporary copy would be lost): caches Replicate (k, v gathered) or sharded on heads
  (k, v, kv_scales sharded with them); any other cache placement raises. The same holds for
  every argument an op writes (the ``out=`` twins paged_attention_out /
  varlen_paged_attention_out: out / lse sharded as the functional op's outputs);
* merge_attention_states: elementwise over (batch, seqlen, heads): any of those dims, out and
  lse sharded alike;
* linear (weight [N, K]): column-parallel (weight Shard(0), bias Shard(0) -> out sharded on its
  last dim); row-parallel (x sharded on K, weight Shard(1) -> out Partial, only without an
  activation, which does not commute with the sum; the bias is then Partial as in torch's own
  addmm rule: a replicated bias is split as bias / world before the op, so the reduced sum
  adds it once); x sharded on a token dim -> out sharded alike;
* matmul (b [K, N]): the same with b's dims swapped (b Shard(1) column-, Shard(0) row-parallel);
* quantized_linear: sharded on N only (qweight, scales, zeros, bias Shard(0) -> out sharded on
  its last dim), or x on a token dim. int4 packs two codes per byte along K and scales/zeros are
  per group of K, so a K shard could split a byte or a group: qweight/scales sharded on K are
  refused (gathered);
* scaled_matmul, grouped_matmul and any op without a rule here: Replicate only.

Registration: ``import torch.distributed.tensor`` costs ~1.4 s (measured: torch 2.13, AMD EPYC
Zen 3), ~15x ``import polykernels``, so importing polykernels does not import it. Instead, at
``import polykernels``: if torch.distributed.tensor is already imported the rules are
registered at once (a few dict inserts); otherwise a one-shot import hook registers them right
after torch.distributed.tensor finishes importing. ``register()`` does it explicitly (and
imports torch.distributed.tensor). Needs torch >= 2.5 (torch.distributed.tensor); uses
DTensor's op-strategy registration (what the public ``register_sharding`` wraps: the same
``register_op_strategy`` and ``expand_to_full_mesh_op_strategy``), because the decorator
cannot filter the expanded strategies (GQA evenness, buffers written in place) nor choose
which arguments key DTensor's sharding cache.

Index tensors (cu_seqlens, block_table, seq_lens, slot_mapping, group_sizes): the public
functions read their values on the host to validate them, which DTensor refuses (.tolist());
pass them as plain tensors under ``torch.distributed.tensor.experimental
.implicit_replication()`` (they are then Replicate).
"""
from __future__ import annotations

import importlib.abc
import logging
import sys
import threading
from typing import Callable

import torch

_log = logging.getLogger(__name__)
_MODULE = "torch.distributed.tensor"
_lock = threading.RLock()
_registered = False


def is_registered() -> bool:
    """Whether the DTensor sharding rules are registered in this process."""
    return _registered


def register() -> None:
    """Register the DTensor sharding rules of every ``torch.ops.polykernels`` op (idempotent).

    Imports torch.distributed.tensor. Not needed where torch.distributed.tensor is imported
    before or after polykernels in the usual way (see the module docstring); raises
    RuntimeError where torch.distributed or DTensor is unavailable."""
    global _registered
    with _lock:
        if _registered:
            return
        if not torch.distributed.is_available():
            raise RuntimeError("polykernels.distributed: torch.distributed is not available in "
                               "this torch build")
        try:
            from torch.distributed.tensor import DTensor  # noqa: F401  (torch >= 2.5)
        except ImportError as e:
            raise RuntimeError(f"polykernels.distributed: DTensor sharding rules need torch >= "
                               f"2.5 (torch.distributed.tensor): {e}") from e
        for name in _op_names():
            _register_op(getattr(torch.ops.polykernels, name).default,
                         _RULES.get(name) or _strategy())
        _registered = True
        _uninstall_hook()


# -- registration machinery ------------------------------------------------------------------


def _op_names() -> list[str]:
    """Every op of the polykernels namespace (each has a fake kernel, see ops/_library.py)."""
    from .ops import _library
    defs = getattr(_library.LIBRARY, "_op_defs", None)
    if defs:
        return sorted(d.split("::", 1)[1] for d in defs)
    return sorted(_library.FAKES)


def _register_op(op: torch._ops.OpOverload, rule) -> None:
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._op_schema import RuntimeSchemaInfo

    # Every argument is part of DTensor's sharding-cache key (static_argnum=0; DTensor passes
    # keyword arguments positionally by then): the rules read non-tensor arguments (linear's
    # `activation`), and register_sharding's default key drops strings and floats before the
    # first int argument (it keeps None, which is all that tells `activation` apart today).
    info = RuntimeSchemaInfo(static_argnum=0)
    DTensor._op_dispatcher.sharding_propagator.register_op_strategy(
        op, lambda op_schema: rule(op, op_schema), info)


def _normalized_args(op, op_schema) -> tuple[list, list[str | int]]:
    """All of the op's arguments in schema order (defaults filled in; a DTensor argument as its
    DTensorSpec), and the order in which DTensor lists the tensor inputs (positional ones by
    index, then keyword ones by name)."""
    from torch.distributed.tensor._op_schema import OpStrategy

    def spec(x):
        return x.strategies[0].output_spec if isinstance(x, OpStrategy) else x

    schema_args = op._schema.arguments
    values = []
    for i, a in enumerate(schema_args):
        if i < len(op_schema.args_schema):
            values.append(spec(op_schema.args_schema[i]))
        elif a.name in op_schema.kwargs_schema:
            values.append(spec(op_schema.kwargs_schema[a.name]))
        else:
            values.append(a.default_value if a.has_default_value() else None)
    order: list[str | int] = [i for i, x in enumerate(op_schema.args_schema)
                              if isinstance(x, OpStrategy)]
    order += [k for k, x in op_schema.kwargs_schema.items() if isinstance(x, OpStrategy)]
    return values, order


def _index(op, key) -> int:
    if isinstance(key, int):
        return key
    return next(i for i, a in enumerate(op._schema.arguments) if a.name == key)


def _strategy(rules: Callable | None = None, even: Callable | None = None):
    """An op strategy from ``rules(args) -> [(output placements, {arg index: placement})]``
    (one mesh dimension; tensor arguments not named are Replicate; the all-Replicate rule is
    always added), expanded over the mesh by DTensor, then filtered:

    * ``even(args) -> [(arg index, dim)]``: tensor dims that must split evenly over all the
      mesh dims that shard them (GQA head groups);
    * arguments the op writes in place (``write_kv_cache``'s caches, the ``out=`` twins'
      buffers) keep their placement: redistributing one would write into a temporary copy.
      Where no rule allows their placement the op raises, naming the ones allowed."""
    def strategy(op, op_schema):
        from torch.distributed.tensor import Replicate
        from torch.distributed.tensor._ops.utils import expand_to_full_mesh_op_strategy

        args, order = _normalized_args(op, op_schema)
        n_out = len(op._schema.returns)
        tensor_pos = [_index(op, key) for key in order]   # DTensor's order of tensor inputs
        candidates = [([Replicate()] * n_out, {})] + (rules(args) if rules else [])
        single_dim = [list(outs) + [ins.get(i, Replicate()) for i in tensor_pos]
                      for outs, ins in candidates]
        mesh = op_schema.get_mesh_from_args()
        result = expand_to_full_mesh_op_strategy(mesh, op_schema, single_dim, input_index=n_out)

        checks = [(tensor_pos.index(i), d) for i, d in (even(args) if even else [])
                  if i in tensor_pos]
        written = {i for i, a in enumerate(op._schema.arguments)
                   if a.alias_info is not None and a.alias_info.is_write}
        pinned = [(pos, tuple(args[i].placements)) for pos, i in enumerate(tensor_pos)
                  if i in written]

        def keep(input_specs) -> bool:
            for pos, dim in checks:
                s = input_specs[pos]
                parts = 1
                for mesh_dim, p in enumerate(s.placements):
                    if p.is_shard(dim):
                        parts *= s.mesh.size(mesh_dim)
                if s.shape[dim] % parts:
                    return False
            return all(tuple(input_specs[pos].placements) == now for pos, now in pinned)

        kept = [s for s in result.strategies if keep(s.input_specs)]
        if not kept:
            names = [op._schema.arguments[tensor_pos[pos]].name for pos, _ in pinned]
            allowed = sorted({", ".join(f"{n}={s.input_specs[pos].placements}"
                                        for n, (pos, _) in zip(names, pinned))
                              for s in result.strategies})
            raise NotImplementedError(
                f"{op}: the arguments it writes in place ({', '.join(names)}) must keep their "
                f"placement (redistributing them would write into a copy); got "
                f"{', '.join(f'{n}={now}' for n, (_, now) in zip(names, pinned))}; supported: "
                f"{'; '.join(allowed)}")
        result.strategies = kept
        return result
    return strategy


def _S(d: int):
    from torch.distributed.tensor import Shard
    return Shard(d)


def _P():
    from torch.distributed.tensor import Partial
    return Partial()


def _is_spec(x) -> bool:
    return x is not None and hasattr(x, "placements")


# -- the rules, per op -----------------------------------------------------------------------


def _head_inputs(args, alibi: int, sinks: int, kv_scales: int | None = None) -> dict:
    ins = {}
    if _is_spec(args[alibi]):
        ins[alibi] = _S(args[alibi].ndim - 1)    # [H] -> 0, [B, H] -> 1
    if _is_spec(args[sinks]):
        ins[sinks] = _S(0)
    if kv_scales is not None and _is_spec(args[kv_scales]):
        ins[kv_scales] = _S(1)                   # [2, H_kv]
    return ins


def _batch_alibi(args, alibi: int) -> dict:
    a = args[alibi]
    return {alibi: _S(0)} if _is_spec(a) and a.ndim == 2 else {}


def _gqa(q: int, q_dim: int, k: int, k_dim: int):
    """GQA sharded on heads: heads_kv (arg ``k``'s dim ``k_dim``) must split evenly, so that
    each rank keeps whole query groups. MHA (equal head counts) may split unevenly."""
    def even(args):
        if (_is_spec(args[q]) and _is_spec(args[k])
                and args[q].shape[q_dim] != args[k].shape[k_dim]):
            return [(k, k_dim)]
        return []
    return even


def _attention(args):
    # q, k, v, causal, scale, wl, wr, softcap, alibi 8, sinks 9 -> out [B,S,H,D], lse [B,H,S]
    heads = {0: _S(2), 1: _S(2), 2: _S(2), **_head_inputs(args, 8, 9)}
    batch = {0: _S(0), 1: _S(0), 2: _S(0), **_batch_alibi(args, 8)}
    return [([_S(2), _S(1)], heads), ([_S(0), _S(0)], batch)]


def _attention_backward(args):
    # dout, q, k, v, out, lse 5, ..., alibi 11, dlse 12, sinks 13 -> dq, dk, dv
    heads = {i: _S(2) for i in range(5)}
    heads.update({5: _S(1), 12: _S(1), **_head_inputs(args, 11, 13)})
    batch = {i: _S(0) for i in (0, 1, 2, 3, 4, 5, 12)}
    batch.update(_batch_alibi(args, 11))
    return [([_S(2)] * 3, heads), ([_S(0)] * 3, batch)]


def _varlen(args):
    # q, k, v [T, H, D], cu_q, cu_k, ..., alibi 12, sinks 13 -> out [T,H,D], lse [H,T]
    heads = {0: _S(1), 1: _S(1), 2: _S(1), **_head_inputs(args, 12, 13)}
    return [([_S(1), _S(0)], heads)]


def _varlen_backward(args):
    # dout, q, k, v, out, lse 5, cu_q, cu_k, ..., alibi 15, dlse 16, sinks 17 -> dq, dk, dv
    heads = {i: _S(1) for i in range(5)}
    heads.update({5: _S(0), 16: _S(0), **_head_inputs(args, 15, 17)})
    return [([_S(1)] * 3, heads)]


def _paged(args):
    # q [N,Lq,H,D], k_cache, v_cache [blocks,bs,Hkv,D], block_table, seq_lens, ...,
    # alibi 9, k_scale, v_scale, kv_scales 12, sinks 13 -> out [N,Lq,H,D], lse [N,H,Lq]
    heads = {0: _S(2), 1: _S(2), 2: _S(2), **_head_inputs(args, 9, 13, kv_scales=12)}
    batch = {0: _S(0), 3: _S(0), 4: _S(0), **_batch_alibi(args, 9)}
    return [([_S(2), _S(1)], heads), ([_S(0), _S(0)], batch)]


def _varlen_paged(args):
    # q [T,H,D], caches, block_table, seq_lens, cu_q, ..., alibi 11, ..., kv_scales 14, sinks 15
    heads = {0: _S(1), 1: _S(2), 2: _S(2), **_head_inputs(args, 11, 15, kv_scales=14)}
    return [([_S(1), _S(0)], heads)]


def _merge(args):
    # out_a, lse_a, out_b, lse_b: out [B,S,H,D] / lse [B,H,S], or out [T,H,D] / lse [H,T]
    pairs = [(0, 0), (1, 2), (2, 1)] if args[0].ndim == 4 else [(0, 1), (1, 0)]
    return [([_S(o), _S(l)], {0: _S(o), 1: _S(l), 2: _S(o), 3: _S(l)}) for o, l in pairs]


def _linear_like(x_i: int, w_n: int, w_k: int, bias_i: int, act_i: int | None, extra_n=()):
    """x [..., K] @ W (W's N dim ``w_n``, K dim ``w_k``) + bias [N]; ``extra_n``: further
    arguments sharded with W on N (quantized_linear's scales, zeros)."""
    def rules(args):
        x, bias = args[x_i], args[bias_i]
        nd = x.ndim
        out = []
        for d in range(nd - 1):                                  # token / batch dims
            out.append(([_S(d)], {x_i: _S(d)}))
        col = {1: _S(w_n)}                                       # column-parallel (N)
        for i in extra_n:
            if _is_spec(args[i]):
                col[i] = _S(0)
        if _is_spec(bias):
            col[bias_i] = _S(0)
        out.append(([_S(nd - 1)], col))
        if w_k is not None and (act_i is None or args[act_i] is None):   # row-parallel (K)
            row = {x_i: _S(nd - 1), 1: _S(w_k)}
            if _is_spec(bias):
                row[bias_i] = _P()
            out.append(([_P()], row))
        return out
    return rules


_linear = _linear_like(0, w_n=0, w_k=1, bias_i=2, act_i=3)               # weight [N, K]
_matmul = _linear_like(0, w_n=1, w_k=0, bias_i=2, act_i=3)               # b [K, N]
# qweight [N, K or K/2], scales / zeros [N, K/group]: never sharded on K (see the docstring)
_quantized_linear = _linear_like(0, w_n=0, w_k=None, bias_i=6, act_i=None, extra_n=(2, 3))


def _write_kv_cache(args):
    # k, v [T, Hkv, D], k_cache, v_cache [blocks, bs, Hkv, D], slot_mapping, k_scale, v_scale,
    # kv_scales [2, Hkv] 7
    heads = {0: _S(1), 1: _S(1), 2: _S(2), 3: _S(2)}
    if _is_spec(args[7]):
        heads[7] = _S(1)
    return [([], heads)]


def _out_twin(rules, out: int, lse: int):
    """The out= twin of a paged op: its arguments, then out and lse (written in place),
    sharded as the functional op's two outputs."""
    def twin(args):
        result = []
        for (o, l), ins in rules(args):
            ins = {**ins, out: o}
            if _is_spec(args[lse]):
                ins[lse] = l
            result.append(([], ins))
        return result
    return twin


_RULES: dict[str, Callable] = {
    "attention": _strategy(_attention, _gqa(0, 2, 1, 2)),
    "attention_backward": _strategy(_attention_backward, _gqa(1, 2, 2, 2)),
    "varlen_attention": _strategy(_varlen, _gqa(0, 1, 1, 1)),
    "varlen_attention_backward": _strategy(_varlen_backward, _gqa(1, 1, 2, 1)),
    "paged_attention": _strategy(_paged, _gqa(0, 2, 1, 2)),
    "varlen_paged_attention": _strategy(_varlen_paged, _gqa(0, 1, 1, 2)),
    "paged_attention_out": _strategy(_out_twin(_paged, 14, 15), _gqa(0, 2, 1, 2)),
    "varlen_paged_attention_out": _strategy(_out_twin(_varlen_paged, 16, 17), _gqa(0, 1, 1, 2)),
    "write_kv_cache": _strategy(_write_kv_cache),
    "merge_attention_states": _strategy(_merge),
    "matmul": _strategy(_matmul),
    "linear": _strategy(_linear),
    "quantized_linear": _strategy(_quantized_linear),
}   # every other op (scaled_matmul, grouped_matmul, ...): Replicate only


# -- automatic registration ------------------------------------------------------------------


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """One-shot import hook: when torch.distributed.tensor is imported, wraps its loader so
    that ``register()`` runs right after the package's ``__init__`` has run (everything the
    rules use is imported by then, so registering imports nothing new). The module's own
    loader is put back as soon as it has executed."""

    def find_spec(self, name, path, target=None):
        if name != _MODULE or _registered:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        try:
            self._loader.exec_module(module)
        finally:
            module.__loader__ = self._loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self._loader
        _register_quietly()

    def __getattr__(self, name):
        return getattr(self._loader, name)


_HOOK = _RegisterAfterImport()


def _uninstall_hook() -> None:
    try:
        sys.meta_path.remove(_HOOK)
    except ValueError:
        pass


def _register_quietly() -> None:
    try:
        register()
    except Exception:   # never break the user's import; say what failed once
        _uninstall_hook()
        _log.warning("polykernels: could not register the DTensor sharding rules of the "
                     "polykernels ops (DTensor inputs to them will fail)", exc_info=True)


def _install() -> None:
    """At ``import polykernels``: register now if torch.distributed.tensor is already
    imported, else register when it is (import hook). Imports nothing itself."""
    if _registered or not torch.distributed.is_available():
        return
    if getattr(sys.modules.get(_MODULE), "DTensor", None) is not None:
        _register_quietly()
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
