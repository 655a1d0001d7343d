"""varlen_paged_attention: packed variable-length queries over a paged KV cache.

Sequence s owns q rows cu_seqlens_q[s]:cu_seqlens_q[s + 1], its last q_len_s positions, which
attend causally to its seq_lens[s] cached tokens (q_len_s may be 0; seq_lens[s] == 0 is a
padded slot whose rows give out 0 and lse -inf).

1. the reference against oracles that share no code with it (a token-by-token gather and the
   fp64 ``naive_attention`` of test_reference_attention), and against dense varlen attention
   over the gathered keys (pk.varlen_attention and reference.varlen_attention);
2. the C++ kernel on every ISA path (``isa`` fixture), out/lse NaN-poisoned and passed in;
3. the Triton launcher under TRITON_INTERPRET=1 (tests/conftest.py sets it before Triton is
   imported), its ``_empty`` NaN-poisoned; skipped until launcher.varlen_paged_attention exists;
4. the public op through dispatch, and pk.paged_attention's padded slots;
5. bad input: an error naming the argument, raised before any impl runs or anything is written.

Caches: every slot no sequence owns (tails of partial last blocks, spare blocks) is NaN, and
unused block-table entries are either an out-of-range id (CPU impls must not read them) or an
all-NaN block (Triton), so reading past a sequence shows up as NaN.

Tolerance (docs/testing.md): per sequence, the error against the fp64 reference is at most 2x
the error of the same attention computed by torch in q's dtype (over the dequantised gathered
K/V) plus a per-dtype floor; padded rows must be exactly 0 / -inf.
"""
from __future__ import annotations

import importlib
import re
from types import SimpleNamespace

import pytest
import torch

import polykernels as pk
from polykernels import InvalidInputError, _extension
from polykernels import reference as ref
# (polykernels.reference does not re-export varlen_paged_attention: take it from its module)
from polykernels.reference.paged_ref import gather_kv
from polykernels.reference.paged_ref import varlen_paged_attention as ref_varlen_paged

from _threads import at_thread_counts
from test_attention_cpp import FLOOR, LSE_TOL, torch_same_dtype
from test_reference_attention import naive_attention
from test_reference_paged import naive_gather

FP8 = torch.float8_e4m3fn
NAN, NINF = float("nan"), float("-inf")
I32 = torch.int32
JUNK = 1_000_000                      # block id of unused table entries (out of range)
FP8_SCALES = (0.02, 0.05)             # randn / 0.02 stays well inside e4m3's +-448
TRITON_FLOOR = {torch.float16: 2e-3, torch.bfloat16: 8e-3}
TRITON_LSE_TOL = 1e-2                 # natural-log units, absolute (as test_paged_triton.py)

needs_ext = pytest.mark.skipif(_extension.unavailable_reason() is not None,
                               reason=f"{_extension.unavailable_reason()}")


def C():
    _extension.load()
    return torch.ops.polykernels_C


# --------------------------------------------------------------------------- cases

def make_case(q_lens, seq_lens, *, bs=16, hq=4, hkv=2, d=64, dtype=torch.float32, fp8=False,
              shared=False, unused="junk", q_layout="contiguous", table_strided=True,
              kv_strided=False, window_left=-1, window_right=-1, softcap=0.0, alibi=None):
    """One packed batch. ``unused``: what unused block-table entries hold, "junk" (an
    out-of-range id) or "poison" (an all-NaN block). ``shared``: the first two sequences with
    >= 2 blocks share their first block (prefix caching). ``q_layout``: "contiguous",
    "transposed" (token stride != heads * D) or "strided" (head_dim stride 2).
    ``alibi``: None, "h" ([Hq]) or "sh" ([num_seqs, Hq])."""
    assert len(q_lens) == len(seq_lens)
    S = len(q_lens)
    nblk = [-(-n // bs) for n in seq_lens]
    max_blocks = max(nblk, default=0) + 1
    total = sum(nblk) + 2                  # + a spare block and the poison block (the last)
    poison = total - 1
    perm = torch.randperm(total - 1).to(torch.int32)
    table = torch.full((max_blocks, S), poison if unused == "poison" else JUNK, dtype=torch.int32)
    i = 0
    for s, n in enumerate(nblk):
        table[:n, s] = perm[i:i + n]
        i += n
    share = [s for s, n in enumerate(nblk) if n >= 2][:2] if shared else []
    if len(share) == 2:
        table[0, share[1]] = table[0, share[0]]
    table = table.t() if table_strided else table.t().contiguous()  # [S, max_blocks]

    shape = (total, 2, bs, hkv, d) if kv_strided else (2, total, bs, hkv, d)
    kv = torch.empty(shape, dtype=FP8 if fp8 else dtype)
    if fp8:
        kv.view(torch.uint8).fill_(0x7F)    # e4m3fn NaN
    else:
        kv.fill_(NAN)
    kc, vc = (kv[:, 0], kv[:, 1]) if kv_strided else (kv[0], kv[1])
    ks, vs = FP8_SCALES if fp8 else (1.0, 1.0)
    for s, n in enumerate(seq_lens):
        pos = torch.arange(n)
        if len(share) == 2 and s == share[1]:
            pos = pos[bs:]                  # the shared block keeps the first sequence's tokens
        blk, off = table[s, pos // bs].long(), pos % bs
        for cache, sc in ((kc, ks), (vc, vs)):
            val = torch.randn(len(pos), hkv, d)
            cache[blk, off] = (val / sc).to(FP8) if fp8 else val.to(dtype)

    T = sum(q_lens)
    if q_layout == "transposed":
        q = torch.randn(hq, T, d, dtype=dtype).transpose(0, 1)
    elif q_layout == "strided":
        q = torch.randn(T, hq, 2 * d, dtype=dtype)[..., 1::2]
    else:
        q = torch.randn(T, hq, d, dtype=dtype)
    cu = torch.tensor([0] + torch.tensor(q_lens, dtype=torch.int64).cumsum(0).tolist(), dtype=torch.int32)
    slopes = {None: None, "h": lambda: torch.rand(hq) * 0.3,
              "sh": lambda: torch.rand(S, hq) * 0.3}[alibi]
    slopes = slopes() if slopes else None
    c = SimpleNamespace(q=q, kc=kc, vc=vc, table=table, seq=torch.tensor(seq_lens, dtype=torch.int32),
                        cu=cu, max_q=max(q_lens, default=0), scale=d ** -0.5, wl=window_left,
                        wr=window_right, softcap=softcap, slopes=slopes, ks=ks, vs=vs,
                        q_lens=list(q_lens), seq_lens=list(seq_lens))
    c.args = (c.q, c.kc, c.vc, c.table, c.seq, c.cu, c.max_q, c.scale, c.wl, c.wr, c.softcap,
              c.slopes, c.ks, c.vs)
    c.runs = [(int(a), int(b), n) for a, b, n in zip(cu[:-1], cu[1:], seq_lens)]
    return c


def slopes_of(c, s):
    if c.slopes is None:
        return None
    return c.slopes[s] if c.slopes.dim() == 2 else c.slopes


def oracle(c):
    """The reference evaluated on an fp64 copy of q: (out fp64, lse fp32)."""
    return ref_varlen_paged(c.q.double(), c.kc, c.vc, c.table, c.seq, c.cu, c.max_q,
                                      c.scale, c.wl, c.wr, c.softcap,
                                      None if c.slopes is None else c.slopes.double(), c.ks, c.vs)


def baseline(c):
    """The same attention computed by torch in q's dtype, per sequence (the error baseline)."""
    base = torch.zeros(c.q.shape, dtype=c.q.dtype)
    for s, (a, b, n) in enumerate(c.runs):
        if a == b or n == 0:
            continue
        k = gather_kv(c.kc, c.table[s], n, c.ks, c.q.dtype)
        v = gather_kv(c.vc, c.table[s], n, c.vs, c.q.dtype)
        base[a:b] = torch_same_dtype(c.q[None, a:b], k[None], v[None], True, c.scale, c.wl, c.wr,
                                     c.softcap, slopes_of(c, s))[0]
    return base


def check(name, out, lse, c, floor, lse_tol):
    """out/lse against the fp64 reference, sequence by sequence. lse_tol(ref_lse) -> bound."""
    T, hq, d = c.q.shape
    assert out.shape == (T, hq, d) and out.dtype == c.q.dtype, f"{name}: out {tuple(out.shape)} {out.dtype}"
    assert lse.shape == (hq, T) and lse.dtype == torch.float32, f"{name}: lse {tuple(lse.shape)} {lse.dtype}"
    assert not out.isnan().any(), f"{name}: NaN in out at rows {out.isnan().nonzero()[:5, 0].tolist()} (unwritten?)"
    assert not lse.isnan().any(), f"{name}: NaN in lse at {lse.isnan().nonzero()[:5].tolist()} (unwritten?)"
    ro, rl = oracle(c)
    base = baseline(c)
    for s, (a, b, n) in enumerate(c.runs):
        if a == b:
            continue
        tag = f"{name} seq {s} (rows {a}:{b}, seq_len {n})"
        if n == 0:
            assert torch.equal(out[a:b], torch.zeros_like(out[a:b])), f"{tag}: padded slot's out not 0"
            assert bool((lse[:, a:b] == NINF).all()), f"{tag}: padded slot's lse not -inf: {lse[:, a:b]}"
            continue
        err = (out[a:b].double() - ro[a:b]).abs()
        base_err = (base[a:b].double() - ro[a:b]).abs().max().item()
        tol = 2 * base_err + floor
        if err.max().item() > tol:
            at = [int(x) for x in torch.unravel_index(err.argmax(), err.shape)]
            raise AssertionError(f"{tag}: out max err {err.max().item():.3e} at {at} > tol {tol:.3e} "
                                 f"(torch {c.q.dtype} err {base_err:.3e})")
        got_l, want_l = lse[:, a:b].double(), rl[:, a:b].double()
        assert torch.isfinite(got_l).all(), f"{tag}: non-finite lse {got_l}"
        lerr = (got_l - want_l).abs().max().item()
        assert lerr <= lse_tol(want_l), f"{tag}: lse max err {lerr:.3e} > {lse_tol(want_l):.3e}"


def cpp_lse_tol(want):
    return LSE_TOL * (1 + want.abs().max().item())


def run_cpp(c, out=None, lse=None):
    T, hq, d = c.q.shape
    out = torch.full((T, hq, d), NAN, dtype=c.q.dtype) if out is None else out
    lse = torch.full((hq, T), NAN) if lse is None else lse
    o, l = C().cpu_varlen_paged_attention(*c.args, out=out, lse=lse)
    assert o.data_ptr() == out.data_ptr() and l.data_ptr() == lse.data_ptr(), "out/lse not filled in place"
    return out, lse


def check_cpp(name, c, **kw):
    out, lse = run_cpp(c, **kw)
    check(name, out, lse, c, FLOOR[c.q.dtype], cpp_lse_tol)
    return out, lse


# --------------------------------------------------------------------------- 1. the reference

REF_CASES = [
    dict(q_lens=[0, 1, 3, 6], seq_lens=[4, 9, 3, 20], bs=4, hq=4, hkv=2, d=8),
    dict(q_lens=[2, 5, 0, 1], seq_lens=[0, 12, 0, 7], bs=3, hq=3, hkv=1, d=16, window_left=4, alibi="sh"),
    dict(q_lens=[4, 3], seq_lens=[11, 3], bs=1, hq=2, hkv=2, d=8, softcap=2.5, alibi="h", shared=True,
         q_layout="transposed"),
    dict(q_lens=[1, 6, 2], seq_lens=[30, 6, 0], bs=16, hq=4, hkv=1, d=12, fp8=True),
    dict(q_lens=[3, 7], seq_lens=[40, 9], bs=5, hq=2, hkv=1, d=8, window_left=0, window_right=3),
]


def _ref_id(case):
    return "-".join(f"{k}={v}" for k, v in case.items() if k not in ("q_lens", "seq_lens", "hq", "hkv", "d"))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("case", REF_CASES, ids=_ref_id)
def test_reference_against_naive_oracle(case, dtype):
    """Token-by-token gather + fp64 naive attention per sequence (no shared code)."""
    c = make_case(**case, dtype=torch.float32)
    q = c.q.to(dtype)
    out, lse = ref_varlen_paged(q, *c.args[1:11],
                                          None if c.slopes is None else c.slopes.to(dtype), c.ks, c.vs)
    T, hq, d = q.shape
    assert out.shape == (T, hq, d) and out.dtype == dtype and lse.shape == (hq, T) and lse.dtype == torch.float32
    # fp8 caches are dequantised in fp32 by the reference (exact in the naive gather)
    tol = (1e-10 if not case.get("fp8") else 1e-6) if dtype == torch.float64 else 1e-5
    lse_tol = 1e-6 if dtype == torch.float64 else 1e-5  # lse is fp32 by contract
    for s, (a, b, n) in enumerate(c.runs):
        if a == b:
            continue
        if n == 0:
            assert torch.equal(out[a:b], torch.zeros_like(out[a:b])) and bool((lse[:, a:b] == NINF).all())
            continue
        k = naive_gather(c.kc, c.table[s], n, c.ks)[None]
        v = naive_gather(c.vc, c.table[s], n, c.vs)[None]
        wo, wl = naive_attention(q[None, a:b].double(), k, v, causal=True, scale=c.scale,
                                 window=(c.wl, c.wr), softcap=c.softcap, alibi=slopes_of(c, s))
        oerr = (out[a:b].double() - wo[0]).abs().max().item()
        lerr = (lse[:, a:b].double() - wl[0]).abs().max().item()
        assert oerr <= tol, f"seq {s}: out err {oerr:.3e} > {tol:.1e}"
        assert lerr <= lse_tol * (1 + wl.abs().max().item()), f"seq {s}: lse err {lerr:.3e}"


@pytest.mark.parametrize("alibi", [None, "sh"])
def test_reference_against_dense_varlen(alibi):
    """The packed gathered K/V through dense varlen attention (bottom-right causal): the library's
    default impl in fp32 and reference.varlen_attention in fp64 must agree with the paged
    reference. Includes q_len 0, a padded slot with queries, a 60-row prefill."""
    c = make_case([0, 1, 7, 60, 3, 2], [5, 1, 30, 75, 0, 2], bs=7, hq=6, hkv=2, d=24,
                  window_left=25, softcap=6.0, alibi=alibi)
    def gather(cache, s, n, scale):
        return naive_gather(cache, c.table[s], n, scale) if n else torch.zeros(0, *cache.shape[2:], dtype=torch.float64)
    ks = [gather(c.kc, s, n, c.ks) for s, n in enumerate(c.seq_lens)]
    vs = [gather(c.vc, s, n, c.vs) for s, n in enumerate(c.seq_lens)]
    k, v = torch.cat(ks), torch.cat(vs)
    cu_k = torch.tensor([0] + torch.tensor(c.seq_lens).cumsum(0).tolist(), dtype=torch.int32)
    max_k = max(c.seq_lens)
    want64, lse64 = ref.varlen_attention(c.q.double(), k, v, c.cu, cu_k, c.max_q, max_k, True, c.scale,
                                         c.wl, c.wr, c.softcap, c.slopes)
    got64, glse64 = ref_varlen_paged(c.q.double(), *c.args[1:])
    assert (got64 - want64).abs().max().item() <= 1e-12
    fin = torch.isfinite(lse64)
    assert torch.equal(fin, torch.isfinite(glse64)) and (glse64 - lse64)[fin].abs().max().item() <= 1e-5

    dense, dense_lse = pk.varlen_attention(c.q, k.float(), v.float(), c.cu, cu_k, c.max_q, max_k,
                                           causal=True, softmax_scale=c.scale, window=(c.wl, c.wr),
                                           softcap=c.softcap, alibi_slopes=c.slopes, return_lse=True)
    got, glse = ref_varlen_paged(*c.args)
    assert got.dtype == torch.float32
    assert (got - dense).abs().max().item() <= 2e-5
    fin = torch.isfinite(dense_lse)
    assert torch.equal(fin, torch.isfinite(glse)), "-inf lse rows differ from dense varlen attention"
    assert (glse - dense_lse)[fin].abs().max().item() <= 1e-4
    # the padded slot (sequence 4, rows 68:71) has no key
    assert not fin[:, 68:71].any() and torch.equal(got[68:71], torch.zeros_like(got[68:71]))


# --------------------------------------------------------------------------- 2. C++ CPU

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@needs_ext
def test_cpp_mixed_long(isa):
    """q_len 0, 1, 7, 16, 17, 300 in one batch, padded slots (with and without queries), a
    shared prefix block, junk unused table entries, a transposed block table and q."""
    c = make_case([0, 1, 7, 16, 17, 300, 2, 0], [5, 1, 30, 16, 90, 333, 0, 0], bs=16, hq=8, hkv=2,
                  d=64, dtype=torch.bfloat16, shared=True, q_layout="transposed")
    check_cpp(f"[{isa} mixed long]", c)


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpp_dtypes(isa, dtype):
    """GQA 7:1, head_dim 80, block size 3 (partial last blocks), head_dim-strided q."""
    c = make_case([0, 1, 7, 16, 17, 3], [4, 1, 7, 40, 17, 0], bs=3, hq=7, hkv=1, d=80, dtype=dtype,
                  q_layout="strided")
    check_cpp(f"[{isa} {dtype}]", c)


BS_CASES = [
    dict(bs=1, hq=4, hkv=4, d=64, dtype=torch.float16),
    dict(bs=3, hq=4, hkv=1, d=128, dtype=torch.float32, kv_strided=True),
    dict(bs=16, hq=8, hkv=2, d=80, dtype=torch.bfloat16, q_layout="transposed"),
    dict(bs=48, hq=6, hkv=3, d=32, dtype=torch.float16, shared=True),
    dict(bs=256, hq=4, hkv=1, d=128, dtype=torch.bfloat16),
]


@needs_ext
@pytest.mark.parametrize("case", BS_CASES, ids=lambda c: f"bs{c['bs']}")
def test_cpp_block_sizes(isa, case):
    """Partial last blocks (seq_len not a multiple of block_size), unused entries pointing at an
    all-NaN block."""
    bs = case["bs"]
    q_lens = [2, 0, 5, 1, 3]
    seq_lens = [bs + 1, 2 * bs - 1 if bs > 1 else 4, min(5 + bs, 2 * bs + 3), 1, 0]
    seq_lens[2] = max(seq_lens[2], 5)
    c = make_case(q_lens, seq_lens, unused="poison", **case)
    check_cpp(f"[{isa} {case}]", c)


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpp_fp8(isa, dtype):
    """fp8 e4m3fn caches with scales, ALiBi [num_seqs, Hq], a padded slot with 9 queries."""
    c = make_case([1, 4, 0, 9, 6], [50, 4, 20, 0, 31], bs=16, hq=8, hkv=2, d=64, dtype=dtype, fp8=True,
                  alibi="sh")
    check_cpp(f"[{isa} {dtype} fp8]", c)


FEATURES = [
    dict(window_left=0),
    dict(window_left=6, window_right=3),        # window_right is irrelevant under causality
    dict(softcap=5.0),
    dict(alibi="h"),
    dict(alibi="sh", window_left=9, softcap=3.0),
]


@needs_ext
@pytest.mark.parametrize("feature", FEATURES, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_cpp_features(isa, feature):
    c = make_case([3, 1, 0, 12, 2], [3, 40, 9, 30, 0], bs=8, hq=4, hkv=1, d=64, dtype=torch.float16,
                  **feature)
    check_cpp(f"[{isa} {feature}]", c)


def _split_case():
    # one long sequence among few work items: the kernel splits the keys and merges; the padded
    # slot's rows are -inf in every split
    return make_case([1, 5, 2, 0, 1], [1500, 40, 0, 7, 3], bs=16, hq=8, hkv=2, d=64,
                     dtype=torch.bfloat16, alibi="h")


@needs_ext
def test_cpp_split_keys_with_padded_slot(isa):
    check_cpp(f"[{isa} splits]", _split_case())


@needs_ext
def test_cpp_threads_identical():
    c = _split_case()
    (o1, l1), (o2, l2) = at_thread_counts(lambda: run_cpp(c))
    c2 = make_case([0, 1, 7, 16, 17, 40], [5, 1, 30, 16, 90, 0], bs=5, hq=4, hkv=2, d=80,
                   dtype=torch.float16, alibi="sh")
    (o3, l3), (o4, l4) = at_thread_counts(lambda: run_cpp(c2))
    assert torch.equal(o1, o2) and torch.equal(l1, l2), "1 vs 2 threads differ (split case)"
    assert torch.equal(o3, o4) and torch.equal(l3, l4), "1 vs 2 threads differ (mixed case)"


@needs_ext
def test_cpp_strided_out_and_lse(isa):
    """out and lse passed as strided views: written through their strides, nothing else touched."""
    c = make_case([3, 0, 6, 2], [9, 4, 6, 0], bs=4, hq=4, hkv=2, d=48, dtype=torch.float32)
    T, hq, d = c.q.shape
    out_buf = torch.full((T, hq, d + 5), NAN)
    lse_buf = torch.full((T, hq + 2), NAN)
    out, lse = out_buf[..., 2:d + 2], lse_buf[:, 1:hq + 1].t()
    assert not out.is_contiguous() and not lse.is_contiguous()
    run_cpp(c, out=out, lse=lse)
    check(f"[{isa} strided out]", out, lse, c, FLOOR[torch.float32], cpp_lse_tol)
    assert out_buf[..., :2].isnan().all() and out_buf[..., d + 2:].isnan().all(), "wrote outside out"
    assert lse_buf[:, 0].isnan().all() and lse_buf[:, -1].isnan().all(), "wrote outside lse"


@needs_ext
def test_cpp_loose_max_seqlen_q(isa):
    """max_seqlen_q is only a bound: a larger one changes nothing."""
    c = make_case([0, 5, 1, 9], [3, 12, 0, 9], bs=4, hq=4, hkv=2, d=64, dtype=torch.float16)
    exact = run_cpp(c)
    c.max_q += 13
    c.args = c.args[:6] + (c.max_q,) + c.args[7:]
    loose = check_cpp(f"[{isa} loose max_seqlen_q]", c)
    assert torch.equal(exact[0], loose[0]) and torch.equal(exact[1], loose[1])


@needs_ext
def test_cpp_degenerate_batches():
    # no query rows at all (seq_lens set): nothing to write, no crash
    c = make_case([0, 0], [5, 0], bs=4, hq=2, hkv=1, d=16)
    out, lse = run_cpp(c)
    assert out.shape == (0, 2, 16) and lse.shape == (2, 0)
    # every slot padded: all rows 0 / -inf
    c = make_case([2, 3], [0, 0], bs=4, hq=4, hkv=2, d=16, dtype=torch.bfloat16)
    check_cpp("[all padded]", c)
    # no sequence at all
    c = make_case([], [], bs=4, hq=2, hkv=1, d=16)
    out, lse = run_cpp(c)
    assert out.shape == (0, 2, 16)
    # one sequence, all of it new (prefill from an empty cache)
    check_cpp("[single prefill]", make_case([23], [23], bs=8, hq=3, hkv=1, d=40))


# --------------------------------------------------------------------------- 3. Triton (interpreter)

@pytest.fixture
def tl_launcher(monkeypatch):
    L = pytest.importorskip("polykernels.triton.paged_attention.launcher")
    if not hasattr(L, "varlen_paged_attention"):
        pytest.skip("launcher.varlen_paged_attention does not exist yet")

    def nan_empty(shape, dtype, device):
        t = torch.empty(shape, dtype=dtype, device=device)
        return t.fill_(NAN) if t.is_floating_point() else t.fill_(-7)
    monkeypatch.setattr(L, "_empty", nan_empty)
    return L


TRITON_QL = [0, 1, 5, 17, 33, 2]
TRITON_SL = [4, 1, 20, 17, 50, 0]          # the last: a padded slot with 2 queries
TRITON_CASES = [
    dict(dtype=torch.float16, hq=4, hkv=2, d=64, bs=16, splits=1),
    dict(dtype=torch.bfloat16, hq=4, hkv=2, d=64, bs=16, splits=3, shared=True, window_left=7),
    dict(dtype=torch.float16, hq=7, hkv=1, d=32, bs=5, splits=3, fp8=True, alibi="sh", softcap=4.0),
    dict(dtype=torch.bfloat16, hq=2, hkv=2, d=80, bs=1, splits=1, fp8=True, alibi="h",
         q_layout="strided", kv_strided=True),
    dict(dtype=torch.float16, hq=8, hkv=2, d=128, bs=48, splits=None, window_left=0,
         q_layout="transposed"),
    dict(dtype=torch.bfloat16, hq=4, hkv=1, d=64, bs=8, splits=2, alibi="h", softcap=8.0,
         window_left=20, table_strided=False),
]


def _tid(case):
    return "-".join(f"{k}={str(v).replace('torch.', '')}" for k, v in case.items() if k not in ("hq", "hkv"))


@pytest.mark.parametrize("case", TRITON_CASES, ids=_tid)
def test_triton_matches_reference(tl_launcher, case):
    case = dict(case)
    splits = case.pop("splits")
    c = make_case(TRITON_QL, TRITON_SL, unused="poison", **case)
    out, lse = tl_launcher.varlen_paged_attention(*c.args, num_splits=splits)
    check(f"[triton {case} splits {splits}]", out, lse, c, TRITON_FLOOR[c.q.dtype],
          lambda want: TRITON_LSE_TOL)


def test_triton_split_counts_agree(tl_launcher):
    c = make_case([1, 0, 9, 17], [40, 3, 9, 60], bs=16, hq=4, hkv=1, d=64, dtype=torch.float16,
                  unused="poison")
    o1, l1 = tl_launcher.varlen_paged_attention(*c.args, num_splits=1)
    o3, l3 = tl_launcher.varlen_paged_attention(*c.args, num_splits=3)
    check("[triton splits 1]", o1, l1, c, TRITON_FLOOR[torch.float16], lambda want: TRITON_LSE_TOL)
    assert (o1.float() - o3.float()).abs().max().item() <= 2e-3
    assert (l1 - l3).abs().max().item() <= 1e-4


def test_triton_loose_max_seqlen_q(tl_launcher):
    """max_seqlen_q above the longest run (a larger grid): the extra rows must stay masked."""
    c = make_case([3, 0, 1, 6], [3, 9, 0, 20], bs=8, hq=4, hkv=2, d=64, dtype=torch.bfloat16,
                  unused="poison")
    c.max_q = 21
    c.args = c.args[:6] + (c.max_q,) + c.args[7:]
    out, lse = tl_launcher.varlen_paged_attention(*c.args, num_splits=2)
    check("[triton loose max_seqlen_q]", out, lse, c, TRITON_FLOOR[torch.bfloat16],
          lambda want: TRITON_LSE_TOL)


def test_triton_through_dispatch(tl_launcher):
    from polykernels.dispatch import registry
    registry.ensure_loaded()
    if "triton" not in {i.name for i in registry.impls.get("varlen_paged_attention", [])}:
        pytest.skip("no triton impl registered for varlen_paged_attention yet")
    c = make_case([2, 0, 17], [9, 4, 0], bs=16, hq=4, hkv=2, d=64, dtype=torch.bfloat16,
                  unused="poison")
    with pk.use(varlen_paged_attention="triton"):
        out, lse = pk.varlen_paged_attention(c.q, c.kc, c.vc, c.table, c.seq, c.cu, c.max_q,
                                             return_lse=True)
    check("[triton dispatch]", out, lse, c, TRITON_FLOOR[torch.bfloat16], lambda want: TRITON_LSE_TOL)


# --------------------------------------------------------------------------- 4. the public op

def _public(c, **kw):
    return pk.varlen_paged_attention(c.q, c.kc, c.vc, c.table, c.seq, c.cu, c.max_q,
                                     softmax_scale=c.scale, window=(c.wl, c.wr), softcap=c.softcap,
                                     alibi_slopes=c.slopes, k_scale=c.ks, v_scale=c.vs, **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_public_op_matches_reference(dtype):
    c = make_case([0, 3, 1, 20, 4], [6, 3, 0, 45, 11], bs=8, hq=6, hkv=2, d=40, dtype=dtype,
                  alibi="sh", softcap=7.0, fp8=dtype != torch.float32)
    out, lse = _public(c, return_lse=True)
    check(f"[pk {dtype}]", out, lse, c, FLOOR[dtype], cpp_lse_tol)
    # without return_lse: the tensor alone; max_seqlen_q=None reads it from cu_seqlens_q
    plain = pk.varlen_paged_attention(c.q, c.kc, c.vc, c.table, c.seq, c.cu, softmax_scale=c.scale,
                                      softcap=c.softcap, alibi_slopes=c.slopes, k_scale=c.ks,
                                      v_scale=c.vs)
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, out)
    # the registered op is reachable through torch.ops too
    o2, l2 = torch.ops.polykernels.varlen_paged_attention(*c.args)
    assert torch.equal(o2, out) and torch.equal(l2, lse)


@pytest.mark.parametrize("impl", ["cpp", "reference"])
def test_public_varlen_padded_slots(impl):
    """seq_lens 0 (with and without queries) through the chosen impl: a refusal raises."""
    if impl == "cpp" and _extension.unavailable_reason() is not None:
        pytest.skip(_extension.unavailable_reason())
    c = make_case([2, 0, 5, 1], [0, 0, 9, 0], bs=4, hq=4, hkv=2, d=32, dtype=torch.bfloat16)
    # strided cu_seqlens_q / seq_lens views (the public op must cope)
    cu = torch.stack([c.cu, c.cu * 0 - 9], 1)[:, 0]
    seq = torch.stack([c.seq, c.seq * 0 + 10 ** 6], 1)[:, 0]
    assert not cu.is_contiguous() and not seq.is_contiguous()
    with pk.use(varlen_paged_attention=impl):
        out, lse = pk.varlen_paged_attention(c.q, c.kc, c.vc, c.table, seq, cu, c.max_q,
                                             return_lse=True)
    check(f"[pk {impl} padded]", out, lse, c, FLOOR[torch.bfloat16], cpp_lse_tol)
    assert torch.equal(out[:2], torch.zeros_like(out[:2])) and bool((lse[:, [0, 1, 7]] == NINF).all())


@pytest.mark.parametrize("impl", ["cpp", "reference"])
def test_public_paged_padded_slot(impl):
    """pk.paged_attention (uniform q_len) accepts seq_lens 0: those rows give 0 / -inf."""
    if impl == "cpp" and _extension.unavailable_reason() is not None:
        pytest.skip(_extension.unavailable_reason())
    c = make_case([3, 3, 3], [0, 17, 3], bs=4, hq=4, hkv=1, d=32, dtype=torch.float16)
    q = c.q.reshape(3, 3, 4, 32)
    with pk.use(paged_attention=impl):
        out, lse = pk.paged_attention(q, c.kc, c.vc, c.table, c.seq, return_lse=True)
    assert out.shape == (3, 3, 4, 32) and lse.shape == (3, 4, 3)
    assert torch.equal(out[0], torch.zeros_like(out[0])), "padded slot's out not 0"
    assert bool((lse[0] == NINF).all()), f"padded slot's lse not -inf: {lse[0]}"
    assert not out.isnan().any() and not lse.isnan().any()
    # the same batch packed: identical semantics (lse [S, Hq, L] <-> [Hq, S * L])
    check(f"[pk paged {impl}]", out.reshape(9, 4, 32), lse.permute(1, 0, 2).reshape(4, 9), c,
          FLOOR[torch.float16], cpp_lse_tol)


def test_public_no_sequences():
    """cu_seqlens_q = [0] (num_seqs 0): an empty result, with or without max_seqlen_q."""
    q, kc = torch.randn(0, 2, 16), torch.randn(2, 4, 1, 16)
    bt, seq, cu = torch.zeros(0, 1, dtype=I32), torch.zeros(0, dtype=I32), torch.zeros(1, dtype=I32)
    for max_q in (None, 0):
        out, lse = pk.varlen_paged_attention(q, kc, kc, bt, seq, cu, max_q, return_lse=True)
        assert out.shape == (0, 2, 16) and lse.shape == (2, 0)


@needs_ext
def test_public_varlen_equals_uniform_paged():
    c = make_case([4, 4, 4], [4, 30, 9], bs=8, hq=8, hkv=2, d=64, dtype=torch.bfloat16, window_left=5)
    with pk.use(varlen_paged_attention="cpp", paged_attention="cpp"):
        vo, vl = pk.varlen_paged_attention(c.q, c.kc, c.vc, c.table, c.seq, c.cu, 4, window=(5, -1),
                                           return_lse=True)
        po, pl = pk.paged_attention(c.q.reshape(3, 4, 8, 64), c.kc, c.vc, c.table, c.seq,
                                    window=(5, -1), return_lse=True)
    assert (vo.float() - po.reshape(12, 8, 64).float()).abs().max().item() <= 8e-3
    assert (vl - pl.permute(1, 0, 2).reshape(8, 12)).abs().max().item() <= 1e-4


# --------------------------------------------------------------------------- 5. bad input

def _base(**over):
    """A valid call: 3 sequences, q_lens 3, 0, 4 (cu 0, 3, 3, 7), seq_lens 5, 1, 8, blocks of 4."""
    a = dict(q=torch.randn(7, 4, 8), k_cache=torch.randn(6, 4, 2, 8), v_cache=torch.randn(6, 4, 2, 8),
             block_table=torch.tensor([[0, 3], [4, 1], [2, 5]], dtype=torch.int32),
             seq_lens=torch.tensor([5, 1, 8], dtype=torch.int32),
             cu_seqlens_q=torch.tensor([0, 3, 3, 7], dtype=torch.int32), max_seqlen_q=4)
    kw = {k: over.pop(k) for k in list(over) if k not in a}
    a.update(over)
    return tuple(a.values()), kw


V, T, BAD = ValueError, TypeError, InvalidInputError
BAD_CASES = [
    (dict(cu_seqlens_q=torch.tensor([0, 3, 3, 7])), T, r"^cu_seqlens_q: .*dtype"),               # int64
    (dict(cu_seqlens_q=torch.tensor([0, 3, 3, 7]), max_seqlen_q=None), T, r"^cu_seqlens_q"),
    (dict(cu_seqlens_q=torch.tensor([0.0, 3.0, 3.0, 7.0])), T, r"^cu_seqlens_q"),
    (dict(cu_seqlens_q=torch.tensor([1, 3, 3, 7], dtype=I32)), BAD, r"^cu_seqlens_q: expected to start at 0"),
    (dict(cu_seqlens_q=torch.tensor([0, 3, 3, 6], dtype=I32)), BAD, r"^cu_seqlens_q: .*end at 7"),
    (dict(cu_seqlens_q=torch.tensor([0, 4, 3, 7], dtype=I32)), BAD, r"^cu_seqlens_q: expected non-decreasing"),
    (dict(cu_seqlens_q=torch.tensor([0, 4, 3, 7], dtype=I32), max_seqlen_q=None), BAD, r"^cu_seqlens_q"),
    (dict(cu_seqlens_q=torch.tensor([[0, 3, 3, 7]], dtype=I32)), V, r"^cu_seqlens_q: expected 1 dim"),
    (dict(cu_seqlens_q=torch.zeros(0, dtype=I32)), V, r"^cu_seqlens_q"),
    (dict(cu_seqlens_q=torch.tensor([0, 3, 3, 7], dtype=I32, device="meta")), V, r"^cu_seqlens_q: expected device"),
    (dict(cu_seqlens_q=[0, 3, 3, 7]), T, r"^cu_seqlens_q"),
    (dict(max_seqlen_q=3), BAD, r"^max_seqlen_q: expected >= the longest query run \(4\)"),
    (dict(max_seqlen_q=-1), V, r"^max_seqlen_q"),
    (dict(max_seqlen_q=4.0), V, r"^max_seqlen_q"),
    (dict(seq_lens=torch.tensor([2, 1, 8], dtype=I32)), BAD, r"^seq_lens: entry 0 is 2"),        # < q_len 3
    (dict(seq_lens=torch.tensor([5, 1, 3], dtype=I32)), BAD, r"^seq_lens: entry 2 is 3"),        # < q_len 4
    (dict(seq_lens=torch.tensor([5, 1, 9], dtype=I32)), BAD, r"^seq_lens: entry 2 is 9"),        # > 2 blocks
    (dict(seq_lens=torch.tensor([5, -1, 8], dtype=I32)), BAD, r"^seq_lens: entry 1"),
    (dict(seq_lens=torch.tensor([5, 1], dtype=I32)), V, r"^seq_lens: length"),
    (dict(seq_lens=torch.tensor([5, 1, 8])), T, r"^seq_lens"),
    (dict(block_table=torch.tensor([[0, 3], [4, 1], [2, 6]], dtype=I32)), BAD, r"^block_table: row 2 uses block ids outside \[0, 6\)"),
    (dict(block_table=torch.tensor([[-1, 3], [4, 1], [2, 5]], dtype=I32)), BAD, r"^block_table: row 0"),
    (dict(block_table=torch.tensor([[0, 3], [4, 1]], dtype=I32)), V, r"^block_table: rows"),
    (dict(block_table=torch.tensor([[0, 3], [4, 1], [2, 5]])), T, r"^block_table"),            # int64
    (dict(cu_seqlens_q=torch.tensor([0, 3, 7], dtype=I32)), V, r"^block_table: rows"),         # 2 seqs vs 3 rows
    (dict(cu_seqlens_q=torch.tensor([0, 3, 3, 3, 7], dtype=I32)), V, r"^block_table: rows"),
    (dict(q=torch.randn(1, 7, 4, 8)), V, r"^q: expected 3 dimensions"),
    (dict(q=torch.randn(7, 8)), V, r"^q: expected 3 dimensions"),
    (dict(q=torch.randint(0, 3, (7, 4, 8))), T, r"^q: .*dtype"),
    (dict(k_cache=torch.randn(6, 4, 2, 8, dtype=torch.bfloat16), v_cache=torch.randn(6, 4, 2, 8, dtype=torch.bfloat16)), T, r"^k_cache"),
    (dict(alibi_slopes=torch.rand(2, 4)), V, r"^alibi_slopes: expected shape \[4\] or \[3, 4\]"),
    (dict(k_scale=0.0), V, r"^k_scale"),
    (dict(window=(-2, -1)), V, r"^window"),
]


def _bad_id(case):
    over, exc, _ = case
    return f"{'+'.join(over)}-{exc.__name__}"


@pytest.mark.parametrize("over,exc,pattern", BAD_CASES, ids=[_bad_id(c) for c in BAD_CASES])
def test_bad_input(over, exc, pattern, monkeypatch):
    args, kw = _base(**dict(over))
    called = []  # every op enters the dispatcher through _run.dispatch: nothing may run
    monkeypatch.setattr(importlib.import_module("polykernels.ops._run"), "dispatch",
                        lambda *a, **k: called.append(a[0]))
    snapshots = [t.clone() for t in args if isinstance(t, torch.Tensor) and t.device.type != "meta"]
    with pytest.raises(exc, match=pattern):
        pk.varlen_paged_attention(*args, **kw)
    assert called == [], f"an implementation ran before validation failed: {called}"
    with pytest.raises(exc, match=pattern):
        pk.explain("varlen_paged_attention", *args, **kw)
    after = [t for t in args if isinstance(t, torch.Tensor) and t.device.type != "meta"]
    for b, a in zip(snapshots, after):
        assert torch.equal(b.view(torch.uint8) if b.dtype == FP8 else b, a.view(torch.uint8) if a.dtype == FP8 else a)


def test_base_call_is_valid():
    """The bad-input cases above each break one thing of this call, which works."""
    args, kw = _base()
    out, lse = pk.varlen_paged_attention(*args, return_lse=True, **kw)
    assert out.shape == (7, 4, 8) and lse.shape == (4, 7) and torch.isfinite(lse).all()


def _internal(**over):
    """The op's internal arguments (no public checks) for the base call."""
    args, _ = _base(**over)
    q, kc, vc, bt, seq, cu, maxq = args
    return (q, kc, vc, bt, seq, cu, maxq, 8 ** -0.5, -1, -1, 0.0, None, 1.0, 1.0)


# bad index values the public checks would catch, given straight to the impls
INTERNAL_BAD = {
    "block id": (dict(block_table=torch.tensor([[0, 3], [4, 1], [2, 6]], dtype=I32)), "block_table"),
    "negative block id": (dict(block_table=torch.tensor([[0, -3], [4, 1], [2, 5]], dtype=I32)), "block_table"),
    "seq_len < q_len": (dict(seq_lens=torch.tensor([2, 1, 8], dtype=I32)), "seq_lens"),
    "seq_len > table": (dict(seq_lens=torch.tensor([5, 1, 9], dtype=I32)), "seq_lens"),
    "cu start": (dict(cu_seqlens_q=torch.tensor([1, 3, 3, 7], dtype=I32)), "cu_seqlens_q"),
    "cu end": (dict(cu_seqlens_q=torch.tensor([0, 3, 3, 6], dtype=I32)), "cu_seqlens_q"),
    "cu decreasing": (dict(cu_seqlens_q=torch.tensor([0, 4, 3, 7], dtype=I32)), "cu_seqlens_q"),
    "max_seqlen_q": (dict(max_seqlen_q=3), "max_seqlen_q|cu_seqlens_q"),
}


@pytest.mark.parametrize("what", list(INTERNAL_BAD))
def test_every_cpu_impl_refuses_bad_index_values(what):
    """Where the public checks cannot read values (torch.compile), each CPU impl must refuse
    them itself, naming the argument."""
    from polykernels.dispatch import registry
    registry.ensure_loaded()
    over, pattern = INTERNAL_BAD[what]
    internal = _internal(**dict(over))
    impls = [i for i in registry.impls["varlen_paged_attention"] if i.backend in ("cpu", "torch", "reference")]
    assert "reference" in {i.name for i in impls}
    if _extension.unavailable_reason() is None:
        assert "cpp" in {i.name for i in impls}
    for impl in impls:
        if impl.supports is not None and impl.supports(*internal) is not None:
            continue
        with pytest.raises((ValueError, RuntimeError), match=pattern):
            impl.fn(*internal)


CPP_BAD = {
    "cu start": (dict(cu_seqlens_q=torch.tensor([1, 3, 3, 7], dtype=I32)), "cu_seqlens_q"),
    "cu end": (dict(cu_seqlens_q=torch.tensor([0, 3, 3, 6], dtype=I32)), "cu_seqlens_q"),
    "cu decreasing": (dict(cu_seqlens_q=torch.tensor([0, 4, 3, 7], dtype=I32)), "cu_seqlens_q"),
    "cu int64": (dict(cu_seqlens_q=torch.tensor([0, 3, 3, 7])), "cu_seqlens_q"),
    "cu strided": (dict(cu_seqlens_q=torch.tensor([0, 0, 3, 0, 3, 0, 7, 0], dtype=I32)[::2]), "cu_seqlens_q"),
    "run > max_seqlen_q": (dict(max_seqlen_q=3), "cu_seqlens_q|max_seqlen_q"),
    "seq_len < q_len": (dict(seq_lens=torch.tensor([5, 1, 3], dtype=I32)), "seq_lens"),
    "seq_len negative": (dict(seq_lens=torch.tensor([5, -1, 8], dtype=I32)), "seq_lens"),
    "block id": (dict(block_table=torch.tensor([[0, 3], [4, 1], [2, 6]], dtype=I32)), "block_table"),
    "table rows": (dict(block_table=torch.tensor([[0, 3], [4, 1]], dtype=I32)), "block_table"),
    "seq_lens length": (dict(seq_lens=torch.tensor([5, 1], dtype=I32)), "seq_lens"),
    "q 4-D": (dict(q=torch.randn(1, 7, 4, 8)), "'q'"),
}


@needs_ext
@pytest.mark.parametrize("what", list(CPP_BAD))
def test_cpp_bad_input_writes_nothing(what):
    over, pattern = CPP_BAD[what]
    internal = _internal(**dict(over))
    out, lse = torch.full((7, 4, 8), NAN), torch.full((4, 7), NAN)
    with pytest.raises(RuntimeError, match=pattern):
        C().cpu_varlen_paged_attention(*internal, out=out, lse=lse)
    assert out.isnan().all() and lse.isnan().all(), "out/lse written before the error"
