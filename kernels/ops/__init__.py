"""Public ops. Importing this defines the torch.library ops (cheap; no device work)."""
from . import paged_out  # noqa: F401  (the out= twins of the paged ops)
from .attention import attention, varlen_attention
from .matmul import grouped_matmul, linear, matmul, quantized_linear, scaled_matmul
from .paged import (merge_attention_states, paged_attention, varlen_paged_attention,
                    write_kv_cache)

# DTensor sharding rules for the ops just defined (polykernels/distributed.py): registered now
# if torch.distributed.tensor is already imported, else by a one-shot hook when it is imported
# (importing it here would cost ~1.4 s). Here because the rules need the ops defined.
from ..distributed import _install as _install_dtensor_rules  # noqa: E402

_install_dtensor_rules()
