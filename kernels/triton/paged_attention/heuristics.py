"""How many KV splits a decode launch uses.

One program per (sequence, KV head) leaves most of a GPU idle at small batch and long
context (batch 1 x 8 KV heads = 8 programs on 132 SMs). Splitting the keys into S chunks
multiplies the programs by S at the cost of fp32 partials and a reduce launch, so we split
only until the grid covers the multiprocessors about twice, and never into chunks shorter
than a few tiles (the reduce would then cost more than it saves).
"""
from __future__ import annotations

import functools

import torch

MAX_SPLITS = 64
MIN_TOKENS_PER_SPLIT = 256


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_type: str, index: int) -> int:
    # Read lazily, on the first launch on that device, and cached: never at import.
    if device_type == "cuda":
        return torch.cuda.get_device_properties(index).multi_processor_count
    return 1  # the interpreter on CPU: splitting buys nothing there


def multiprocessor_count(device: torch.device) -> int:
    return _multiprocessors(device.type, device.index if device.index is not None else
                            (torch.cuda.current_device() if device.type == "cuda" else 0))


def num_splits(batch: int, kv_heads: int, max_context: int, sm_count: int, block_n: int) -> int:
    """Number of KV chunks per (sequence, KV head) program: 1..MAX_SPLITS.

    ``max_context`` is the longest number of keys any sequence attends (seq_len, or the
    window when smaller); ``sm_count`` the device's multiprocessors (compute units on AMD).
    """
    programs = max(batch * kv_heads, 1)
    want = -(-2 * sm_count // programs)  # ceil: cover the machine about twice
    by_length = max(max_context // max(MIN_TOKENS_PER_SPLIT, block_n), 1)
    return int(max(1, min(want, by_length, MAX_SPLITS)))
