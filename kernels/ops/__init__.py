"""Public ops. Importing this defines the torch.library ops (cheap; no device work)."""
from . import paged_out  # noqa: F401  (the out= twins of the paged ops)
from .attention import attention, varlen_attention
from .matmul import grouped_matmul, linear, matmul, quantized_linear, scaled_matmul
from .paged import (merge_attention_states, paged_attention, varlen_paged_attention,
                    write_kv_cache)
