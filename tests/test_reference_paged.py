"""Paged decode, KV-cache writes and state merging in the reference, against oracles written here.

Paged layout (docs/design.md / reference/paged_ref.py docstring): token p of sequence s lives at
block_table[s, p // block_size], offset p % block_size; the q_len queries are the last q_len
positions, attending causally (bottom-right) with any window on top. fp8 caches store
value / scale. The gather below walks the tokens one by one; attention uses the fp64 oracle of
test_reference_attention (it shares no code with the library).
"""
from __future__ import annotations

import pytest
import torch

from polykernels import reference as ref
from test_reference_attention import assert_close, naive_attention

FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)


def naive_gather(cache, table_row, seq_len, scale=1.0):
    """[seq_len, Hkv, D] fp64, token by token."""
    bs = cache.shape[1]
    rows = []
    for p in range(seq_len):
        blk = int(table_row[p // bs])
        rows.append(cache[blk, p % bs].to(torch.float64) * scale)
    return torch.stack(rows)


def make_cache(seq_lens, bs, hkv, d, dtype, shared=False):
    """Blocks assigned in a shuffled order (plus spare blocks filled with NaN that no
    sequence owns); ``shared``: every sequence's first block is block_table[0, 0]."""
    need = [(n + bs - 1) // bs for n in seq_lens]
    total = sum(need) + 3
    perm = torch.randperm(total)
    k_cache = torch.randn(total, bs, hkv, d).to(dtype)
    v_cache = torch.randn(total, bs, hkv, d).to(dtype)
    max_blocks = max(need) + 2
    table = torch.full((len(seq_lens), max_blocks), 10_000, dtype=torch.int32)  # unused: junk
    pos = 0
    for s, nb in enumerate(need):
        table[s, :nb] = perm[pos:pos + nb].to(torch.int32)
        pos += nb
        if shared and s > 0 and nb > 0:
            table[s, 0] = table[0, 0]
    for blk in perm[pos:].tolist():   # blocks nobody owns
        k_cache[blk] = float("nan")
        v_cache[blk] = float("nan")
    return k_cache, v_cache, table, torch.tensor(seq_lens, dtype=torch.int32)


CASES = [
    # (seq_lens, q_len, block_size, Hq, Hkv, D, kwargs)
    ([5, 17, 1], 1, 4, 4, 2, 8, {}),
    ([48, 100, 7], 1, 48, 2, 2, 16, {}),              # block size not a power of two
    ([3, 9], 1, 1, 2, 1, 8, {}),                      # block size 1
    ([20, 13], 4, 16, 4, 4, 8, {}),                   # speculative: q_len > 1
    ([33, 8], 3, 16, 4, 2, 12, {"window": (5, -1)}),
    ([27, 12], 2, 8, 2, 2, 8, {"softcap": 2.5, "alibi": "bh"}),
    ([19], 1, 8, 3, 1, 8, {"alibi": "h", "window": (0, 0)}),
]


def _paged_call(q, kc, vc, table, lens, kw, k_scale=1.0, v_scale=1.0):
    d = q.shape[-1]
    return ref.paged_attention(q, kc, vc, table, lens, kw.get("scale", d ** -0.5),
                               *kw.get("window", (-1, -1)), kw.get("softcap", 0.0),
                               kw.get("alibi"), k_scale, v_scale)


def _oracle(q, kc, vc, table, lens, kw, k_scale=1.0, v_scale=1.0):
    outs, lses = [], []
    for s, n in enumerate(lens.tolist()):
        k = naive_gather(kc, table[s], n, k_scale)[None]
        v = naive_gather(vc, table[s], n, v_scale)[None]
        sub = {key: val for key, val in kw.items() if key != "alibi"}
        alibi = kw.get("alibi")
        if alibi is not None:
            sub["alibi"] = alibi[s] if alibi.dim() == 2 else alibi
        o, l = naive_attention(q[s:s + 1].double(), k, v, causal=True, **sub)
        outs.append(o[0])
        lses.append(l[0])
    return torch.stack(outs), torch.stack(lses)


@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-q{c[1]}-bs{c[2]}-{sorted(c[6])}")
def test_paged_fp32(case, shared):
    lens, q_len, bs, hq, hkv, d, kw = case
    kc, vc, table, seq_lens = make_cache(lens, bs, hkv, d, torch.float32, shared=shared)
    kw = dict(kw)
    if kw.get("alibi") == "h":
        kw["alibi"] = torch.rand(hq)
    elif kw.get("alibi") == "bh":
        kw["alibi"] = torch.rand(len(lens), hq)
    q = torch.randn(len(lens), q_len, hq, d)
    out, lse = _paged_call(q, kc, vc, table, seq_lens, kw)
    assert out.shape == q.shape and lse.shape == (len(lens), hq, q_len)
    want_o, want_l = _oracle(q, kc, vc, table, seq_lens, kw)
    assert_close("out", out, want_o, 1e-5)
    assert_close("lse", lse, want_l, 1e-5 * (1 + want_l[torch.isfinite(want_l)].abs().max().item()))


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_paged_low_precision(dtype):
    kc, vc, table, seq_lens = make_cache([29, 6], 16, 2, 16, dtype)
    q = torch.randn(2, 2, 4, 16, dtype=dtype)
    out, _ = _paged_call(q, kc, vc, table, seq_lens, {})
    assert out.dtype == dtype
    want, _ = _oracle(q, kc, vc, table, seq_lens, {})
    # Baseline: same-dtype attention over the gathered keys.
    base = torch.cat([naive_attention(q[s:s + 1], naive_gather(kc, table[s], n).to(dtype)[None],
                                      naive_gather(vc, table[s], n).to(dtype)[None],
                                      causal=True, dtype=dtype)[0]
                      for s, n in enumerate(seq_lens.tolist())])
    tol = 2 * (base.double() - want).abs().max().item() + 2e-3
    assert_close("out", out, want, tol)


@pytest.mark.parametrize("fp8", FP8)
def test_paged_fp8_cache_with_scales(fp8):
    hkv, d, bs = 2, 8, 16
    kc32, vc32, table, seq_lens = make_cache([21, 40], bs, hkv, d, torch.float32)
    k_scale, v_scale = 0.03, 0.05
    kc, vc = kc32.to(fp8), vc32.to(fp8)   # the stored values; real = stored * scale
    q = torch.randn(2, 1, 4, d)
    out, lse = _paged_call(q, kc, vc, table, seq_lens, {}, k_scale, v_scale)
    want_o, want_l = _oracle(q, kc, vc, table, seq_lens, {}, k_scale, v_scale)
    assert_close("out", out, want_o, 1e-5)
    assert_close("lse", lse, want_l, 1e-5 * (1 + want_l.abs().max().item()))
    # Ignoring the scales would be visibly wrong.
    wrong, _ = _oracle(q, kc, vc, table, seq_lens, {}, 1.0, 1.0)
    assert (wrong - want_o).abs().max() > 1e-3


# -- write_kv_cache -----------------------------------------------------------------------------
@pytest.mark.parametrize("cache_dtype", (torch.float32, torch.bfloat16) + FP8)
@pytest.mark.parametrize("idx_dtype", (torch.int32, torch.int64))
def test_write_kv_cache_padding_and_untouched_slots(cache_dtype, idx_dtype):
    nb, bs, hkv, d = 5, 6, 2, 8
    src_dtype = torch.bfloat16 if cache_dtype == torch.bfloat16 else torch.float32
    k_cache = torch.randn(nb, bs, hkv, d).to(cache_dtype)
    v_cache = torch.randn(nb, bs, hkv, d).to(cache_dtype)
    slots = torch.tensor([7, -1, 0, 29, -1, 13, 18], dtype=idx_dtype)
    k = torch.randn(len(slots), hkv, d, dtype=src_dtype)
    v = torch.randn(len(slots), hkv, d, dtype=src_dtype)
    k_scale, v_scale = (0.5, 0.25) if cache_dtype in FP8 else (1.0, 1.0)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    for t, slot in enumerate(slots.tolist()):
        if slot < 0:
            continue
        for cache, src, sc in ((want_k, k, k_scale), (want_v, v, v_scale)):
            val = src[t].to(torch.float32) / sc
            if cache_dtype in FP8:
                lim = torch.finfo(cache_dtype).max
                val = val.clamp(-lim, lim)
            cache[slot // bs, slot % bs] = val.to(cache_dtype)
    ref.write_kv_cache(k, v, k_cache, v_cache, slots, k_scale, v_scale)
    # Bit-identical everywhere: written slots and every slot the call must not touch.
    for name, got, want in (("k_cache", k_cache, want_k), ("v_cache", v_cache, want_v)):
        g, w = got.view(torch.uint8), want.view(torch.uint8)
        bad = (g != w).nonzero()
        assert bad.numel() == 0, f"{name}: {len(bad)} bytes differ, first at {bad[:3].tolist()}"


def test_write_kv_cache_fp8_saturates():
    cache = torch.zeros(1, 2, 1, 2, dtype=torch.float8_e4m3fn)
    vcache = torch.zeros_like(cache)
    k = torch.tensor([[[1e6, -1e6]]])
    ref.write_kv_cache(k, k, cache, vcache, torch.tensor([1]), 1.0, 1.0)
    assert cache[0, 1, 0].float().tolist() == [448.0, -448.0]
    assert (cache[0, 0].float() == 0).all()


# -- merge_attention_states ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16))
@pytest.mark.parametrize("causal", [False, True])
def test_merge_two_halves_equals_whole(dtype, causal):
    b, sq, sk, h, d = 2, 7, 12, 3, 8
    q = torch.randn(b, sq, h, d, dtype=dtype)
    k = torch.randn(b, sk, h, d, dtype=dtype)
    v = torch.randn(b, sk, h, d, dtype=dtype)
    split = 8
    # Causal with Sq=7, Sk=12: row i sees keys j <= i + 5, so rows 0-2 see nothing of the
    # second half (keys 8-11): their lse_b is -inf.
    kw = {"causal": causal}
    o_a, l_a = naive_attention(q, k[:, :split], v[:, :split], **_shifted(kw, sq, sk, 0, split))
    o_b, l_b = naive_attention(q, k[:, split:], v[:, split:], **_shifted(kw, sq, sk, split, sk))
    whole_o, whole_l = naive_attention(q, k, v, **kw)
    out, lse = ref.merge_attention_states(o_a.to(dtype), l_a.float(), o_b.to(dtype), l_b.float())
    assert out.dtype == dtype and lse.dtype == torch.float32
    tol = {torch.float64: 1e-6, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    assert_close("out", out, whole_o, tol)
    assert_close("lse", lse, whole_l, 1e-5 * 10)
    if causal:
        assert torch.isneginf(l_b).any(), "test should include rows whose second half is empty"


def _shifted(kw, sq, sk, k0, k1):
    """A half's own mask must equal the whole's mask restricted to keys [k0, k1): express
    causal-on-the-whole as a window on the half (d changes by the shift)."""
    if not kw.get("causal"):
        return {}
    # whole: visible iff i + sk - sq - j >= 0, j = k0 + j'. Half (len n = k1 - k0):
    # d' = i + n - sq - j' ; d = d' + (sk - n - k0). Visible iff d' >= -(sk - n - k0).
    return {"window": (-1, sk - (k1 - k0) - k0)}


def test_merge_neg_inf_sides():
    s, h, d = 4, 2, 3
    out_a = torch.randn(s, h, d)
    out_b = torch.randn(s, h, d)
    lse_a = torch.randn(h, s)
    lse_b = torch.randn(h, s)
    lse_a[0, 0] = float("-inf")          # only b
    lse_b[1, 1] = float("-inf")          # only a
    lse_a[0, 2] = lse_b[0, 2] = float("-inf")   # neither
    out_a[0, 0] = float("nan")           # a side with lse -inf must not leak (even NaN)
    out, lse = ref.merge_attention_states(out_a, lse_a, out_b, lse_b)
    assert torch.allclose(out[0, 0], out_b[0, 0]) and lse[0, 0] == lse_b[0, 0]
    assert torch.allclose(out[1, 1], out_a[1, 1]) and lse[1, 1] == lse_a[1, 1]
    assert (out[2, 0] == 0).all() and torch.isneginf(lse[0, 2])
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    # A regular entry: weights exp(lse) / sum.
    wa = torch.exp(lse_a[1, 3].double()) / (torch.exp(lse_a[1, 3].double()) + torch.exp(lse_b[1, 3].double()))
    want = wa * out_a[3, 1].double() + (1 - wa) * out_b[3, 1].double()
    assert torch.allclose(out[3, 1].double(), want, atol=1e-6)
    assert abs(lse[1, 3].item() - torch.logaddexp(lse_a[1, 3], lse_b[1, 3]).item()) < 1e-6
