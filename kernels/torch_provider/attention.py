"""``attention``, ``attention_backward``, ``varlen_attention``: torch's CPU flash-attention kernels.

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
  * Masked keys are multiplied by P = 0, so NaN / inf in a V row a query cannot see reaches
    its output (0 * NaN): causal calls with non-finite V take the reference's formulas.

Backward: ``aten::_scaled_dot_product_flash_attention_for_cpu_backward(grad_out, q, k, v, out,
logsumexp, dropout_p, is_causal, *, attn_mask, scale) -> (dq, dk, dv)``, same layouts. Measured
on torch 2.13 (CPU):
  * GQA / MQA native: dk / dv come back with the KV heads (the query groups summed in).
  * P is recomputed as exp(scale * q.k + mask - logsumexp) from the lse passed in, and
    delta = rowsum(grad_out * out) from the out passed in; logsumexp must be in the kernel's
    accumulation dtype (fp32; fp64 for fp64 inputs, where ours, fp32, is recomputed in fp64
    by one forward call: with the fp32 one the fp64 gradients are off by ~1e-5). Grads are
    [B, S, H, D]-dense. An ``out`` with a strided head dim gives wrong results (copied here);
    a strided ``grad_out`` is fine (the kernel copies it).
  * bf16 / fp16 run the kernel's GEMMs in that dtype, which without oneDNN support for it
    (AVX2) is slow: 2-10x slower than our fp32 reference backward (770 vs 63 ms fp32 at
    B=2, S=1024, H=8, D=64 causal). There the kernel runs on fp32 copies (more accurate too).
  * Causal is top-left as in the forward, so the same formulations apply: Sq > Sk runs the
    last Sk query rows as square causal (the other rows see no key: dq 0, no share in dk /
    dv); Sq < Sk uses the same additive mask.
  * A row whose lse is -inf (fully masked) makes the kernel compute exp(+inf): NaN in dq,
    dk and dv of the whole head. Such rows exist only in the Sq > Sk causal case, which never
    passes them; empty problems (Sq or Sk = 0) are answered here (zeros), as in the forward.
  * It has no dlse input. Autograd always passes one (zeros when lse is not used), and the
    dispatcher's decision cannot depend on values, so supports() does not refuse it: a zero
    dlse is exactly the kernel's problem; a nonzero one (a loss that uses lse) is answered by
    the reference's formulas, which fold it as delta = rowsum(dout * out) - dlse.
"""
from __future__ import annotations

import functools

import torch

from ..ops import checks
from ..reference import attention_ref
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


@functools.lru_cache(maxsize=None)
def _backward_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the backward kernel runs in: bf16 / fp16 only where oneDNN has GEMMs for
    them; elsewhere (e.g. AVX2) the kernel's reduced-precision GEMMs take a slow path
    (measured, torch 2.13 on AVX2: 2-10x slower than the fp32 reference), so fp32 copies go in."""
    reduced = {torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported,
               torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported}.get(dtype)
    return torch.float32 if reduced is not None and not reduced() else dtype


def _flash_backward(dout, q, k, v, out, lse, is_causal, mask, scale):
    """[B, S, H, D] views in (q, k, v with a unit head-dim stride), (dq, dk, dv) [B, S, H, D]
    contiguous out, in q's dtype, dk / dv with k's heads."""
    dtype = q.dtype
    ct = _backward_dtype(dtype)
    # out with a strided head dim is read as if dense (wrong results, measured): one copy
    dout, q, k, v, out = (t.to(ct).transpose(1, 2) if t.stride(-1) == 1 else
                          t.to(ct).contiguous().transpose(1, 2) for t in (dout, q, k, v, out))
    mask = None if mask is None else mask.to(ct)
    if ct == torch.float64:   # the kernel reads lse in fp64 here; ours is fp32 (1e-5 errors)
        lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, is_causal, attn_mask=mask, scale=scale)[1]
    grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        dout, q, k, v, out, lse, 0.0, is_causal, attn_mask=mask, scale=scale)
    return tuple(g.transpose(1, 2).to(dtype) for g in grads)


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
    if causal and not bool(torch.isfinite(v.sum(dtype=torch.float32))):
        # the kernel adds 0 * V for masked keys, so a NaN / inf V row that a query cannot see
        # would reach its output (measured): such calls take the reference's formulas. A sum
        # over V decides (any NaN / inf makes it non-finite; one pass, no mask tensor; a
        # finite V whose sum overflows only takes the slower exact path); causal calls only,
        # the others mask nothing.
        return attention_ref.attention(q, k, v, causal, softmax_scale, -1, -1, 0.0, None)
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


def attention_backward(dout, q, k, v, out, lse, causal, softmax_scale, window_left,
                       window_right, softcap, alibi_slopes, dlse):
    """The forward's formulations (see attention()) through torch's flash backward."""
    b, sq, hq, d = q.shape
    sk = k.shape[1]
    if q.numel() == 0 or k.numel() == 0:   # the kernel divides by zero on empty sequences
        return tuple(torch.zeros(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    if dlse is not None and bool(dlse.any()):   # the kernel has no dlse input
        return attention_ref.attention_backward(dout, q, k, v, out, lse, causal, softmax_scale,
                                                window_left, window_right, softcap,
                                                alibi_slopes, dlse)
    causal = causal or window_right == 0   # supports() admits only left = -1, right in (-1, 0)
    if not causal or sq == sk:
        return _flash_backward(dout, q, k, v, out, lse, causal, None, softmax_scale)
    if sq < sk:
        return _flash_backward(dout, q, k, v, out, lse, False,
                               _causal_mask(sq, sk, q.dtype, q.device), softmax_scale)
    # sq > sk: rows i < sq - sk see no key (dq 0, nothing into dk / dv, lse -inf there).
    skip = sq - sk
    dq_tail, dk, dv = _flash_backward(dout[:, skip:], q[:, skip:], k, v, out[:, skip:],
                                      lse[:, :, skip:], True, None, softmax_scale)
    dq = torch.zeros(b, sq, hq, d, dtype=q.dtype, device=q.device)
    dq[:, skip:] = dq_tail
    return dq, dk, dv


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
    if v.shape[-1] != q.shape[-1]:
        return f"value head_dim {v.shape[-1]} != query head_dim {q.shape[-1]} (not wired up here)"
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


def attention_backward_supports(dout, q, k, v, out, lse, causal, softmax_scale, window_left,
                                window_right, softcap, alibi_slopes, dlse):
    """Exactly what the forward accepts: the backward kernel covers the same problems (GQA,
    the causal formulations and dlse are handled in attention_backward)."""
    return _refusal("attention_backward", q, k, v, causal, window_left, window_right, softcap,
                    alibi_slopes)


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                     softmax_scale, window_left, window_right, softcap, alibi_slopes):
    """One kernel call per sequence (views into the packed tensors, no copies of q/k/v)."""
    # the offsets address the packed tensors: checked here, as this impl also runs where the
    # public checks could not read them (a compiled graph)
    checks.cu_seqlens_values(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], max_seqlen_q,
                             max_seqlen_k)
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
