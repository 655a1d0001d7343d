"""Test helper: run a computation under several torch CPU thread counts."""
import torch


def at_thread_counts(fn, counts=(1, 2)) -> list:
    """``fn()`` once under each of torch's CPU thread ``counts``, in order: the results. The
    thread count in force before is restored afterwards."""
    prev = torch.get_num_threads()
    try:
        results = []
        for n in counts:
            torch.set_num_threads(n)
            results.append(fn())
        return results
    finally:
        torch.set_num_threads(prev)
