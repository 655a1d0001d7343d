"""Launchers: validate nothing the public layer already checked, allocate, pick a config, launch.

Dense tensors are [batch, seqlen, heads, head_dim]; varlen tensors are [total, heads,
head_dim] with int32/int64 ``cu_seqlens`` of length batch+1 (treated as batch stride 0 and a
per-sequence start). lse / delta are fp32 [batch, heads, Sq] (varlen [heads, total_q]).
"""
from __future__ import annotations

import torch
import triton

from ..common import dot_in_fp32, interpreting
from ..config import KernelConfig
from .backward import attn_bwd_delta_kernel, attn_bwd_dkdv_kernel, attn_bwd_dq_kernel
from .forward import attn_fwd_kernel

# "Unbounded" window side. Large enough to cover any sequence, small enough that
# row + diag +/- UNBOUNDED stays inside int32 for sequences up to ~1e9 tokens.
UNBOUNDED = 1 << 30

# Small tiles under the interpreter: cost grows with tile area and sequences are short, and
# several blocks per sequence exercise the block-boundary and block-skipping logic.
_INTERPRETER_CONFIG = KernelConfig(block_m=32, block_n=32, num_warps=4, num_stages=1)


def effective_window(causal: bool, window_left: int, window_right: int) -> tuple[int, int]:
    """(left, right) as kernel ints: causal caps the right side at 0; -1 becomes UNBOUNDED."""
    left = UNBOUNDED if window_left < 0 else int(window_left)
    right = UNBOUNDED if window_right < 0 else int(window_right)
    if causal:
        right = min(right, 0)
    return left, right


def _configs(kind: str, head_dim: int, dtype: torch.dtype, device: torch.device,
             features: bool, **extra) -> list[KernelConfig]:
    """Vendor candidates; ``features``: softcap, ALiBi or varlen (more registers live);
    ``extra``: the forward's ``masked`` (causal or window: its hidden-NaN-V guard)."""
    if interpreting() or device.type != "cuda":
        return [_INTERPRETER_CONFIG]
    if torch.version.hip:
        from . import configs_amd as cfg
        arch = torch.cuda.get_device_properties(device).gcnArchName.split(":")[0]
        return getattr(cfg, f"{kind}_configs")(head_dim, dtype, arch, features, **extra)
    from . import configs_nvidia as cfg
    return getattr(cfg, f"{kind}_configs")(head_dim, dtype, torch.cuda.get_device_capability(device),
                                           features, **extra)


def _pick(kind: str, kernel, bucket: tuple, candidates: list[KernelConfig], launch) -> KernelConfig:
    """Autotuned choice when the shared autotune cache exists, else the vendor default."""
    if len(candidates) == 1:
        return candidates[0]
    try:
        from ..autotune import pick_config
    except ImportError:
        return candidates[0]

    def bench(cfg):
        return triton.testing.do_bench(lambda: launch(cfg), warmup=5, rep=20)

    return pick_config(f"flash_attention.{kind}", kernel, bucket, candidates, bench)


def _strides(t: torch.Tensor, varlen: bool) -> tuple[int, int, int, int]:
    return (0, *t.stride()) if varlen else tuple(t.stride())


def _alibi_args(alibi, dummy):
    if alibi is None:
        return dummy, 0, 0
    if alibi.dim() == 1:
        return alibi, 0, alibi.stride(0)
    return alibi, alibi.stride(0), alibi.stride(1)


def _bucket(*parts):
    return tuple(parts)


def _common_meta(q, softcap, alibi):
    d = q.shape[-1]
    return dict(HEAD_DIM=d, BLOCK_D=_block_d(d),
                HAS_SOFTCAP=softcap > 0.0, HAS_ALIBI=alibi is not None,
                DOT_FP32=dot_in_fp32(q.dtype), PREC="ieee" if q.dtype == torch.float32 else None)


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _check_own(name: str, t: torch.Tensor, shape, dtype) -> None:
    """Buffers the kernels write by computed offsets must be contiguous and exactly shaped."""
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype or not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous {dtype} tensor of shape {tuple(shape)}, "
                         f"got {t.dtype} {tuple(t.shape)} strides {t.stride()}")


def _cu_args(cu_seqlens_q, cu_seqlens_k):
    """cu_seqlens as the kernels read them: contiguous (they index without a stride; strided
    views are copied, tiny), int32 or int64 as given (an int64 -> int32 cast on the way could
    wrap an out-of-range value into a plausible one; the kernels clamp either width). Only
    the lengths are checked here: the values are the kernels' business (no host sync)."""
    if cu_seqlens_k.numel() != cu_seqlens_q.numel():
        raise ValueError(f"cu_seqlens_k has {cu_seqlens_k.numel()} entries, cu_seqlens_q "
                         f"{cu_seqlens_q.numel()}: they must match (batch + 1)")
    return tuple((c if c.dtype in (torch.int32, torch.int64) else c.to(torch.int32)).contiguous()
                 for c in (cu_seqlens_q, cu_seqlens_k))


def forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale,
            window_left, window_right, softcap, alibi_slopes, out=None, lse=None, sinks=None):
    """Flash attention forward. Dense when ``cu_seqlens_q`` is None. ``sinks``: fp32 [Hq]
    attention sinks or None (the backward needs nothing more: it recomputes P from lse,
    which includes them).

    Returns (out like q, lse fp32). ``out``/``lse`` may be preallocated (tests poison them).
    """
    varlen = cu_seqlens_q is not None
    if varlen:
        batch = cu_seqlens_q.numel() - 1
        # Varlen kernels read lengths from cu_seqlens; the length arguments carry the totals
        # (the row stride of the [heads, total_q] lse).
        sq_arg, sk_arg = q.shape[0], k.shape[0]
        cu_q, cu_k = _cu_args(cu_seqlens_q, cu_seqlens_k)
        total_q, hq, d = q.shape
        lse_shape = (hq, total_q)
    else:
        batch, sq_arg, hq, d = q.shape
        sk_arg = k.shape[1]
        max_seqlen_q, max_seqlen_k = sq_arg, sk_arg
        cu_q = cu_k = q  # unused pointer
        lse_shape = (batch, hq, sq_arg)
    group = hq // k.shape[-2]
    dv = v.shape[-1]   # may differ from d (MLA-style): out takes V's head dim
    out_shape = (*q.shape[:-1], dv)
    if out is None:
        out = torch.empty(out_shape, dtype=q.dtype, device=q.device)
    if lse is None:
        lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
    _check_own("out", out, out_shape, q.dtype)
    _check_own("lse", lse, lse_shape, torch.float32)
    if varlen and q.shape[0] > 0 and max_seqlen_q <= 0:
        # query tokens, but no sequence may hold one: max_seqlen_q contradicts the shapes
        # (known on the host, no sync), and a grid sized from it has no program to say so
        lse.fill_(float("nan"))
        return out.fill_(float("nan")), lse
    if q.numel() == 0 or max_seqlen_q == 0:   # no query rows
        lse.fill_(float("-inf"))
        return out.zero_(), lse
    sinks = sinks.to(torch.float32).contiguous() if sinks is not None else None
    left, right = effective_window(causal, window_left, window_right)
    alibi, sab, sah = _alibi_args(alibi_slopes, q)
    meta = _common_meta(q, softcap, alibi_slopes)
    features = varlen or softcap > 0.0 or alibi_slopes is not None
    masked = left < UNBOUNDED or right < UNBOUNDED   # some keys hidden from some rows only
    args = (q, k, v, out, lse, cu_q, cu_k, alibi, sinks if sinks is not None else lse,
            *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), sab, sah,
            sq_arg, sk_arg, max_seqlen_q, max_seqlen_k, group, float(softmax_scale), float(softcap),
            left, right)

    def launch(cfg: KernelConfig):
        grid = (triton.cdiv(max_seqlen_q, cfg.block_m), batch, hq)
        attn_fwd_kernel[grid](*args, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, IS_VARLEN=varlen,
                              HAS_SINKS=sinks is not None, HEAD_DIM_V=dv, BLOCK_DV=_block_d(dv),
                              MASKED=masked,
                              **meta, **cfg.launch_options())

    bucket = _bucket(str(q.dtype), d, dv, causal, left < UNBOUNDED, right < UNBOUNDED, softcap > 0,
                     alibi_slopes is not None, varlen, group,
                     triton.next_power_of_2(max(max_seqlen_q, 1)), triton.next_power_of_2(max(max_seqlen_k, 1)))
    # configs are tuned per head dim; with d != dv the larger one bounds the tile sizes
    launch(_pick("fwd", attn_fwd_kernel, bucket, _configs("fwd", max(d, dv), q.dtype, q.device, features,
                                                          masked=masked),
                 launch))
    return out, lse


def backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
             softmax_scale, window_left, window_right, softcap, alibi_slopes, dq=None, dk=None, dv=None,
             dlse=None):
    """Flash attention backward. Returns (dq, dk, dv) shaped and typed like q, k, v.

    ``dlse`` (lse's shape, or None) is the gradient flowing into the returned lse. Since
    d lse_i / d s_ij = P_ij, it enters as dS = P * (dP - (delta - dlse)): it is folded into
    delta = rowsum(dO * O) after the pre-pass, so the main kernels are unchanged."""
    varlen = cu_seqlens_q is not None
    if varlen:
        batch = cu_seqlens_q.numel() - 1
        sq_arg, sk_arg = q.shape[0], k.shape[0]  # totals, as in forward()
        cu_q, cu_k = _cu_args(cu_seqlens_q, cu_seqlens_k)
        hq, d = q.shape[1], q.shape[2]
    else:
        batch, sq_arg, hq, d = q.shape
        sk_arg = k.shape[1]
        max_seqlen_q, max_seqlen_k = sq_arg, sk_arg
        cu_q = cu_k = q
    hk = k.shape[-2]
    group = hq // hk
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device) if dq is None else dq
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device) if dk is None else dk
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device) if dv is None else dv
    for name, g, t in (("dq", dq, q), ("dk", dk, k), ("dv", dv, v)):
        _check_own(name, g, t.shape, t.dtype)
    if q.numel() == 0 or k.numel() == 0 or max_seqlen_q == 0 or max_seqlen_k == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    lse = lse.contiguous()
    delta = torch.empty_like(lse)
    left, right = effective_window(causal, window_left, window_right)
    alibi, sab, sah = _alibi_args(alibi_slopes, q)
    meta = _common_meta(q, softcap, alibi_slopes)
    features = varlen or softcap > 0.0 or alibi_slopes is not None

    block_d = meta["BLOCK_D"]
    delta_bm = 32 if interpreting() else max(16, min(128, 8192 // block_d))
    attn_bwd_delta_kernel[(triton.cdiv(max_seqlen_q, delta_bm), batch, hq)](
        out, dout, delta, cu_q, *_strides(out, varlen), *_strides(dout, varlen), sq_arg,
        HEAD_DIM=d, BLOCK_D=block_d, BLOCK_M=delta_bm, IS_VARLEN=varlen)
    if dlse is not None:
        delta -= dlse

    tail = (sab, sah, sq_arg, sk_arg, group, float(softmax_scale), float(softcap), left, right)
    qkv_do = (*_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(dout, varlen))
    dkdv_args = (q, k, v, dout, lse, delta, dk, dv, cu_q, cu_k, alibi,
                 *qkv_do, *tail)
    dq_args = (q, k, v, dout, lse, delta, dq, cu_q, cu_k, alibi, *qkv_do, *tail)

    def launch_dkdv(cfg):
        grid = (triton.cdiv(max_seqlen_k, cfg.block_n), batch, hk)
        attn_bwd_dkdv_kernel[grid](*dkdv_args, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                                   IS_VARLEN=varlen, **meta, **cfg.launch_options())

    def launch_dq(cfg):
        grid = (triton.cdiv(max_seqlen_q, cfg.block_m), batch, hq)
        attn_bwd_dq_kernel[grid](*dq_args, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                                 IS_VARLEN=varlen, **meta, **cfg.launch_options())

    bucket = _bucket(str(q.dtype), d, causal, left < UNBOUNDED, right < UNBOUNDED, softcap > 0,
                     alibi_slopes is not None, varlen, group,
                     triton.next_power_of_2(max(max_seqlen_q, 1)), triton.next_power_of_2(max(max_seqlen_k, 1)))
    launch_dkdv(_pick("bwd_dkdv", attn_bwd_dkdv_kernel, bucket, _configs("bwd_dkdv", d, q.dtype, q.device, features),
                      launch_dkdv))
    launch_dq(_pick("bwd_dq", attn_bwd_dq_kernel, bucket, _configs("bwd_dq", d, q.dtype, q.device, features), launch_dq))
    return dq, dk, dv
