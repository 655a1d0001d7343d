"""polykernels.compat.flash_attn: flash-attn 2's API on polykernels' ops.

Oracles share no code with the library: ``naive`` below (fp64 math over the visibility rule
of docs/design.md, which is flash-attn 2's), keys gathered from the caches token by token, and
an independent rotary embedding (complex multiplication). Tolerance (docs/testing.md): the
error against the fp64 oracle is at most 2x that of the same attention computed by torch in
the input dtype, plus a per-dtype floor; lse within 1e-3 relative, same -inf pattern. Cache
writes are checked bit for bit, and the rest of each cache must be untouched.
"""
from __future__ import annotations

import math

import pytest
import torch

from polykernels import InvalidInputError
from polykernels.compat import flash_attn as fa

from test_attention_triton_helpers import (assert_close_budget, assert_lse, make_qkv,
                                           torch_same_dtype, visibility)

I32 = torch.int32
DTYPES = [torch.float32, torch.bfloat16]


def naive(q, k, v, causal, scale, window=(-1, -1), softcap=0.0, alibi=None):
    """fp64 (out [B, Sq, Hq, D], lse [B, Hq, Sq]) from the documented rules."""
    q, k, v = q.double(), k.double(), v.double()
    b, sq, hq, d = q.shape
    sk, g = k.shape[1], hq // k.shape[2]
    k, v = k.repeat_interleave(g, 2), v.repeat_interleave(g, 2)
    vis, dist = visibility(sq, sk, causal, *window, q.device)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if alibi is not None:
        sl = (alibi if alibi.dim() == 2 else alibi[None]).double()
        s = s - sl[:, :, None, None] * dist.abs().double()
    s = s.masked_fill(~vis, -math.inf)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", p, v), lse.float()


def check(name, got, q, k, v, causal, scale, window=(-1, -1), softcap=0.0, alibi=None,
          lse=None):
    ref_out, ref_lse = naive(q, k, v, causal, scale, window, softcap, alibi)
    base = torch_same_dtype(q, k, v, causal, scale, *window, softcap, alibi)
    assert got.dtype == q.dtype and got.shape == ref_out.shape
    assert_close_budget(name, got, ref_out, base, 2, q.dtype)
    if lse is not None:
        assert_lse(lse, ref_lse)


# -- flash_attn_func ------------------------------------------------------------------------------

DENSE = [  # b, sq, sk, hq, hk, d, causal, window, softcap, alibi, layout
    (2, 17, 17, 4, 4, 64, False, (-1, -1), 0.0, False, "bshd"),
    (1, 5, 23, 6, 2, 80, True, (-1, -1), 0.0, False, "bhsd"),
    (2, 23, 5, 4, 1, 32, True, (-1, -1), 0.0, False, "strided"),
    (1, 1, 13, 4, 2, 16, True, (-1, -1), 0.0, True, "bshd"),
    (2, 13, 11, 2, 2, 40, False, (3, 2), 5.0, True, "bhsd"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", DENSE, ids=lambda c: "x".join(map(str, c[:6])) + f"-{c[-1]}")
def test_flash_attn_func(case, dtype):
    b, sq, sk, hq, hk, d, causal, window, softcap, use_alibi, layout = case
    q, k, v = make_qkv(b, sq, sk, hq, hk, d, dtype, layout)
    alibi = torch.rand(hq) if use_alibi else None
    out = fa.flash_attn_func(q, k, v, causal=causal, window_size=window, softcap=softcap,
                             alibi_slopes=alibi)
    assert isinstance(out, torch.Tensor)
    check("out", out, q, k, v, causal, d ** -0.5, window, softcap, alibi)
    res = fa.flash_attn_func(q, k, v, 0.0, 0.3, causal, window, softcap, alibi, False, True)
    assert isinstance(res, tuple) and len(res) == 3 and res[2] is None
    assert res[1].shape == (b, hq, sq) and res[1].dtype == torch.float32
    check("out(scale)", res[0], q, k, v, causal, 0.3, window, softcap, alibi, lse=res[1])


def test_flash_attn_normalisation_matches_flash_attn():
    """flash-attn's own argument normalisation: a side >= seqlen_k is unbounded (here the
    right side: without the rule the first rows would see nothing), negative = unbounded,
    causal with one query row is plain attention."""
    q, k, v = make_qkv(1, 6, 2, 2, 2, 16, torch.float32)
    check("right>=sk", fa.flash_attn_func(q, k, v, window_size=(-1, 2)), q, k, v, False,
          0.25, (-1, -1))
    check("negative", fa.flash_attn_func(q, k, v, window_size=(-7, 0)), q, k, v, False, 0.25,
          (-1, 0))
    q1 = q[:, :1]
    a = fa.flash_attn_func(q1, k, v, causal=True)
    check("sq=1", a, q1, k, v, False, 0.25)


def test_flash_attn_func_backward():
    q, k, v = make_qkv(1, 7, 11, 4, 2, 16, torch.float32)
    for t in (q, k, v):
        t.requires_grad_(True)
    out = fa.flash_attn_func(q, k, v, causal=True, window_size=(4, 0))
    g = torch.randn_like(out)
    (out * g).sum().backward()
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    (naive(qd, kd, vd, True, 0.25, (4, 0))[0] * g.double()).sum().backward()
    for name, got, want in (("dq", q.grad, qd.grad), ("dk", k.grad, kd.grad), ("dv", v.grad, vd.grad)):
        assert torch.allclose(got.double(), want, atol=1e-5, rtol=1e-4), name


def test_packed_variants_equal_unpacked():
    qkv = torch.randn(2, 9, 3, 4, 16)
    q, k, v = qkv.unbind(2)
    want = fa.flash_attn_func(q, k, v, causal=True)
    assert torch.equal(fa.flash_attn_qkvpacked_func(qkv, causal=True), want)
    assert torch.equal(fa.flash_attn_kvpacked_func(q, qkv[:, :, 1:], causal=True), want)
    cu = torch.tensor([0, 9, 18], dtype=I32)
    flat = qkv.reshape(18, 3, 4, 16)
    got = fa.flash_attn_varlen_qkvpacked_func(flat, cu, 9, causal=True)
    assert torch.allclose(got, want.reshape(18, 4, 16), atol=1e-6)
    got = fa.flash_attn_varlen_kvpacked_func(flat[:, 0], flat[:, 1:], cu, cu, 9, 9, causal=True)
    assert torch.allclose(got, want.reshape(18, 4, 16), atol=1e-6)


# -- varlen ------------------------------------------------------------------------------------------


def _cu(lens):
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=I32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True])
def test_flash_attn_varlen_func(dtype, causal):
    q_lens, k_lens, hq, hk, d = [5, 0, 17, 1], [9, 3, 17, 4], 4, 2, 32
    q = torch.randn(sum(q_lens), hq, d, dtype=dtype)
    k = torch.randn(2 * sum(k_lens), hk, d, dtype=dtype)[::2]      # non-contiguous
    v = torch.randn(sum(k_lens), hk, d, dtype=dtype)
    cu_q, cu_k = _cu(q_lens), _cu(k_lens)
    out, lse, none = fa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(q_lens), max(k_lens),
                                               causal=causal, return_attn_probs=True)
    assert none is None and out.shape == q.shape and lse.shape == (hq, q.shape[0])
    for b in range(4):
        qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        if q_lens[b]:
            check(f"seq{b}", out[qs][None], q[qs][None], k[ks][None], v[ks][None], causal,
                  d ** -0.5, lse=lse[:, qs][None])
    # seqused_k: only the first seqused_k[b] keys of each sequence
    used = torch.tensor([4, 0, 10, 4], dtype=I32)
    out = fa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(q_lens), max(k_lens),
                                    causal=causal, seqused_k=used)
    for b in range(4):
        qs, k0 = slice(cu_q[b], cu_q[b + 1]), int(cu_k[b])
        ks = slice(k0, k0 + int(used[b]))
        if q_lens[b]:
            check(f"used{b}", out[qs][None], q[qs][None], k[ks][None], v[ks][None], causal,
                  d ** -0.5)


def _paged(seq_lens, page, hk, d, dtype, extra_blocks=2):
    """Paged caches with shuffled blocks (NaN where no sequence owns a slot) and the dense
    keys/values of each sequence."""
    nblk = [(n + page - 1) // page for n in seq_lens]
    total = sum(nblk) + extra_blocks
    kc = torch.full((total, page, hk, d), float("nan"), dtype=dtype)
    vc = torch.full_like(kc, float("nan"))
    perm = torch.randperm(total).tolist()
    table = torch.full((len(seq_lens), max(nblk) + 1), 10 ** 6, dtype=I32)  # junk past the end
    keys, vals = [], []
    for s, n in enumerate(seq_lens):
        kd, vd = torch.randn(n, hk, d, dtype=dtype), torch.randn(n, hk, d, dtype=dtype)
        keys.append(kd)
        vals.append(vd)
        for j in range(nblk[s]):
            blk = perm.pop()
            table[s, j] = blk
            m = min(page, n - j * page)
            kc[blk, :m], vc[blk, :m] = kd[j * page: j * page + m], vd[j * page: j * page + m]
    return kc, vc, table, keys, vals


@pytest.mark.parametrize("page,dtype", [(16, torch.float32), (512, torch.bfloat16)], ids=str)
def test_flash_attn_varlen_func_paged(page, dtype):
    """block_table: queries are each sequence's last q_len positions (causal, bottom-right);
    512-token pages are viewed as 256-token blocks; non-causal multi-row runs are gathered."""
    q_lens, seq_lens, hq, hk, d = [3, 1, 0, 7], [10, 270, 5, 7], 4, 2, 16
    kc, vc, table, keys, vals = _paged(seq_lens, page, hk, d, dtype)
    q = torch.randn(sum(q_lens), hq, d, dtype=dtype)
    cu_q = _cu(q_lens)
    for causal, use_seqused in ((True, False), (True, True), (False, False)):
        # with seqused_k, cu_seqlens_k's lengths are not used
        cu_k = _cu([1, 1, 1, 1]) if use_seqused else _cu(seq_lens)
        kw = dict(seqused_k=torch.tensor(seq_lens, dtype=I32)) if use_seqused else {}
        out, lse, _ = fa.flash_attn_varlen_func(q, kc, vc, cu_q, cu_k, max(q_lens), max(seq_lens),
                                                causal=causal, block_table=table,
                                                return_attn_probs=True, **kw)
        assert out.shape == q.shape and lse.shape == (hq, q.shape[0])
        for b in range(4):
            qs = slice(cu_q[b], cu_q[b + 1])
            if q_lens[b]:
                check(f"c{causal}-s{b}", out[qs][None], q[qs][None], keys[b][None],
                      vals[b][None], causal, d ** -0.5, lse=lse[:, qs][None])


# -- flash_attn_with_kvcache ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cache_len", [40, 300, 257])   # one block; 150-token blocks; 1-token blocks
def test_kvcache_append_contiguous(dtype, cache_len):
    b, sq, hq, hk, d, new = 2, 3, 4, 2, 16, 3
    kc = torch.randn(3, cache_len, hk, d, dtype=dtype)
    vc = torch.randn(3, cache_len, hk, d, dtype=dtype)
    k0, v0 = kc.clone(), vc.clone()
    q = torch.randn(b, sq, hq, d, dtype=dtype)
    kn = torch.randn(b, new, hk, d, dtype=dtype)
    vn = torch.randn(b, new, hk, d, dtype=dtype)
    cs = torch.tensor([7, min(cache_len - new, 200)], dtype=I32)
    idx = torch.tensor([2, 0], dtype=I32)
    out, lse = fa.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=cs,
                                          cache_batch_idx=idx, causal=True,
                                          return_softmax_lse=True)
    want_k, want_v = k0.clone(), v0.clone()
    for i in range(b):
        r, n = int(idx[i]), int(cs[i])
        want_k[r, n:n + new], want_v[r, n:n + new] = kn[i], vn[i]
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v), "cache append is not exact"
    assert lse.shape == (b, hq, sq)
    for i in range(b):
        r, n = int(idx[i]), int(cs[i]) + new
        check(f"b{i}", out[i:i + 1], q[i:i + 1], kc[r:r + 1, :n], vc[r:r + 1, :n], True,
              d ** -0.5, lse=lse[i:i + 1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kvcache_int_seqlens_noncontiguous_cache(dtype):
    """cache_seqlens as an int, no cache_batch_idx, a cache that is a strided slice of a wider
    buffer, decode (one query row) with GQA and ALiBi, then a non-causal multi-row call
    (gathered path)."""
    b, hq, hk, d, cache_len = 3, 6, 2, 24, 384     # 192-token blocks
    big = torch.randn(b, cache_len, hk, d + 8, dtype=dtype)
    kc, vc = big[..., :d], torch.randn(b, cache_len, hk, d, dtype=dtype)
    alibi = torch.rand(b, hq)
    q = torch.randn(b, 1, hq, d, dtype=dtype)
    kn, vn = torch.randn(b, 1, hk, d, dtype=dtype), torch.randn(b, 1, hk, d, dtype=dtype)
    before = big.clone()
    out = fa.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=200, causal=True,
                                     alibi_slopes=alibi)
    assert torch.equal(big[:, 200:201, :, :d], kn) and torch.equal(vc[:, 200:201], vn)
    before[:, 200:201, :, :d] = kn
    assert torch.equal(big, before), "bytes outside the appended slots changed"
    check("decode", out, q, kc[:, :201], vc[:, :201], True, d ** -0.5, alibi=alibi)
    q3 = torch.randn(b, 4, hq, d, dtype=dtype)
    out, lse = fa.flash_attn_with_kvcache(q3, kc, vc, cache_seqlens=torch.tensor([5, 1, 201], dtype=I32),
                                          causal=False, window_size=(3, 2), softcap=4.0,
                                          return_softmax_lse=True)
    for i, n in enumerate([5, 1, 201]):
        check(f"noncausal{i}", out[i:i + 1], q3[i:i + 1], kc[i:i + 1, :n], vc[i:i + 1, :n], False,
              d ** -0.5, (3, 2), 4.0, lse=lse[i:i + 1])


@pytest.mark.parametrize("page,dtype", [(16, torch.bfloat16), (512, torch.float32)], ids=str)
def test_kvcache_paged(page, dtype):
    b, sq, hq, hk, d = 3, 2, 4, 4, 16
    cached = [9, 0, 260]
    kc, vc, table, _, _ = _paged([n + sq for n in cached], page, hk, d, dtype)
    k0, v0 = kc.clone(), vc.clone()
    q = torch.randn(b, sq, hq, d, dtype=dtype)
    kn, vn = torch.randn(b, sq, hk, d, dtype=dtype), torch.randn(b, sq, hk, d, dtype=dtype)
    out, lse = fa.flash_attn_with_kvcache(q, kc, vc, kn, vn,
                                          cache_seqlens=torch.tensor(cached, dtype=I32),
                                          block_table=table, causal=True, window_size=(5, -1),
                                          return_softmax_lse=True)
    for i, n in enumerate(cached):
        for j in range(sq):
            p = n + j
            blk, off = int(table[i, p // page]), p % page
            assert torch.equal(kc[blk, off], kn[i, j]) and torch.equal(vc[blk, off], vn[i, j])
            k0[blk, off], v0[blk, off] = kn[i, j], vn[i, j]
    assert torch.equal(kc.nan_to_num(7.0), k0.nan_to_num(7.0)), "other cache slots changed"
    assert torch.equal(vc.nan_to_num(7.0), v0.nan_to_num(7.0)), "other cache slots changed"
    for i, n in enumerate(cached):
        n += sq
        rows = [int(table[i, p // page]) for p in range(n)]
        ks = torch.stack([kc[r, p % page] for p, r in enumerate(rows)])[None]
        vs = torch.stack([vc[r, p % page] for p, r in enumerate(rows)])[None]
        check(f"b{i}", out[i:i + 1], q[i:i + 1], ks, vs, True, d ** -0.5, (5, -1),
              lse=lse[i:i + 1])


def test_kvcache_leftpad_and_short_sequences():
    """cache_leftpad: keys start there (the gathered path); a sequence with fewer keys than
    query rows: its first rows see nothing (0, lse -inf), as flash-attn's bottom-right rule."""
    b, sq, hq, hk, d = 2, 4, 2, 1, 16
    kc, vc = torch.randn(b, 20, hk, d), torch.randn(b, 20, hk, d)
    q = torch.randn(b, sq, hq, d)
    cs, pad = torch.tensor([12, 2], dtype=I32), torch.tensor([3, 0], dtype=I32)
    out, lse = fa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=cs, cache_leftpad=pad,
                                          causal=True, return_softmax_lse=True)
    for i in range(b):
        lo, hi = int(pad[i]), int(cs[i])
        check(f"b{i}", out[i:i + 1], q[i:i + 1], kc[i:i + 1, lo:hi], vc[i:i + 1, lo:hi], True,
              d ** -0.5, lse=lse[i:i + 1])
    assert torch.isneginf(lse[1, :, :2]).all() and (out[1, :2] == 0).all()


def _rope_ref(x, theta, interleaved):
    """Independent rotary: (x_a + i x_b) * e^(i theta) over the rotated pairs, fp64."""
    rd = 2 * theta.shape[-1]
    x = x.double()
    if interleaved:
        z = torch.view_as_complex(x[..., :rd].reshape(*x.shape[:-1], rd // 2, 2).contiguous())
    else:
        z = torch.complex(x[..., : rd // 2], x[..., rd // 2: rd])
    z = z * torch.polar(torch.ones_like(theta), theta)
    rot = torch.view_as_real(z).flatten(-2) if interleaved else torch.cat((z.real, z.imag), -1)
    return torch.cat((rot, x[..., rd:]), -1)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_kvcache_rotary(interleaved, causal):
    """k rotated at cache_seqlens + j before the append; q at cache_seqlens + i when causal
    or local, else all rows at cache_seqlens (flash-attn's rule)."""
    b, sq, hq, hk, d, rd, cache_len = 2, 3, 2, 2, 32, 16, 24
    inv = 1.0 / (10000 ** (torch.arange(0, rd, 2).double() / rd))
    theta = torch.arange(cache_len).double()[:, None] * inv[None]       # [seqlen_ro, rd / 2]
    cos, sin = theta.cos().float(), theta.sin().float()
    kc, vc = torch.randn(b, cache_len, hk, d), torch.randn(b, cache_len, hk, d)
    q = torch.randn(b, sq, hq, d)
    kn, vn = torch.randn(b, sq, hk, d), torch.randn(b, sq, hk, d)
    cs = torch.tensor([4, 10], dtype=I32)
    out = fa.flash_attn_with_kvcache(q, kc, vc, kn, vn, cos, sin, cs, causal=causal,
                                     rotary_interleaved=interleaved)
    for i in range(b):
        n = int(cs[i])
        kpos = torch.arange(n, n + sq)
        qpos = kpos if causal else torch.full((sq,), n)
        k_rot = _rope_ref(kn[i], theta[kpos][:, None], interleaved)
        q_rot = _rope_ref(q[i], theta[qpos][:, None], interleaved)
        assert torch.allclose(kc[i, n:n + sq].double(), k_rot, atol=1e-5), "rotated keys in the cache"
        assert torch.equal(vc[i, n:n + sq], vn[i]), "values are not rotated"
        check(f"b{i}", out[i:i + 1], q_rot.float()[None], kc[i:i + 1, :n + sq],
              vc[i:i + 1, :n + sq], causal, d ** -0.5)


# -- bad arguments ---------------------------------------------------------------------------------


def _kv_call(**over):
    args = dict(q=torch.randn(2, 1, 4, 16), k_cache=torch.randn(2, 8, 2, 16),
                v_cache=torch.randn(2, 8, 2, 16), k=torch.randn(2, 1, 2, 16),
                v=torch.randn(2, 1, 2, 16), cache_seqlens=torch.tensor([3, 4], dtype=I32))
    args.update(over)
    return args


BAD_KV = [
    (dict(v=None), ValueError, r"^k, v"),
    (dict(cache_seqlens=None), ValueError, r"^cache_seqlens: required"),
    (dict(cache_seqlens=torch.tensor([3, 8], dtype=I32)), InvalidInputError, r"^cache_seqlens: entry 1"),
    (dict(cache_seqlens=torch.tensor([3], dtype=I32)), ValueError, r"^cache_seqlens: expected shape"),
    (dict(cache_batch_idx=torch.tensor([0, 2], dtype=I32)), InvalidInputError, r"^cache_batch_idx"),
    (dict(cache_batch_idx=torch.tensor([1, 1], dtype=I32), cache_seqlens=3), InvalidInputError,
     r"^cache_batch_idx: two sequences"),
    (dict(block_table=torch.zeros(2, 1, dtype=I32), cache_batch_idx=torch.zeros(2, dtype=I32)),
     ValueError, r"^cache_batch_idx: not supported with block_table"),
    (dict(block_table=torch.zeros(2, 1, dtype=I32), cache_leftpad=torch.zeros(2, dtype=I32)),
     ValueError, r"^cache_leftpad"),
    (dict(block_table=torch.tensor([[0], [5]], dtype=I32)), InvalidInputError, r"^block_table"),
    (dict(k_cache=torch.randn(2, 8, 2, 16, dtype=torch.bfloat16)), TypeError, r"^k_cache: expected dtype"),
    (dict(k=torch.randn(2, 1, 3, 16)), ValueError, r"^k: expected shape"),
    (dict(rotary_cos=torch.randn(8, 4)), ValueError, r"^rotary_cos, rotary_sin"),
    (dict(rotary_cos=torch.randn(4, 4), rotary_sin=torch.randn(4, 4)), ValueError, r"^rotary_cos: expected at least 8"),
    (dict(k=None, v=None, rotary_cos=torch.randn(8, 4), rotary_sin=torch.randn(8, 4)), ValueError, r"^rotary_cos: needs k"),
    (dict(alibi_slopes=torch.rand(3)), ValueError, r"^alibi_slopes"),
    (dict(softcap=-1.0), ValueError, r"^softcap"),
    (dict(window_size=(2,)), ValueError, r"^window_size"),
    (dict(causal=1), TypeError, r"^causal"),
]


@pytest.mark.parametrize("over,exc,pattern", BAD_KV, ids=lambda x: "+".join(x) if isinstance(x, dict) else None)
def test_kvcache_bad_arguments_leave_the_cache_untouched(over, exc, pattern):
    args = _kv_call(**over)
    kc, vc = args["k_cache"].clone(), args["v_cache"].clone()
    with pytest.raises(exc, match=pattern):
        fa.flash_attn_with_kvcache(**args)
    assert torch.equal(args["k_cache"], kc) and torch.equal(args["v_cache"], vc)


def test_bad_arguments_name_the_argument():
    q = torch.randn(1, 4, 2, 16)
    with pytest.raises(ValueError, match=r"^dropout_p: only 0.0"):
        fa.flash_attn_func(q, q, q, dropout_p=0.1)
    with pytest.raises(ValueError, match=r"^dropout_p"):
        fa.flash_attn_varlen_func(q[0], q[0], q[0], _cu([4]), _cu([4]), 4, 4, 0.5)
    with pytest.raises(TypeError, match=r"^window_size\[0\]"):
        fa.flash_attn_func(q, q, q, window_size=(1.5, 0))
    with pytest.raises(ValueError, match=r"^q: expected 4"):
        fa.flash_attn_func(q[0], q, q)
    with pytest.raises(ValueError, match=r"^seqused_k: expected shape"):
        fa.flash_attn_varlen_func(q[0], q[0], q[0], _cu([4]), _cu([4]), 4, 4,
                                  seqused_k=torch.tensor([1, 2], dtype=I32))
    with pytest.raises(InvalidInputError, match=r"^seqused_k: entry 0"):
        fa.flash_attn_varlen_func(q[0], q[0], q[0], _cu([4]), _cu([4]), 4, 4,
                                  seqused_k=torch.tensor([5], dtype=I32))
    with pytest.raises(ValueError, match=r"^block_table: expected 1 rows"):
        fa.flash_attn_varlen_func(q[0], q, q, _cu([4]), _cu([4]), 4, 4,
                                  block_table=torch.zeros(2, 1, dtype=I32))
    with pytest.raises(ValueError, match=r"^qkv"):
        fa.flash_attn_qkvpacked_func(torch.randn(1, 4, 2, 2, 16))
