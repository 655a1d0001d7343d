"""Registers the reference as the last-resort impl of every op, on every device type."""
from ..dispatch import register_impl
from . import attention_ref as attention
from . import matmul_ref as matmul
from . import paged_ref as paged

OPS = {
    "attention": attention.attention,
    "attention_backward": attention.attention_backward,
    "varlen_attention": attention.varlen_attention,
    "varlen_attention_backward": attention.varlen_attention_backward,
    "paged_attention": paged.paged_attention,
    "write_kv_cache": paged.write_kv_cache,
    "merge_attention_states": paged.merge_attention_states,
    "matmul": matmul.matmul,
    "linear": matmul.linear,
    "scaled_matmul": matmul.scaled_matmul,
    "quantized_linear": matmul.quantized_linear,
    "grouped_matmul": matmul.grouped_matmul,
}


def register() -> None:
    for op, fn in OPS.items():
        register_impl(op, "reference", backends="reference", fn=fn, priority=0)
