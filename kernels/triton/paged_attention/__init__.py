"""Paged decode attention in Triton (NVIDIA and AMD): a GQA-packed split-KV decode kernel,
the kernel that reduces its splits, merge_attention_states, and write_kv_cache.

Importing this package imports nothing heavy; the kernels live in ``decode_kernel.py``,
``merge_kernel.py`` and ``write_kernel.py`` and are imported by ``launcher.py`` on first use.
"""
