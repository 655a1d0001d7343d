"""Registers the reference as the last-resort impl of every op, on every device type."""
import functools

from ..dispatch import register_impl
from ..ops import checks
from ..ops.paged_out import compute_and_copy
from . import attention_ref as attention
from . import matmul_ref as matmul
from . import paged_ref as paged

OPS = {
    "attention": attention.attention,
    "attention_backward": attention.attention_backward,
    "varlen_attention": attention.varlen_attention,
    "varlen_attention_backward": attention.varlen_attention_backward,
    "paged_attention": paged.paged_attention,
    "varlen_paged_attention": paged.varlen_paged_attention,
    "paged_attention_out": compute_and_copy(paged.paged_attention),
    "varlen_paged_attention_out": compute_and_copy(paged.varlen_paged_attention),
    "write_kv_cache": paged.write_kv_cache,
    "merge_attention_states": paged.merge_attention_states,
    "matmul": matmul.matmul,
    "linear": matmul.linear,
    "scaled_matmul": matmul.scaled_matmul,
    "quantized_linear": matmul.quantized_linear,
    "grouped_matmul": matmul.grouped_matmul,
}


def _paged_guard(q, k_cache, v_cache, block_table, seq_lens, *rest):
    checks.paged_values(block_table, seq_lens, q.shape[1], k_cache.shape[0], k_cache.shape[1])


def _varlen_paged_guard(q, k_cache, v_cache, block_table, seq_lens, cu_q, max_q, *rest):
    checks.varlen_paged_values(block_table, seq_lens, cu_q, q.shape[0], max_q, k_cache.shape[0],
                               k_cache.shape[1])


def _write_guard(k, v, k_cache, v_cache, slot_mapping, *rest):
    checks.slot_values(slot_mapping, k_cache.shape[0] * k_cache.shape[1])


def _varlen_guard(q, k, v, cu_q, cu_k, max_q, max_k, *rest):
    checks.cu_seqlens_values(cu_q, cu_k, q.shape[0], k.shape[0], max_q, max_k)


def _varlen_backward_guard(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, *rest):
    checks.cu_seqlens_values(cu_q, cu_k, q.shape[0], k.shape[0], max_q, max_k)


def _grouped_guard(x, weights, group_sizes):
    checks.group_size_values(group_sizes, x.shape[0])


# The reference addresses memory with the index values it is given (block ids, slots, offsets,
# group sizes): a wrong one would read the wrong rows and return a plausible answer (a block id
# of -1 reads the last block). It runs when every kernel refused, which is exactly what a bad
# index causes where the public checks cannot read values (torch.compile; GPUs without
# POLYKERNELS_CHECK_VALUES=1). So it checks them itself, always, before any work or write (a
# host sync on a GPU: the reference is the slow last resort anyway).
GUARDS = {"paged_attention": _paged_guard, "varlen_paged_attention": _varlen_paged_guard,
          "paged_attention_out": _paged_guard, "varlen_paged_attention_out": _varlen_paged_guard,
          "write_kv_cache": _write_guard,
          "varlen_attention": _varlen_guard, "varlen_attention_backward": _varlen_backward_guard,
          "grouped_matmul": _grouped_guard}


def _guarded(guard, fn):
    @functools.wraps(fn)
    def checked(*args):
        guard(*args)
        return fn(*args)
    return checked


def register() -> None:
    for op, fn in OPS.items():
        guard = GUARDS.get(op)
        register_impl(op, "reference", backends="reference", priority=0,
                      fn=fn if guard is None else _guarded(guard, fn))
