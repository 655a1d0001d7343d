"""pk.attention and pk.varlen_attention: public functions, torch.library ops, fakes, autograd.

The ops ``torch.ops.polykernels.attention`` / ``varlen_attention`` (and their ``_backward``)
run the dispatcher: the implementation is chosen per call from the registry (Triton, C++,
reference, plugins) with failover. Semantics: docs/design.md / reference/attention_ref.py.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._library import define, fake
from ._run import empty_like_contiguous, run
from . import checks

# -- dense --------------------------------------------------------------------------------------


@define("attention", differentiable=True)
def _attention(q: Tensor, k: Tensor, v: Tensor, causal: bool, softmax_scale: float,
               window_left: int, window_right: int, softcap: float,
               alibi_slopes: Optional[Tensor], sinks: Optional[Tensor] = None
               ) -> tuple[Tensor, Tensor]:
    return run("attention", q, k, v, causal, softmax_scale, window_left, window_right,
               softcap, alibi_slopes, sinks)


@fake(_attention)
def _(q, k, v, causal, softmax_scale, window_left, window_right, softcap, alibi_slopes,
      sinks=None):
    b, sq, hq, _ = q.shape
    return q.new_empty(b, sq, hq, v.shape[-1]), q.new_empty(b, hq, sq, dtype=torch.float32)


@define("attention_backward")
def _attention_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                        causal: bool, softmax_scale: float, window_left: int, window_right: int,
                        softcap: float, alibi_slopes: Optional[Tensor], dlse: Optional[Tensor],
                        sinks: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    return run("attention_backward", dout, q, k, v, out, lse, causal, softmax_scale,
               window_left, window_right, softcap, alibi_slopes, dlse, sinks)


@fake(_attention_backward)
def _(dout, q, k, v, out, lse, *rest):
    return empty_like_contiguous(q, k, v)


def _attention_setup(ctx, inputs, output):
    q, k, v, causal, scale, wl, wr, softcap, alibi, sinks = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, alibi, sinks)
    ctx.flags = (causal, scale, wl, wr, softcap)


def sinks_grad(sinks, dout, out, lse, dlse, head_dim: int):
    """d loss / d sinks [Hq]: a sink is a key with no value, so d lse_i / d sink = P_sink,i =
    exp(sink - lse_i) and d out_i / d sink = -P_sink,i out_i, which gives
    dsink_h = -sum over the rows of head h of P_sink,i * (rowsum(dO_i * O_i) - dlse_i).
    ``head_dim``: where heads are in lse's layout (dense [B, Hq, Sq]: 1; varlen [Hq, T]: 0);
    out's layout is [..., S, Hq, D]."""
    delta = (dout.float() * out.float()).sum(-1).movedim(-1, head_dim)   # lse's layout
    if dlse is not None:
        delta = delta - dlse.float()
    shape = [1] * lse.dim()
    shape[head_dim] = -1
    p_sink = torch.exp(sinks.float().view(shape) - lse.float())
    dims = [d for d in range(lse.dim()) if d != head_dim]
    return -(p_sink * delta).sum(dim=dims)


def _attention_grad(ctx, dout, dlse):
    # dlse: the gradient flowing into the returned lse (zeros when lse is not used); every
    # backward impl takes it (folded into delta = rowsum(dO * O) - dlse), so no branch here.
    q, k, v, out, lse, alibi, sinks = ctx.saved_tensors
    causal, scale, wl, wr, softcap = ctx.flags
    dq, dk, dv = _attention_backward(dout.contiguous(), q, k, v, out, lse, causal, scale, wl, wr,
                                     softcap, alibi, dlse, sinks)
    dsinks = None
    if sinks is not None and ctx.needs_input_grad[9]:
        dsinks = sinks_grad(sinks, dout, out, lse, dlse, head_dim=1)
    return dq, dk, dv, None, None, None, None, None, None, dsinks


torch.library.register_autograd(_attention, _attention_grad, setup_context=_attention_setup)


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False,
              softmax_scale: float | None = None, window: tuple[int, int] = (-1, -1),
              softcap: float = 0.0, alibi_slopes: Tensor | None = None,
              sinks: Tensor | None = None, return_lse: bool = False):
    """Scaled dot-product attention, FlashAttention layout, with autograd.

    q [batch, seqlen_q, heads_q, head_dim], k/v [batch, seqlen_k, heads_kv, head_dim] (any
    strides; heads_q % heads_kv == 0 for GQA/MQA); fp16/bf16/fp32 (fp64: reference only).
    causal: bottom-right aligned when seqlen_q != seqlen_k. window=(left, right), -1 unbounded.
    softcap > 0: scores -> softcap * tanh(scores / softcap). alibi_slopes fp32 [heads_q] or
    [batch, heads_q]: scores -= slope * |i + seqlen_k - seqlen_q - j|. sinks [heads_q]
    (gpt-oss attention sinks, differentiable): one more logit per head in every row's softmax
    denominator, a key with no value; lse includes it.
    Returns out [batch, seqlen_q, heads_q, head_dim] (q's dtype), and with return_lse=True also
    lse fp32 [batch, heads_q, seqlen_q]. A query row that sees no key gets 0 and lse -inf.

    >>> out = pk.attention(q, k, v, causal=True)            # doctest: +SKIP
    """
    out, lse = _attention(*attention_args(q, k, v, causal=causal, softmax_scale=softmax_scale,
                                          window=window, softcap=softcap,
                                          alibi_slopes=alibi_slopes, sinks=sinks))
    return (out, lse) if return_lse else out


def attention_args(q, k, v, *, causal=False, softmax_scale=None, window=(-1, -1), softcap=0.0,
                   alibi_slopes=None, sinks=None, return_lse=False) -> tuple:
    """Validate public arguments; return the op's internal arguments."""
    checks.qkv(q, k, v, seq_dims=4)
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected bool, got {type(causal).__name__}")
    wl, wr = checks.window_pair(window)
    scale, softcap = checks.scalar_args(softmax_scale, softcap, q.shape[-1])
    checks.alibi(alibi_slopes, q, q.shape[0], q.shape[2])
    sinks = checks.sinks(sinks, q, q.shape[2])
    return q, k, v, causal, scale, wl, wr, softcap, alibi_slopes, sinks


# -- varlen -------------------------------------------------------------------------------------


@define("varlen_attention", differentiable=True)
def _varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
            max_seqlen_q: int, max_seqlen_k: int, causal: bool, softmax_scale: float,
            window_left: int, window_right: int, softcap: float,
            alibi_slopes: Optional[Tensor], sinks: Optional[Tensor] = None
            ) -> tuple[Tensor, Tensor]:
    return run("varlen_attention", q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
               max_seqlen_k, causal, softmax_scale, window_left, window_right, softcap,
               alibi_slopes, sinks)


@fake(_varlen)
def _(q, k, v, *rest):
    t, hq, _ = q.shape
    return q.new_empty(t, hq, v.shape[-1]), q.new_empty(hq, t, dtype=torch.float32)


@define("varlen_attention_backward")
def _varlen_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                     cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int,
                     max_seqlen_k: int, causal: bool, softmax_scale: float, window_left: int,
                     window_right: int, softcap: float, alibi_slopes: Optional[Tensor],
                     dlse: Optional[Tensor], sinks: Optional[Tensor] = None
                     ) -> tuple[Tensor, Tensor, Tensor]:
    return run("varlen_attention_backward", dout, q, k, v, out, lse, cu_seqlens_q,
               cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale,
               window_left, window_right, softcap, alibi_slopes, dlse, sinks)


@fake(_varlen_backward)
def _(dout, q, k, v, *rest):
    return empty_like_contiguous(q, k, v)


def _varlen_setup(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, wl, wr, softcap, alibi, sinks = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, alibi, sinks)
    ctx.flags = (max_q, max_k, causal, scale, wl, wr, softcap)


def _varlen_grad(ctx, dout, dlse):
    q, k, v, out, lse, cu_q, cu_k, alibi, sinks = ctx.saved_tensors
    max_q, max_k, causal, scale, wl, wr, softcap = ctx.flags
    dq, dk, dv = _varlen_backward(dout.contiguous(), q, k, v, out, lse, cu_q, cu_k, max_q, max_k,
                                  causal, scale, wl, wr, softcap, alibi, dlse, sinks)
    dsinks = None
    if sinks is not None and ctx.needs_input_grad[13]:
        dsinks = sinks_grad(sinks, dout, out, lse, dlse, head_dim=0)
    return (dq, dk, dv) + (None,) * 10 + (dsinks,)


torch.library.register_autograd(_varlen, _varlen_grad, setup_context=_varlen_setup)


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor,
                     cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int, *,
                     causal: bool = False, softmax_scale: float | None = None,
                     window: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                     alibi_slopes: Tensor | None = None, sinks: Tensor | None = None,
                     return_lse: bool = False):
    """Attention over packed variable-length sequences (one launch for the whole batch).

    q [total_q, heads_q, head_dim], k/v [total_k, heads_kv, head_dim]; cu_seqlens_q/k int32
    [batch + 1] prefix sums of the lengths (sequence b is rows cu[b]:cu[b+1]); max_seqlen_q/k
    bound the lengths. Per-sequence semantics are those of ``attention``; alibi_slopes
    [heads_q] or [batch, heads_q]; sinks [heads_q]. Returns out [total_q, heads_q, head_dim] and, with
    return_lse=True, lse fp32 [heads_q, total_q].
    """
    out, lse = _varlen(*varlen_attention_args(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal,
        softmax_scale=softmax_scale, window=window, softcap=softcap, alibi_slopes=alibi_slopes,
        sinks=sinks))
    return (out, lse) if return_lse else out


def varlen_attention_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                          causal=False, softmax_scale=None, window=(-1, -1), softcap=0.0,
                          alibi_slopes=None, sinks=None, return_lse=False) -> tuple:
    """Validate public arguments; return the op's internal arguments."""
    checks.qkv(q, k, v, seq_dims=3)
    batch = checks.cu_seqlens(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], max_seqlen_q,
                              max_seqlen_k, q.device)
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected bool, got {type(causal).__name__}")
    wl, wr = checks.window_pair(window)
    scale, softcap = checks.scalar_args(softmax_scale, softcap, q.shape[-1])
    checks.alibi(alibi_slopes, q, batch, q.shape[1])
    sinks = checks.sinks(sinks, q, q.shape[1])
    return (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, wl,
            wr, softcap, alibi_slopes, sinks)
