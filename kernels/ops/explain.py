"""Maps a public call's arguments to the op's internal arguments (for pk.explain)."""
from __future__ import annotations

from .attention import attention_args, varlen_attention_args
from .matmul import (grouped_matmul_args, linear_args, matmul_args, quantized_linear_args,
                     scaled_matmul_args)
from .paged import (merge_attention_states_args, paged_attention_args,
                    varlen_paged_attention_args, write_kv_cache_args)

ARGS = {
    "attention": attention_args,
    "varlen_attention": varlen_attention_args,
    "paged_attention": paged_attention_args,
    "varlen_paged_attention": varlen_paged_attention_args,
    "write_kv_cache": write_kv_cache_args,
    "merge_attention_states": merge_attention_states_args,
    "matmul": matmul_args,
    "linear": linear_args,
    "scaled_matmul": scaled_matmul_args,
    "quantized_linear": quantized_linear_args,
    "grouped_matmul": grouped_matmul_args,
}


def internal_args(op: str, *args, **kwargs) -> tuple:
    if op not in ARGS:
        raise ValueError(f"op: expected one of {sorted(ARGS)}, got {op!r}")
    return ARGS[op](*args, **kwargs)
