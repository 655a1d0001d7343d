"""Triton kernels, one sub-package per kernel family (imported lazily by the dispatcher)."""
