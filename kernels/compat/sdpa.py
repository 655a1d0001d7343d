"""``pk.sdpa``: ``torch.nn.functional.scaled_dot_product_attention``'s signature, layout and
semantics on ``pk.attention``.

    # out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = pk.sdpa(q, k, v, is_causal=True)          # q/k/v [batch, heads, seqlen, head_dim]

Imported by ``import polykernels`` (cheap: torch only).
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.attention import attention
from ..ops.checks import real

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256


def sdpa(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
         dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
         enable_gqa: bool = False) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` on polykernels' attention.

    query [..., heads_q, L, E], key [..., heads_k, S, E], value [..., heads_k, S, Ev] (torch's
    layout; leading dims broadcast as in torch; any strides, no copy of K/V for the usual 4-D
    call). Returns [..., heads_q, L, Ev] in query's dtype, differentiable; it is a transposed
    view of a ``[batch, L, heads, Ev]`` buffer (``out.transpose(1, 2)`` is contiguous), as
    torch's own flash kernels return on GPUs.

    Semantics are torch's:

    - ``is_causal=True`` is torch's **top-left** aligned mask (query i sees keys j <= i), not
      polykernels' / flash-attn's bottom-right one. They agree when L == S; for L < S the keys
      j >= L are dropped (a view) and the call is causal, for L > S it is the window
      (-1, L - S).
    - ``attn_mask``: boolean (True = attend) or additive float (query's dtype, or any float
      dtype torch accepts), broadcastable to [..., heads, L, S]. A mask that is the same band
      for every batch and head, i.e. a causal (either alignment) or sliding-window pattern,
      possibly over a sub-range of rows and keys, runs on polykernels' kernels with the
      matching window; float masks qualify when every value is 0 or -inf (or the mask dtype's
      ``torch.finfo(...).min`` where every row keeps a 0 entry: such a key's weight is then
      exactly 0, as in torch). Finding that out reads the mask (a device sync on GPUs). Any
      other mask (padding masks that differ per batch, ALiBi-like biases, masks that need a
      gradient, masks under ``torch.compile``) is computed by
      ``torch.nn.functional.scaled_dot_product_attention`` itself, as are inputs outside the
      kernels' range (fp64, head dims above 256). A query row that sees no key gives 0, as in
      torch.
    - ``attn_mask`` together with ``is_causal=True`` raises ValueError (torch documents it as
      an error). ``dropout_p`` must be 0.0. ``scale`` defaults to 1/sqrt(E).
    - Different head counts need ``enable_gqa=True`` (heads_q % heads_k == 0, query head h
      uses key head h // (heads_q // heads_k)); without it a head count of 1 broadcasts, any
      other mismatch raises ValueError, as torch.
    """
    if (isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real)
            or float(dropout_p) != 0.0):
        raise ValueError(f"dropout_p: only 0.0 is supported (polykernels has no dropout), got "
                         f"{dropout_p!r}")
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal: expected bool, got {type(is_causal).__name__}")
    if not isinstance(enable_gqa, bool):
        raise TypeError(f"enable_gqa: expected bool, got {type(enable_gqa).__name__}")
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name}: expected [..., seqlen, head_dim] (at least 2 dims), got "
                             f"shape {tuple(t.shape)}")
    for name, t in (("key", key), ("value", value)):
        if t.dtype != query.dtype:
            raise TypeError(f"{name}: expected dtype {query.dtype} (that of query), got {t.dtype}")
        if t.device != query.device:
            raise ValueError(f"{name}: expected device {query.device} (that of query), got "
                             f"{t.device}")
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(f"key: head_dim {key.shape[-1]} must match query's ({query.shape[-1]})")
    if value.shape[-2] != key.shape[-2]:
        raise ValueError(f"value: seqlen {value.shape[-2]} must match key's ({key.shape[-2]})")
    if scale is not None:
        scale = real(scale, "scale", "a finite float or None")
    if attn_mask is not None and is_causal:
        raise ValueError("attn_mask: must be None when is_causal=True (torch documents the two "
                         "together as an error)")
    if attn_mask is not None and not isinstance(attn_mask, Tensor):
        raise TypeError(f"attn_mask: expected a torch.Tensor or None, got "
                        f"{type(attn_mask).__name__}")

    def torch_sdpa():
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask,
                                              dropout_p=0.0, is_causal=is_causal, scale=scale,
                                              enable_gqa=enable_gqa)

    # -- shapes: pad to >= 4 dims, broadcast the batch dims, heads (broadcast or GQA) --------
    ndim = max(query.dim(), key.dim(), value.dim())
    q, k, v = (t.reshape((1,) * (max(ndim, 4) - t.dim()) + tuple(t.shape))
               for t in (query, key, value))
    try:
        batch_shape = torch.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
    except RuntimeError:
        raise ValueError(f"query, key, value: batch dims {tuple(q.shape[:-3])}, "
                         f"{tuple(k.shape[:-3])}, {tuple(v.shape[:-3])} do not broadcast") from None
    hq, hk, hv = q.shape[-3], k.shape[-3], v.shape[-3]
    if enable_gqa:
        if hk != hv:
            raise ValueError(f"value: heads ({hv}) must match key's ({hk}) with enable_gqa")
        if hk == 0 or hq % hk:
            raise ValueError(f"key: heads ({hk}) must divide query's ({hq}) with enable_gqa")
        heads = hq
    else:
        heads = max(hq, hk, hv)
        for name, h in (("query", hq), ("key", hk), ("value", hv)):
            if h not in (1, heads):
                raise ValueError(f"{name}: heads ({h}) must match the others ({heads}) or be 1 "
                                 f"(broadcast); pass enable_gqa=True for grouped-query "
                                 f"attention")
    L, S, E, Ev = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    if query.dtype not in _DTYPES or max(E, Ev) > _MAX_HEAD_DIM or min(E, Ev) < 1:
        return torch_sdpa()

    # -- the visible keys: causal (top-left) or a mask's band --------------------------------
    rows, cols, window = (0, L), (0, S), (-1, -1)
    if is_causal:
        if L <= S:
            cols, window = (0, L), (-1, 0)
        else:
            window = (-1, L - S)
    elif attn_mask is not None:
        band = _mask_band(attn_mask, (*batch_shape, heads, L, S))
        if band is None:
            return torch_sdpa()
        rows, cols, window = band

    # -- [batch, seqlen, heads, dim] views for pk.attention -----------------------------------
    def bshd(t, h_to):
        t = t.expand(*batch_shape, *t.shape[-3:])
        if t.shape[-3] != h_to:
            t = t.expand(*t.shape[:-3], h_to, *t.shape[-2:])
        t = t.reshape(-1, *t.shape[-3:])        # a view unless batch dims must be merged
        return t.transpose(1, 2)

    kv_heads = hk if enable_gqa else (1 if hk == hv == 1 else heads)
    qb = bshd(q, heads)[:, rows[0]:rows[1]]
    kb = bshd(k, kv_heads)[:, cols[0]:cols[1]]
    vb = bshd(v, kv_heads)[:, cols[0]:cols[1]]
    out = attention(qb, kb, vb, causal=False, softmax_scale=scale, window=window)
    if rows != (0, L):   # rows that see no key: 0, as in torch
        out = F.pad(out, (0, 0, 0, 0, rows[0], L - rows[1]))
    out = out.transpose(1, 2).reshape(*batch_shape, heads, L, Ev)
    return out.reshape(out.shape[out.dim() - ndim:]) if ndim < 4 else out


def _mask_band(mask: Tensor, full: tuple):
    """If ``mask`` (broadcast to ``full`` = (..., heads, L, S)) is one band for every batch and
    head: ((row0, row1), (col0, col1), (left, right)) such that restricting queries to rows
    row0:row1 and keys to col0:col1 (every other row and key sees nothing) leaves exactly the
    window (left, right) of docs/design.md (d = i + S' - L' - j, -right <= d <= left, -1
    unbounded). None otherwise (the caller uses torch's SDPA)."""
    if torch.compiler.is_compiling() or mask.requires_grad or mask.dim() < 1:
        return None
    if mask.device.type == "meta" or type(mask).__name__ == "FakeTensor":
        return None
    try:
        if torch.broadcast_shapes(mask.shape, full) != torch.Size(full):
            return None
    except RuntimeError:
        return None
    L, S = full[-2:]
    m = mask.reshape((1,) * max(0, 2 - mask.dim()) + tuple(mask.shape))
    if mask.dtype == torch.bool:
        visible = m
    elif mask.is_floating_point():
        zero = m == 0
        masked = torch.isneginf(m)
        low = m == torch.finfo(mask.dtype).min
        if bool(low.any()):   # exactly 0 weight only where every row keeps a visible key
            if not bool(zero.expand(*m.shape[:-2], L, S).any(-1).all()):
                return None
            masked = masked | low
        if not bool((zero | masked).all()):
            return None
        visible = zero
    else:
        return None
    flat = visible.reshape(-1, *visible.shape[-2:])
    if flat.shape[0] > 1 and not bool((flat == flat[:1]).all()):
        return None   # differs per batch / head
    vis = flat[0].expand(L, S)
    if L == 0 or S == 0:
        return (0, L), (0, S), (-1, -1)
    row_any, col_any = vis.any(1), vis.any(0)
    if not bool(col_any.any()):
        return (0, 0), (0, 0), (-1, -1)          # nothing visible: every row gives 0
    r = torch.nonzero(row_any).flatten()
    c = torch.nonzero(col_any).flatten()
    r0, r1, c0, c1 = int(r[0]), int(r[-1]) + 1, int(c[0]), int(c[-1]) + 1
    box = vis[r0:r1, c0:c1]
    lq, sk = r1 - r0, c1 - c0
    d = (torch.arange(lq, device=vis.device)[:, None] + (sk - lq)
         - torch.arange(sk, device=vis.device)[None, :])
    left_need = int(d[box].max())
    right_need = int((-d)[box].max())
    if left_need < 0 or right_need < 0:
        return None
    left = -1 if left_need >= sk - 1 else left_need
    right = -1 if right_need >= lq - 1 else right_need
    band = torch.ones_like(box)
    if left >= 0:
        band &= d <= left
    if right >= 0:
        band &= d >= -right
    if not torch.equal(band, box):
        return None
    return (r0, r1), (c0, c1), (left, right)
