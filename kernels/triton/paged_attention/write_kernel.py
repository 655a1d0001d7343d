"""write_kv_cache: scatter new keys/values into the paged caches."""
import triton
import triton.language as tl


@triton.jit
def _round_to_e4m3(x, MIN_EXP: tl.constexpr):
    """x (fp32, within the fp8 range) rounded to nearest-even on the e4m3 grid (3 mantissa
    bits, exponents below MIN_EXP subnormal), so the following cast to fp8 is exact.

    Interpreter work-around only: its fp32/fp16 -> fp8 cast drops the carry into the exponent
    and misrounds (-7.99 -> -4, 0.49 -> 0.25; measured with Triton 3.9, both e4m3 variants).
    GPU casts are correct hardware RNE, so compiled kernels never take this path."""
    a = tl.abs(x)
    e = tl.maximum(((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, MIN_EXP)
    ulp = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)
    r = ((a / ulp + 8388608.0) - 8388608.0) * ulp  # + 2^23: fp32 addition rounds to nearest even
    return tl.where(x < 0, -r, r)


@triton.jit
def write_kv_kernel(
    K, V, KC, VC, SLOT, KVS,
    inv_k_scale, inv_v_scale, fp8_max,
    heads, head_dim, block_size, num_slots,
    stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd,
    stride_kcb, stride_kct, stride_kch, stride_kcd,
    stride_vcb, stride_vct, stride_vch, stride_vcd,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, QUANT: tl.constexpr,
    ROUND_FP8: tl.constexpr, FP8_MIN_EXP: tl.constexpr, HAS_KV_SCALES: tl.constexpr,
):
    """One program per (new token, BLOCK_H heads): ``slot = block * block_size + offset``;
    slot < 0 is padding and writes nothing; so does a slot >= num_slots (a wrong index
    value: never written out of bounds; see docs/dispatch.md for what that leaves). QUANT (fp8 caches) stores value * inv_scale (= value / scale),
    clamped to the fp8
    range (fp8_max) and rounded to the cache dtype. HAS_KV_SCALES: KVS, contiguous fp32
    [2, heads], divides each head's values further (per-KV-head scales)."""
    t = tl.program_id(0)
    h0 = tl.program_id(1) * BLOCK_H
    slot = tl.load(SLOT + t).to(tl.int64)
    if (slot < 0) | (slot >= num_slots):
        return
    blk = slot // block_size
    off = slot % block_size
    h = h0 + tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    ok = (h < heads)[:, None] & (d < head_dim)[None, :]
    k = tl.load(K + t.to(tl.int64) * stride_kt + h[:, None] * stride_kh + d[None, :] * stride_kd, mask=ok)
    v = tl.load(V + t.to(tl.int64) * stride_vt + h[:, None] * stride_vh + d[None, :] * stride_vd, mask=ok)
    if QUANT:
        # Saturate explicitly: e4m3 has no inf, and targets differ on out-of-range casts.
        k = k.to(tl.float32) * inv_k_scale
        v = v.to(tl.float32) * inv_v_scale
        if HAS_KV_SCALES:
            k = k / tl.load(KVS + h, mask=h < heads, other=1.0)[:, None]
            v = v / tl.load(KVS + heads + h, mask=h < heads, other=1.0)[:, None]
        k = tl.minimum(tl.maximum(k, -fp8_max), fp8_max)
        v = tl.minimum(tl.maximum(v, -fp8_max), fp8_max)
        if ROUND_FP8:
            k = _round_to_e4m3(k, FP8_MIN_EXP)
            v = _round_to_e4m3(v, FP8_MIN_EXP)
    tl.store(KC + blk * stride_kcb + off * stride_kct + h[:, None] * stride_kch + d[None, :] * stride_kcd,
             k.to(KC.dtype.element_ty), mask=ok)
    tl.store(VC + blk * stride_vcb + off * stride_vct + h[:, None] * stride_vch + d[None, :] * stride_vcd,
             v.to(VC.dtype.element_ty), mask=ok)
