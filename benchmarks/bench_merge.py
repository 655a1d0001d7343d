"""merge_attention_states: every impl available on the device, and the default (unpinned)
call, vs the same formula in torch.

Bytes model: read out_a, out_b, lse_a, lse_b, write out and lse.
"""
from __future__ import annotations

import torch

from benchmarks.common import copy_bandwidth_gbs, impl_rows, main_for, reference_output, rel_err


def torch_merge(out_a, lse_a, out_b, lse_b):
    """The op's semantics in torch ops: a side with lse -inf contributes nothing, both -inf
    give out 0 (the clamp keeps exp(-inf - -inf) = NaN out)."""
    lse = torch.logaddexp(lse_a, lse_b)
    safe = lse.clamp_min(torch.finfo(lse.dtype).min)
    wa = torch.exp(lse_a - safe).transpose(-1, -2).unsqueeze(-1)
    wb = torch.exp(lse_b - safe).transpose(-1, -2).unsqueeze(-1)
    return (out_a.float() * wa + out_b.float() * wb).to(out_a.dtype), lse


def run(report, device, quick: bool) -> None:
    shapes = [(8, 1, 32, 128), (64, 1, 32, 128)] if quick else \
        [(8, 1, 32, 128), (64, 1, 32, 128), (256, 1, 32, 128), (4, 512, 32, 128)]
    bw = copy_bandwidth_gbs(device)
    for dtype in (torch.bfloat16,):
        for b, s, h, d in shapes:
            out_a = torch.randn(b, s, h, d, dtype=dtype, device=device)
            out_b = torch.randn_like(out_a)
            lse_a = torch.randn(b, h, s, device=device)
            lse_b = torch.randn_like(lse_a)
            args = (out_a, lse_a, out_b, lse_b)
            nbytes = 3 * out_a.numel() * out_a.element_size() + 3 * lse_a.numel() * 4
            shape = f"B{b} S{s} H{h} D{d} {str(dtype)[6:]}"
            ref_out, _ = reference_output("merge_attention_states", args)
            torch_row = dict(nbytes=nbytes, peak_gbs=bw,
                             max_err=rel_err(torch_merge(*args)[0], ref_out))
            impl_rows(report, "merge_attention_states", device, args, row_op="merge_states",
                      baselines={"torch": (lambda: torch_merge(*args), torch_row)},
                      shape=shape, nbytes=nbytes, peak_gbs=bw,
                      err_fn=lambda out: rel_err(out[0], ref_out))


if __name__ == "__main__":
    main_for(run)
