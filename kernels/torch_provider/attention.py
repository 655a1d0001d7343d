"""``attention`` and ``varlen_attention`` through torch's CPU flash-attention kernel.

Kernel: ``aten::_scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal, *,
attn_mask, scale) -> (out, logsumexp)`` on [B, H, S, D] tensors. Ours are [B, S, H, D]:
``transpose(1, 2)`` views go in (no copy); the output comes back laid out like q, so it is
contiguous for a [B, S, H, D]-dense q and copied to contiguous otherwise.

Measured on torch 2.13 (CPU), and what this module does about each:
  * dtypes fp32, bf16, fp16 and fp64; ``logsumexp`` is the natural log (ours), fp32 (fp64
    for fp64 inputs; returned as fp32).
  * GQA / MQA are native (query head h reads KV head h // (Hq / Hkv)): no K/V copies.
  * ``is_causal`` is top-left aligned; ours is bottom-right (docs/design.md). Sq == Sk: the
    two agree. Sq > Sk: query rows i < Sq - Sk see no key (out 0, lse -inf, written here) and
    the remaining rows are a square causal problem. Sq < Sk: an additive mask [Sq, Sk] in q's
    dtype (0 / -inf; the kernel rejects bool masks), Sq * Sk elements per call.
  * A row whose mask hides every key comes back as out 0 with lse **0** (ours: -inf), which is
    why fully masked rows never reach the kernel.
  * q, k or v with a strided head dim (stride(-1) != 1) gives **wrong results without an
    error**: refused.
  * Sq == 0 or Sk == 0 kills the process (SIGFPE): empty problems are answered here.
  * Not expressible: softcap, ALiBi, sliding windows (only "no window" and plain causal).
Attention backward has no ``torch`` impl (it stays with the others).
"""
from __future__ import annotations

import torch

from ..reference.attention_ref import _sequences, visibility
from .common import cpu_only_reason

_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _flash(q, k, v, is_causal, mask, scale):
    """[B, S, H, D] views in, (out [B, S, H, D] contiguous, lse fp32 [B, H, S]) out. The kernel
    lays its output out like q: a q that is not [B, S, H, D]-dense costs one copy here, as
    the op's fake (and a compiled graph's buffers) promise a contiguous result."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0.0, is_causal,
        attn_mask=mask, scale=scale)
    return out.transpose(1, 2).contiguous(), lse.to(torch.float32)


def _causal_mask(sq: int, sk: int, dtype, device) -> torch.Tensor:
    """Additive bottom-right causal mask [sq, sk] for sq < sk (no row is fully masked)."""
    visible, _ = visibility(sq, sk, True, -1, -1, device)
    return torch.zeros(sq, sk, dtype=dtype, device=device).masked_fill_(~visible, float("-inf"))


def attention(q, k, v, causal, softmax_scale, window_left, window_right, softcap, alibi_slopes):
    b, sq, hq, d = q.shape
    sk = k.shape[1]
    causal = causal or window_right == 0   # supports() admits only left = -1, right in (-1, 0)
    if q.numel() == 0 or sk == 0:          # the kernel divides by zero on empty sequences
        return (torch.zeros(b, sq, hq, d, dtype=q.dtype, device=q.device),
                torch.full((b, hq, sq), float("-inf"), dtype=torch.float32, device=q.device))
    if not causal or sq == sk:
        return _flash(q, k, v, causal, None, softmax_scale)
    if sq < sk:
        return _flash(q, k, v, False, _causal_mask(sq, sk, q.dtype, q.device), softmax_scale)
    # sq > sk: the first sq - sk query rows see no key; the last sk rows are square-causal.
    skip = sq - sk
    o, l = _flash(q[:, skip:], k, v, True, None, softmax_scale)
    out = torch.zeros(b, sq, hq, d, dtype=q.dtype, device=q.device)
    out[:, skip:] = o
    lse = torch.full((b, hq, sq), float("-inf"), dtype=torch.float32, device=q.device)
    lse[:, :, skip:] = l
    return out, lse


def _refusal(op, q, k, v, causal, window_left, window_right, softcap, alibi_slopes):
    reason = cpu_only_reason(op, q, why="GPU path pending")
    if reason:
        return reason
    if q.dtype not in _FLOATS:
        return f"dtype {q.dtype} not supported by torch's CPU flash kernel"
    if softcap > 0:
        return "softcap not supported by torch's SDPA kernels"
    if alibi_slopes is not None:
        return "ALiBi not supported by torch's SDPA kernels"
    right = 0 if causal else window_right
    if window_left != -1 or right not in (-1, 0):
        return (f"sliding window (left={window_left}, right={right}) not supported: torch's "
                "flash kernel has only a causal flag (windows would need a dense mask)")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            return (f"{name} has a strided head dim (stride(-1) = {t.stride(-1)}): torch's CPU "
                    "flash kernel returns wrong results for it (measured, torch 2.13)")
    return None


def attention_supports(q, k, v, causal, softmax_scale, window_left, window_right, softcap,
                       alibi_slopes):
    return _refusal("attention", q, k, v, causal, window_left, window_right, softcap,
                    alibi_slopes)


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                     softmax_scale, window_left, window_right, softcap, alibi_slopes):
    """One kernel call per sequence (views into the packed tensors, no copies of q/k/v)."""
    out = torch.zeros_like(q)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32,
                     device=q.device)
    for _, q0, q1, k0, k1 in _sequences(cu_seqlens_q, cu_seqlens_k):
        o, l = attention(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], causal, softmax_scale,
                         window_left, window_right, softcap, None)
        out[q0:q1] = o[0]
        lse[:, q0:q1] = l[0]
    return out, lse


def varlen_attention_supports(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                              causal, softmax_scale, window_left, window_right, softcap,
                              alibi_slopes):
    return _refusal("varlen_attention", q, k, v, causal, window_left, window_right, softcap,
                    alibi_slopes)
