"""Triton flash attention (forward + backward, dense and varlen) for NVIDIA and AMD GPUs.

Modules: ``forward`` / ``backward`` (kernels), ``launch`` (allocation, grids, configs),
``configs_nvidia`` / ``configs_amd`` (per-vendor launch configs), ``impl`` (the ops' internal
signatures + ``supports``), ``register`` (dispatch registration). Nothing is imported here:
importing this package must not import triton.
"""
