"""polykernels as an attention implementation of Hugging Face transformers.

    import polykernels.integrations.transformers as pkt
    pkt.register()                                   # once per process
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="polykernels")

``register()`` adds an attention function to transformers' ``AttentionInterface`` and a mask
function to its ``AttentionMaskInterface``, both under the name "polykernels"; transformers is
imported by ``register()``, not before. The outputs are those of ``attn_implementation="sdpa"``
on every row (padded ones included), so logits and greedy generations match it: padded
batches (left or right padding), sliding-window models (Mistral, Qwen2, Gemma 2), GQA/MQA,
static caches; attention sinks (``s_aux``, gpt-oss) and ``softcap`` (Gemma 2), which SDPA
lacks, match "eager".

How a call is served
--------------------
The mask is transformers' own ``sdpa_mask`` (who sees whom is decided exactly as for "sdpa"):
None where no mask is needed, else a boolean [B or 1, 1, Q, K]. The attention function then:

- no mask: ``pk.attention``, reading ``is_causal`` as SDPA does (causal when more than one
  query, keys past the queries cut off);
- a boolean mask is analysed once (cached per mask tensor and its version counter) into row
  classes, each checked against the mask bit for bit:
    * per batch row, a contiguous run of query rows that attend, causally and bottom-right
      aligned, to a contiguous range of keys, with one sliding window for the whole call (or
      without causality, to the same range) - run by ``pk.attention`` on slices when every
      batch row has the same ranges (plain batches, sliding windows, static caches), otherwise
      by ``pk.varlen_attention`` over the packed tokens (left / right padding, prefill and
      decode);
    * rows that attend to nothing (left-padded query positions): 0, as SDPA gives;
    * any other row (the query rows of right padding, which see the whole valid prefix; a
      decode row whose valid keys have a gap): exact dense attention over that row's mask;
- anything else (packed sequences, block / chunked / image-token overlays, float or per-head
  masks, position bias) takes the exact dense fallback for the whole call, logged once per
  reason. Never an approximation.

Dropout is refused (polykernels has none): call ``model.eval()`` or set attention_dropout 0.
``path_counts`` counts which path served each call (tests read it).
"""
from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from . import guard_kernels_name

__all__ = ["NAME", "register", "attention_forward", "path_counts"]

NAME = "polykernels"
log = logging.getLogger("polykernels")

# attention calls per path: "attention", "varlen" (main rows), "dense_rows" (calls with rows
# computed densely), "dense" (whole call dense)
path_counts: collections.Counter = collections.Counter()
_plans = None          # torch.utils.weak.WeakTensorKeyDictionary: mask -> (version, plan | None)
_warned: set = set()


def register(name: str = NAME) -> str:
    """Register the attention and mask functions with transformers under ``name`` (default
    "polykernels"); returns the name to pass as ``attn_implementation``. Idempotent.

    Raises ImportError when transformers is missing or too old to have an
    ``AttentionMaskInterface`` (without one, a custom implementation's padding masks are not
    built: padded batches would be silently wrong, so we refuse)."""
    guard_kernels_name()
    try:
        import transformers
    except ImportError as e:
        raise ImportError("polykernels.integrations.transformers needs transformers "
                          "(pip install transformers)") from e
    from transformers import AttentionInterface
    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as e:
        raise ImportError(f"transformers {transformers.__version__} has no AttentionMaskInterface "
                          "(transformers.masking_utils); polykernels needs a newer "
                          "transformers (pip install -U transformers)") from e
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


# -- mask analysis ------------------------------------------------------------------------------

@dataclass
class _Plan:
    causal: bool
    window: tuple            # pk window (left, right)
    uniform: bool            # main rows alike in every batch row: slices, no packing
    has_main: bool
    qa: int = 0              # uniform: main query rows qa:qb, keys lo:hi
    qb: int = 0
    lo: int = 0
    hi: int = 0
    q_index: tuple = ()      # varlen: (batch, row) of the packed queries, (batch, col) of the keys
    k_index: tuple = ()
    cu_q: Optional[Tensor] = None
    cu_k: Optional[Tensor] = None
    max_q: int = 0
    max_k: int = 0
    extra: tuple = ()        # ((mask batch, rows tensor), ...): rows computed densely
    full: bool = False       # main rows are every row of every batch row: out needs no scatter


def _first_true(x: Tensor) -> Tensor:
    """Index of the first True along the last dim (0 where none)."""
    return x.to(torch.uint8).argmax(-1)


def _run_from(cand: Tensor, start: Tensor) -> Tensor:
    """The contiguous run of True in cand [B, Q] beginning at start [B] (empty where cand is
    False there)."""
    nq = cand.shape[-1]
    ar = torch.arange(nq, device=cand.device)
    after = (ar >= start[:, None])
    breaks = after & ~cand
    end = torch.where(breaks.any(-1), _first_true(breaks), nq)
    return after & (ar < end[:, None])


def _model(m: Tensor, rows: Tensor, s: Tensor, e: Tensor, contiguous: Tensor, causal: bool):
    """Main rows of one model (causal band or full range) and the mask it reconstructs."""
    nb, nq, nk = m.shape
    dev = m.device
    ar_q = torch.arange(nq, device=dev)
    ar_k = torch.arange(nk, device=dev)
    has = rows.any(-1)
    first_row = _first_true(rows)
    pick = lambda x: x.gather(1, first_row[:, None])[:, 0]   # noqa: E731 - value at first valid row
    if causal:
        off = pick(e) - first_row                                     # diagonal: key i + off
        cand = rows & contiguous & (e - ar_q == off[:, None])
    else:
        cand = rows & contiguous & (s == pick(s)[:, None]) & (e == pick(e)[:, None])
    main = _run_from(cand, first_row) & has[:, None]
    qlen = main.sum(-1)
    qa = torch.where(qlen > 0, _first_true(main), 0)
    qb = qa + qlen
    big = torch.full_like(s, nk)
    lo = torch.where(qlen > 0, torch.where(main, s, big).min(-1).values, 0)
    hi = torch.where(qlen > 0, torch.where(main, e, -1).max(-1).values + 1, 0)
    j = ar_k[None, None, :]
    recon = main[:, :, None] & (j >= lo[:, None, None]) & (j < hi[:, None, None])
    left = -1
    if causal:
        diag = ar_q[None, :] + (hi - qb)[:, None]                     # bottom-right alignment
        windowed = main & (s > lo[:, None])
        if bool(windowed.any()):
            left = int((diag - s)[windowed].max())
        recon &= j <= diag[:, :, None]
        if left >= 0:
            recon &= j >= (diag - left)[:, :, None]
    return main, qa, qb, lo, hi, left, recon


def _analyse(mask: Tensor) -> Optional[_Plan]:
    """A plan equal to the boolean mask [B, 1, Q, K] on every element, or None."""
    m = mask[:, 0]
    if m.shape[0] > 1 and mask.stride(0) == 0:
        m = m[:1]
    nb, nq, nk = m.shape
    rows = m.any(-1)                                      # rows that attend to something
    count = m.sum(-1)
    s = _first_true(m)
    e = nk - 1 - _first_true(m.flip(-1))
    contiguous = rows & (count == e - s + 1)
    best = None
    for causal in (False, True):
        main, qa, qb, lo, hi, left, recon = _model(m, rows, s, e, contiguous, causal)
        if not torch.equal(recon, m & main[:, :, None]):
            continue
        n = int(main.sum())
        if best is None or n > best[0]:
            best = (n, causal, main, qa, qb, lo, hi, left)
    if best is None:
        return None
    n, causal, main, qa, qb, lo, hi, left = best
    window = (left, 0) if (causal and left >= 0) else (-1, -1)
    extra_rows = rows & ~main
    extra = tuple((bi, extra_rows[bi].nonzero()[:, 0]) for bi in range(nb) if bool(extra_rows[bi].any()))
    qa_l, qb_l, lo_l, hi_l = qa.tolist(), qb.tolist(), lo.tolist(), hi.tolist()
    if nb == 1 or (len(set(qa_l)) == 1 and len(set(qb_l)) == 1 and len(set(lo_l)) == 1
                   and len(set(hi_l)) == 1):
        full = not extra and qa_l[0] == 0 and qb_l[0] == nq
        return _Plan(causal, window, True, n > 0, qa_l[0], qb_l[0], lo_l[0], hi_l[0],
                     extra=extra, full=full)
    ar_k = torch.arange(nk, device=m.device)
    in_keys = (ar_k >= lo[:, None]) & (ar_k < hi[:, None])
    zero = torch.zeros(1, dtype=torch.int32, device=m.device)
    qlen, klen = qb - qa, hi - lo
    return _Plan(causal, window, False, n > 0,
                 q_index=main.nonzero(as_tuple=True), k_index=in_keys.nonzero(as_tuple=True),
                 cu_q=torch.cat([zero, qlen.cumsum(0).to(torch.int32)]),
                 cu_k=torch.cat([zero, klen.cumsum(0).to(torch.int32)]),
                 max_q=int(qlen.max()), max_k=int(klen.max()), extra=extra)


def _plan_for(mask: Tensor) -> Optional[_Plan]:
    global _plans
    if _plans is None:
        from torch.utils.weak import WeakTensorKeyDictionary
        _plans = WeakTensorKeyDictionary()
    hit = _plans.get(mask)
    if hit is not None and hit[0] == mask._version:
        return hit[1]
    plan = _analyse(mask)
    _plans[mask] = (mask._version, plan)
    return plan


# -- attention ----------------------------------------------------------------------------------

def attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                      attention_mask: Optional[Tensor], dropout: float = 0.0,
                      scaling: Optional[float] = None, is_causal: Optional[bool] = None,
                      softcap: Optional[float] = None, s_aux: Optional[Tensor] = None,
                      sliding_window: Optional[int] = None, position_bias: Optional[Tensor] = None,
                      **kwargs):
    """transformers' attention-function interface: query [B, Hq, Q, D], key/value
    [B, Hkv, K, D], attention_mask from ``sdpa_mask`` (or None). Returns
    (out [B, Q, Hq, D], None). ``sliding_window`` is already in the mask (as for SDPA)."""
    import polykernels as pk
    if dropout:
        raise NotImplementedError(
            f"polykernels attention has no dropout (got dropout={dropout}): call model.eval() for "
            "inference, or set the config's attention_dropout to 0")
    if kwargs.get("output_attentions", False) and "output_attentions" not in _warned:
        _warned.add("output_attentions")
        log.warning("polykernels attention does not return attention weights (output_attentions)")
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    softcap = float(softcap) if softcap else 0.0
    sinks = s_aux
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)   # [B, S, H, D]
    b, nq, hq, d = q.shape
    nk = k.shape[1]
    mask = attention_mask
    reason = None
    if position_bias is not None:
        reason = "position_bias"
    elif value.shape[-1] != d or query.shape[1] % key.shape[1]:
        reason = f"head dims {d}/{value.shape[-1]} or heads {query.shape[1]}/{key.shape[1]}"
    elif mask is not None and (not isinstance(mask, Tensor) or mask.dtype != torch.bool
                               or mask.dim() != 4 or mask.shape[1] != 1
                               or tuple(mask.shape[-2:]) != (nq, nk) or mask.shape[0] not in (1, b)):
        reason = "a mask that is not a boolean [B, 1, Q, K] tensor"
    kw = dict(softmax_scale=scale, softcap=softcap, sinks=sinks)
    if reason is None and mask is None:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        causal = bool(causal) and nq > 1
        if causal and nk > nq:        # as SDPA: its top-left causal mask on the first nq keys
            k, v = k[:, :nq], v[:, :nq]
        path_counts["attention"] += 1
        return pk.attention(q, k, v, causal=causal, **kw), None
    plan = _plan_for(mask) if reason is None else None
    if reason is None and plan is None:
        reason = "a mask pattern other than padding + causal / sliding window"
    if reason is not None:
        path_counts["dense"] += 1
        if reason not in _warned:
            _warned.add(reason)
            log.warning("polykernels attention for transformers: %s; such calls run an exact dense "
                        "fallback (logged once)", reason)
        return _dense(module, query, key, value, mask, scale, softcap, sinks, position_bias,
                      is_causal, **kwargs), None

    if plan.uniform:
        main = None
        if plan.has_main:
            path_counts["attention"] += 1
            main = pk.attention(q[:, plan.qa:plan.qb], k[:, plan.lo:plan.hi], v[:, plan.lo:plan.hi],
                                causal=plan.causal, window=plan.window, **kw)
            if plan.full:
                return main, None
        out = q.new_zeros(b, nq, hq, d)
        if main is not None:
            out[:, plan.qa:plan.qb] = main
    else:
        path_counts["varlen"] += 1
        main = pk.varlen_attention(q[plan.q_index], k[plan.k_index], v[plan.k_index], plan.cu_q,
                                   plan.cu_k, plan.max_q, plan.max_k, causal=plan.causal,
                                   window=plan.window, **kw)
        out = q.new_zeros(b, nq, hq, d)
        out[plan.q_index] = main
    if plan.extra:
        path_counts["dense_rows"] += 1
        for mb, rows in plan.extra:
            for bi in (range(b) if mask.shape[0] == 1 else (mb,)):
                out[bi, rows] = _dense(module, query[bi:bi + 1, :, rows], key[bi:bi + 1],
                                       value[bi:bi + 1], mask[mb:mb + 1, :, rows], scale, softcap,
                                       sinks, None, False)[0]
    return out, None


def _dense(module, query, key, value, mask, scale, softcap, sinks, position_bias, is_causal,
           **kwargs) -> Tensor:
    """Exact attention for any mask: fp32 scores, the mask (boolean or additive), softcap,
    sinks; a row that sees nothing gives 0 (as SDPA). Layout in [B, H, S, D], out [B, Q, Hq, D]."""
    if position_bias is not None:
        if softcap or sinks is not None:
            raise NotImplementedError("polykernels attention: position_bias with softcap or sinks")
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, mask, scaling=scale,
                                      is_causal=is_causal, position_bias=position_bias, **kwargs)[0]
    rep = query.shape[1] // key.shape[1]
    k = key.float().repeat_interleave(rep, 1) if rep > 1 else key.float()
    v = value.float().repeat_interleave(rep, 1) if rep > 1 else value.float()
    s = torch.matmul(query.float(), k.transpose(-1, -2)) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    nq, nk = s.shape[-2:]
    if mask is None:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        if causal and nq > 1:                  # SDPA's is_causal: top-left
            mask = torch.ones(nq, nk, dtype=torch.bool, device=s.device).tril()
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.float()
    if sinks is not None:
        sink = sinks.float().view(1, -1, 1, 1).expand(s.shape[0], -1, nq, 1)
        s = torch.cat([s, sink], -1)
    p = torch.softmax(s, -1).nan_to_num(0.0)
    if sinks is not None:
        p = p[..., :-1]
    out = torch.matmul(p, v).to(query.dtype)
    return out.transpose(1, 2).contiguous()
