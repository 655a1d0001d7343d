"""Pure-torch reference implementations: the test oracle, the benchmarks' correctness check
and the last-resort implementation of every op. Signatures are the ops' internal ones
(CONTRIBUTING.md)."""
from .attention_ref import (attention, attention_backward, varlen_attention,
                        varlen_attention_backward)
from .matmul_ref import grouped_matmul, linear, matmul, quantized_linear, scaled_matmul
from .paged_ref import (merge_attention_states, paged_attention, varlen_paged_attention,
                        write_kv_cache)
from . import quant

__all__ = [
    "attention", "attention_backward", "varlen_attention", "varlen_attention_backward",
    "paged_attention", "varlen_paged_attention", "write_kv_cache", "merge_attention_states",
    "matmul", "linear", "scaled_matmul", "quantized_linear", "grouped_matmul", "quant",
]
