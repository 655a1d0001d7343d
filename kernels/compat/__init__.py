"""Drop-in compatibility layers over polykernels' public ops.

- ``polykernels.compat.flash_attn``: flash-attn 2's functions (``flash_attn_func``,
  ``flash_attn_varlen_func``, ``flash_attn_with_kvcache`` and the packed variants) with its
  argument names, defaults and return conventions: swap ``from flash_attn import ...`` for
  ``from polykernels.compat.flash_attn import ...``.
- ``polykernels.compat.sdpa`` (also ``pk.sdpa``): ``torch.nn.functional.scaled_dot_product_attention``'s
  signature, layout ``[batch, heads, seqlen, head_dim]`` and semantics.

Nothing is imported here: ``import polykernels`` loads only the (cheap) ``sdpa`` module.
"""
