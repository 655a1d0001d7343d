"""merge_attention_states: a partial state whose lse is +inf is empty, like -inf (FlashAttention-2
writes +inf for a zero-length sequence; vLLM's merge reads it as -inf). Before, +inf gave NaN.
Every impl that runs here: C++, Triton under the interpreter, the reference."""
from __future__ import annotations

import os

import pytest
import torch

from polykernels.dispatch import registry

INF = float("inf")


def _impls():
    registry.ensure_loaded()
    names = [i for i in registry.impls["merge_attention_states"]
             if i.backend in ("cpu", "reference") or (i.interpretable and os.environ.get("TRITON_INTERPRET") == "1")]
    seen, out = set(), []
    for i in names:   # one interpreter run of a Triton impl registered for several backends
        if i.name not in seen:
            seen.add(i.name)
            out.append(i)
    return out


@pytest.mark.parametrize("impl", _impls(), ids=lambda i: i.label)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pos_inf_lse_is_an_empty_state(impl, dtype):
    out_a, out_b = torch.randn(2, 3, 4, 16).to(dtype), torch.randn(2, 3, 4, 16).to(dtype)
    lse_a, lse_b = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    lse_b[0, 1, 2] = INF                 # b empty: a's state passes through
    out_b[0, 2, 1] = float("nan")        # ... even when b's out holds garbage
    lse_a[1, 3, 0] = lse_b[1, 3, 0] = INF                   # both empty (+inf, +inf)
    lse_a[1, 0, 1], lse_b[1, 0, 1] = INF, -INF             # both empty (+inf, -inf)
    assert impl.supports(out_a, lse_a, out_b, lse_b) is None   # (also loads the C++ extension)
    out, lse = impl.fn(out_a, lse_a, out_b, lse_b)
    assert not out.isnan().any() and not lse.isnan().any()
    torch.testing.assert_close(out[0, 2, 1].float(), out_a[0, 2, 1].float(), rtol=1e-2, atol=1e-2)
    assert lse[0, 1, 2].item() == pytest.approx(lse_a[0, 1, 2].item(), abs=1e-5)
    for b, h, r in ((1, 3, 0), (1, 0, 1)):
        assert torch.equal(out[b, r, h].float(), torch.zeros(16)) and lse[b, h, r].item() == -INF
