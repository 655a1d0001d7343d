"""Triton paged decode, write_kv_cache and merge_attention_states against the reference.

Runs under TRITON_INTERPRET=1 here (small shapes) and on a GPU with -m gpu. Every output
buffer the launchers allocate is NaN-poisoned first (their ``_empty`` hook), cache slots no
sequence owns are NaN, and unused block-table entries point at an all-NaN block, so a kernel
that writes too little or reads past a sequence shows up as NaN.

Tolerance (docs/testing.md): error vs the fp32 reference <= 2 x the error of the same
attention computed by torch in the input dtype, plus an absolute floor.
"""
from __future__ import annotations

import math

import pytest
import torch

from polykernels import reference as ref

L = pytest.importorskip("polykernels.triton.paged_attention.launcher")
from polykernels.triton.paged_attention import heuristics  # noqa: E402

FLOOR = {torch.float16: 2e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}
FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    def nan_empty(shape, dtype, device):
        t = torch.empty(shape, dtype=dtype, device=device)
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-7)
    monkeypatch.setattr(L, "_empty", nan_empty)


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _nan_of(dtype):
    if dtype == torch.float8_e4m3fnuz:  # its only NaN is the bit pattern 0x80 (negative zero)
        return torch.tensor([0x80], dtype=torch.uint8).view(dtype)
    return torch.tensor([float("nan")]).to(dtype)


def make_paged(seq_lens, block_size, hkv, dim, dtype, *, shared=False, kv_strided=False,
               scale=(1.0, 1.0), device=None):
    """Caches with each sequence's tokens in shuffled blocks; everything else NaN.

    Returns k_cache, v_cache, block_table, seq_lens (int32). ``shared``: sequence 1 reuses
    sequence 0's first block (prefix sharing; its tokens must then agree, which they do
    since the block is simply read twice). ``kv_strided``: k/v are views of one
    [blocks, 2, block_size, H, D] tensor (non-contiguous)."""
    device = device or _device()
    nblk = [max(1, math.ceil(s / block_size)) for s in seq_lens]
    max_blocks = max(nblk) + 1  # one spare column, always pointing at the poison block
    total = sum(nblk) + 2
    perm = torch.randperm(total - 1)  # block total-1 is the poison block
    poison = total - 1
    table = torch.full((len(seq_lens), max_blocks), poison, dtype=torch.int32)
    i = 0
    for s, n in enumerate(nblk):
        table[s, :n] = perm[i:i + n].to(torch.int32)
        i += n
    if shared and len(seq_lens) > 1 and nblk[1] > 1:
        table[1, 0] = table[0, 0]
    store = torch.float32 if dtype in FP8 else dtype
    shape = (total, 2, block_size, hkv, dim) if kv_strided else (2, total, block_size, hkv, dim)
    kv = torch.empty(shape, dtype=dtype, device=device)
    kv.view(torch.uint8 if dtype in FP8 else kv.dtype).copy_(
        _nan_of(dtype).view(torch.uint8 if dtype in FP8 else dtype).to(device).expand_as(
            kv.view(torch.uint8 if dtype in FP8 else kv.dtype)))
    k_cache, v_cache = (kv[:, 0], kv[:, 1]) if kv_strided else (kv[0], kv[1])
    for s, n in enumerate(seq_lens):
        pos = torch.arange(n)
        if shared and s == 1 and nblk[1] > 1:
            pos = pos[block_size:]  # the shared block keeps sequence 0's tokens
        blk, off = table[s, pos // block_size].long().to(device), (pos % block_size).to(device)
        for cache, sc in ((k_cache, scale[0]), (v_cache, scale[1])):
            val = torch.randn(len(pos), hkv, dim, device=device, dtype=torch.float32)
            cache[blk, off] = (val / sc).to(dtype) if dtype in FP8 else val.to(store)
    return k_cache, v_cache, table.to(device), torch.tensor(seq_lens, dtype=torch.int32, device=device)


def gather_kv(cache, table_row, n, scale, dtype):
    """One sequence's first n keys/values [n, Hkv, D] in ``dtype`` (fp8 dequantised)."""
    bs = cache.shape[1]
    idx = torch.arange(n, device=cache.device)
    x = cache[table_row[idx // bs].long(), idx % bs]
    return (x.float() * scale).to(dtype) if x.dtype in FP8 else x.to(dtype)


def torch_lowp_paged(q, k_cache, v_cache, table, seq_lens, scale, window_left, softcap, alibi,
                     k_scale, v_scale):
    """The same paged attention done by torch in q's dtype: the error baseline."""
    dt = q.dtype
    num_seqs, q_len, hq, dim = q.shape
    out = torch.empty_like(q)
    for s, n in enumerate(seq_lens.tolist()):
        k = gather_kv(k_cache, table[s], n, k_scale, dt).transpose(0, 1)  # [Hkv, n, D]
        v = gather_kv(v_cache, table[s], n, v_scale, dt).transpose(0, 1)
        g = hq // k.shape[0]
        k, v = k.repeat_interleave(g, 0), v.repeat_interleave(g, 0)
        qs = q[s].transpose(0, 1)  # [Hq, q_len, D]
        sc = (qs @ k.transpose(1, 2)) * scale
        if softcap > 0:
            sc = softcap * torch.tanh(sc / softcap)
        i = torch.arange(q_len, device=q.device)[:, None] + n - q_len
        d = i - torch.arange(n, device=q.device)[None, :]
        if alibi is not None:
            sl = alibi[s] if alibi.dim() == 2 else alibi
            sc = sc - (sl[:, None, None] * d.abs()[None]).to(dt)
        vis = d >= 0
        if window_left >= 0:
            vis &= d <= window_left
        p = torch.softmax(sc.masked_fill(~vis, float("-inf")), -1)
        out[s] = (p @ v).transpose(0, 1)
    return out


def check_close(name, got, want, base, dtype, factor=2.0):
    """|got - want| <= factor * max|base - want| + floor, elementwise; NaN fails."""
    want = want.float()
    err = (got.float() - want).abs()
    base_err = (base.float() - want).abs().max().item() if base is not None else 0.0
    tol = factor * base_err + FLOOR[dtype]
    bad = ~(err <= tol)  # NaN -> bad
    if bad.any():
        idx = tuple(i.item() for i in bad.nonzero()[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.numel()} elements off; max err "
            f"{err.nan_to_num(float('inf')).max().item():.3g} > tol {tol:.3g} (baseline err "
            f"{base_err:.3g}); first at {idx}: got {got[idx].item()}, want {want[idx].item()}")


def run_case(*, dtype=torch.float16, cache_dtype=None, q_len=1, hq=8, hkv=2, dim=64, block_size=16,
             seq_lens=None, splits=None, window_left=-1, softcap=0.0, alibi=None, shared=False,
             kv_strided=False, q_strided=False, scales=(1.0, 1.0), meta_strided=False):
    device = _device()
    cache_dtype = cache_dtype or dtype
    bs = block_size
    seq_lens = seq_lens or [max(q_len, x) for x in (1, bs - 1, bs, bs + 1, 4 * bs + 3)]
    kc, vc, table, sl = make_paged(seq_lens, bs, hkv, dim, cache_dtype, shared=shared,
                                   kv_strided=kv_strided, scale=scales)
    if q_strided:  # heads interleaved with another tensor: non-unit head stride
        q = torch.randn(len(seq_lens), q_len, hq, 2, dim, dtype=dtype, device=device)[:, :, :, 1]
    else:
        q = torch.randn(len(seq_lens), q_len, hq, dim, dtype=dtype, device=device)
    if meta_strided:  # block table and seq_lens as strided views of wider tensors
        table = torch.stack([table, torch.full_like(table, -5)], -1)[..., 0]
        sl = torch.stack([sl, sl * 0 + 10 ** 6], 1)[:, 0]
        assert not table.is_contiguous() and not sl.is_contiguous()
    slopes = None
    if alibi == "heads":
        slopes = torch.rand(hq, device=device) * 0.5
    elif alibi == "batch":
        slopes = torch.rand(len(seq_lens), hq, device=device) * 0.5
    scale = dim ** -0.5
    args = (q, kc, vc, table, sl, scale, window_left, -1, softcap, slopes, scales[0], scales[1])
    out, lse = L.paged_attention(*args, num_splits=splits)
    r_out, r_lse = ref.paged_attention(*args)
    base = torch_lowp_paged(q, kc, vc, table, sl, scale, window_left, softcap, slopes, *scales)
    tag = f"{dtype} cache {cache_dtype} q_len {q_len} {hq}/{hkv} D{dim} bs{bs} splits {splits}"
    assert out.shape == r_out.shape and out.dtype == q.dtype and lse.dtype == torch.float32
    check_close(f"out [{tag}]", out, r_out, base, dtype)
    # lse is accumulated in fp32 from fp32 dot products: absolute bound in natural-log units.
    lse_err = (lse - r_lse).abs()
    assert torch.isfinite(lse).all() and lse_err.max().item() <= 1e-2, \
        f"lse [{tag}]: max err {lse_err.max().item():.3g} at {lse_err.argmax().item()}"
    return out, lse


# Each case crosses several axes so the interpreter stays fast (docs/testing.md).
CASES = [
    dict(dtype=torch.float16, hq=4, hkv=4, dim=64, q_len=1, block_size=16, splits=1),
    dict(dtype=torch.bfloat16, hq=8, hkv=2, dim=128, q_len=3, block_size=48, splits=3, shared=True),
    dict(dtype=torch.float16, hq=8, hkv=1, dim=256, q_len=1, block_size=16, splits=4, kv_strided=True,
         meta_strided=True),
    dict(dtype=torch.bfloat16, hq=4, hkv=4, dim=80, q_len=2, block_size=1, splits=2,
         seq_lens=[2, 5, 9]),
    dict(dtype=torch.float16, hq=16, hkv=2, dim=64, q_len=16, block_size=32, splits=None,
         seq_lens=[16, 31, 70], q_strided=True),
    dict(dtype=torch.bfloat16, hq=8, hkv=8, dim=64, q_len=1, block_size=256, splits=2,
         seq_lens=[1, 255, 300]),
    # 3 x 8 = 24 rows > the 16-row tile allowed at D 256: two row chunks per KV head
    dict(dtype=torch.float16, hq=8, hkv=1, dim=256, q_len=3, block_size=16, splits=2,
         seq_lens=[3, 20]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(
    f"{k}={str(v).replace('torch.', '')}" for k, v in c.items() if k != "seq_lens"))
def test_decode_matches_reference(case):
    run_case(**case)


@pytest.mark.parametrize("feature", [
    dict(window_left=5), dict(window_left=0), dict(softcap=3.0), dict(alibi="heads"),
    dict(alibi="batch", window_left=20, softcap=8.0)])
@pytest.mark.parametrize("splits", [1, 3])
def test_decode_features(feature, splits):
    run_case(dtype=torch.bfloat16, hq=8, hkv=2, dim=64, q_len=2, block_size=16, splits=splits,
             seq_lens=[2, 15, 17, 40], **feature)


def test_decode_single_sequence():
    run_case(dtype=torch.float16, hq=2, hkv=1, dim=64, q_len=1, block_size=8, splits=None, seq_lens=[13])


@pytest.mark.parametrize("cache_dtype", FP8)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_fp8_cache(dtype, cache_dtype):
    run_case(dtype=dtype, cache_dtype=cache_dtype, hq=8, hkv=2, dim=64, q_len=2, block_size=16,
             splits=2, seq_lens=[3, 17, 33], scales=(0.05, 0.02))


def test_split_counts_agree():
    """Forcing more splits than tiles (empty splits) must change nothing beyond rounding."""
    o1, l1 = run_case(dtype=torch.float16, hq=4, hkv=1, dim=64, q_len=1, block_size=16,
                      splits=1, seq_lens=[1, 20, 100])
    torch.manual_seed(0)
    o8, l8 = run_case(dtype=torch.float16, hq=4, hkv=1, dim=64, q_len=1, block_size=16,
                      splits=8, seq_lens=[1, 20, 100])
    assert (o1.float() - o8.float()).abs().max().item() <= 2e-3
    assert (l1 - l8).abs().max().item() <= 1e-4


# --------------------------------------------------------------------------- merge

def torch_lowp_merge(oa, la, ob, lb):
    """The merge done by torch with the products in the outputs' dtype: error baseline."""
    m = torch.maximum(la, lb)
    wa, wb = torch.exp(la - m), torch.exp(lb - m)
    wa, wb = ((w / (wa + wb)).transpose(-1, -2)[..., None].to(oa.dtype) for w in (wa, wb))
    return oa * wa + ob * wb


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("batched", [False, True])
def test_merge_halves_equals_whole(dtype, batched):
    """Attention over keys [0, n) == merge of attention over [0, m) and [m, n)."""
    device = _device()
    b, sq, n, h, d = 2, 5, 23, 3, 40
    q = torch.randn(b, sq, h, d, device=device, dtype=dtype)
    k = torch.randn(b, n, h, d, device=device, dtype=dtype)
    v = torch.randn(b, n, h, d, device=device, dtype=dtype)
    args = (False, d ** -0.5, -1, -1, 0.0, None)
    whole, lse_w = ref.attention(q, k, v, *args)
    oa, la = ref.attention(q, k[:, :9], v[:, :9], *args)
    ob, lb = ref.attention(q, k[:, 9:], v[:, 9:], *args)
    if not batched:
        whole, lse_w, oa, la, ob, lb = (x[1] for x in (whole, lse_w, oa, la, ob, lb))
    # non-contiguous inputs: views through a transpose round trip
    oa = oa.transpose(-1, -2).contiguous().transpose(-1, -2)
    out, lse = L.merge_attention_states(oa, la, ob, lb)
    r_out, r_lse = ref.merge_attention_states(oa, la, ob, lb)
    assert out.dtype == dtype and lse.dtype == torch.float32
    check_close("merge out vs merge reference", out, r_out, torch_lowp_merge(oa, la, ob, lb), dtype)
    check_close("merge out vs whole", out, whole.float(), torch_lowp_merge(oa, la, ob, lb), dtype)
    assert (lse - lse_w).abs().max().item() <= 1e-5


def test_merge_empty_sides():
    """-inf on one side keeps the other exactly; both -inf gives 0 / -inf (no NaN), even
    when the empty side's out holds NaN."""
    device = _device()
    oa = torch.randn(4, 2, 16, device=device)
    ob = torch.full((4, 2, 16), float("nan"), device=device)
    la = torch.randn(2, 4, device=device)
    lb = torch.full((2, 4), float("-inf"), device=device)
    la[1, 2] = float("-inf")  # both sides empty for row 2, head 1
    ob[2, 1] = float("nan")
    out, lse = L.merge_attention_states(oa, la, ob, lb)
    assert torch.equal(out[2, 1], torch.zeros(16, device=device))
    assert lse[1, 2].item() == float("-inf")
    keep = torch.ones(4, 2, dtype=torch.bool, device=device)
    keep[2, 1] = False
    assert torch.equal(out[keep], oa[keep]), "one empty side must leave the other unchanged"
    assert torch.equal(lse.transpose(0, 1)[keep], la.transpose(0, 1)[keep])


def test_merge_is_stable_for_large_lse():
    """lse of +-1000 (exp overflows fp32) merges exactly like the reference."""
    device = _device()
    oa, ob = torch.randn(2, 3, 4, 32, device=device), torch.randn(2, 3, 4, 32, device=device)
    # lse [B=2, H=4, S=3]: per row 1000, -1000, 88 on side a; b differs by 1, -2, 0.5
    la = torch.tensor([1000.0, -1000.0, 88.0], device=device).view(1, 1, 3).expand(2, 4, 3).contiguous()
    lb = la - torch.tensor([1.0, -2.0, 0.5], device=device)
    out, lse = L.merge_attention_states(oa, la, ob, lb)
    r_out, r_lse = ref.merge_attention_states(oa, la, ob, lb)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert (out - r_out).abs().max().item() <= 1e-5 and (lse - r_lse).abs().max().item() <= 1e-3


def test_paged_split_then_merge():
    """Two paged calls whose key sets partition the sequence merge into the full result:
    the second half through a window, the first as its complement computed by the reference."""
    run = dict(dtype=torch.float16, hq=4, hkv=2, dim=64, q_len=1, block_size=16, seq_lens=[40, 33])
    kc, vc, table, sl = make_paged(run["seq_lens"], 16, 2, 64, torch.float16)
    q = torch.randn(2, 1, 4, 64, dtype=torch.float16, device=kc.device)
    scale = 0.125
    full, lse_full = L.paged_attention(q, kc, vc, table, sl, scale, -1, -1, 0.0, None, 1.0, 1.0,
                                       num_splits=1)
    # keys within distance 9 of the query (the last 10) vs the rest
    near, lse_near = L.paged_attention(q, kc, vc, table, sl, scale, 9, -1, 0.0, None, 1.0, 1.0,
                                       num_splits=1)
    far_o, far_l = [], []
    for s, n in enumerate(sl.tolist()):
        k = gather_kv(kc, table[s], n - 10, 1.0, torch.float16)[None]
        v = gather_kv(vc, table[s], n - 10, 1.0, torch.float16)[None]
        o, l = ref.attention(q[s:s + 1], k, v, False, scale, -1, -1, 0.0, None)
        far_o.append(o)
        far_l.append(l)
    out, lse = L.merge_attention_states(near, lse_near, torch.cat(far_o), torch.cat(far_l))
    assert (out.float() - full.float()).abs().max().item() <= 2e-3
    assert (lse - lse_full).abs().max().item() <= 1e-4


# --------------------------------------------------------------------------- write_kv_cache

def _bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t.view(torch.int16)


@pytest.mark.parametrize("cache_dtype,slot_dtype,d", [
    (torch.float16, torch.int64, 40), (torch.bfloat16, torch.int32, 40),
    (torch.float8_e4m3fn, torch.int64, 40), (torch.float8_e4m3fnuz, torch.int32, 40),
    (torch.float16, torch.int32, 1000)])  # 1000: two programs per token (head blocks)
def test_write_kv_cache(cache_dtype, slot_dtype, d):
    device = _device()
    nb, bs, hkv, t = 5, 48, 3, 11
    src_dtype = torch.bfloat16 if cache_dtype == torch.bfloat16 else torch.float16
    # Poisoned caches: random bit patterns (NaNs included) that must survive untouched.
    # k_cache is a view with a padded head axis (non-contiguous).
    es = torch.empty(0, dtype=cache_dtype).element_size()
    kc = torch.randint(0, 256, (nb, bs, hkv + 1, d * es), dtype=torch.uint8,
                       device=device).view(cache_dtype)[:, :, :hkv]
    vc = torch.randint(0, 256, (nb, bs, hkv, d * es), dtype=torch.uint8, device=device).view(cache_dtype)
    k = torch.randn(t, hkv, 2 * d, dtype=src_dtype, device=device)[..., ::2]  # non-contiguous
    v = torch.randn(t, hkv, d, dtype=src_dtype, device=device) * 30  # some fp8 values saturate
    slots = torch.randperm(nb * bs)[:t]
    slots[[0, 4, 10]] = -1
    slots = slots.to(slot_dtype).to(device)
    slots = torch.stack([slots, slots * 0 + 3], 1)[:, 0]  # a strided view
    assert not slots.is_contiguous()
    scales = (0.5, 0.03) if cache_dtype in FP8 else (1.0, 1.0)
    want_k, want_v = kc.clone(), vc.clone()
    ref.write_kv_cache(k, v, want_k, want_v, slots, *scales)
    before_k, before_v = kc.clone(), vc.clone()
    assert L.write_kv_cache(k, v, kc, vc, slots, *scales) is None
    for name, got, want, before in (("k_cache", kc, want_k, before_k), ("v_cache", vc, want_v, before_v)):
        diff = _bits(got) != _bits(want)
        assert not diff.any(), (f"{name} {cache_dtype}: {int(diff.sum())} elements differ from the "
                                f"reference write, first at {tuple(diff.nonzero()[0].tolist())}")
        touched = (_bits(got) != _bits(before)).flatten(2).any(-1)  # [nb, bs]: slots changed
        allowed = torch.zeros(nb * bs, dtype=torch.bool, device=device)
        allowed[slots[slots >= 0].long()] = True
        assert not (touched.flatten() & ~allowed).any(), f"{name}: a padding/unlisted slot was written"


# --------------------------------------------------------------------------- dispatch

def test_public_ops_choose_triton_when_asked():
    """pk.* with an explicit choice runs these kernels (bit-identical to the launcher)."""
    import polykernels as pk
    kc, vc, table, sl = make_paged([5, 40], 16, 2, 64, torch.bfloat16)
    q = torch.randn(2, 2, 8, 64, dtype=torch.bfloat16, device=kc.device)
    with pk.use(paged_attention="triton"):
        out, lse = pk.paged_attention(q, kc, vc, table, sl, window=(7, -1), return_lse=True)
    want, want_lse = L.paged_attention(q, kc, vc, table, sl, 64 ** -0.5, 7, -1, 0.0, None, 1.0, 1.0)
    assert torch.equal(out, want) and torch.equal(lse, want_lse)
    with pk.use(merge_attention_states="triton"):
        m, ml = pk.merge_attention_states(out, lse, out, lse)
    assert torch.allclose(m.float(), out.float(), atol=1e-2)
    assert torch.allclose(ml, lse + math.log(2), atol=1e-5)
    k = torch.randn(3, 2, 64, dtype=torch.bfloat16, device=kc.device)
    slots = torch.tensor([1, -1, 17], device=kc.device)
    kc2, vc2 = kc.clone(), vc.clone()
    with pk.use(write_kv_cache="triton"):
        pk.write_kv_cache(k, k, kc2, vc2, slots)
    # slot 1 = block 0, offset 1; slot 17 = block 1, offset 1 (block_size 16)
    assert torch.equal(kc2[0, 1], k[0]) and torch.equal(vc2[1, 1], k[2])
    kc2[0, 1], kc2[1, 1] = kc[0, 1], kc[1, 1]
    assert torch.equal(kc2.view(torch.int16), kc.view(torch.int16)), "write_kv_cache touched other slots"


# --------------------------------------------------------------------------- heuristics, supports

def test_num_splits_heuristic():
    # small batch, long context: split to fill 132 SMs, capped
    assert heuristics.num_splits(1, 8, 32768, 132, 64) == 33
    assert heuristics.num_splits(1, 1, 1 << 20, 132, 64) == heuristics.MAX_SPLITS
    # big batch already fills the machine
    assert heuristics.num_splits(256, 8, 32768, 132, 64) == 1
    # short context: never chunks shorter than MIN_TOKENS_PER_SPLIT
    assert heuristics.num_splits(1, 8, 512, 132, 64) == 2
    assert heuristics.num_splits(1, 8, 100, 132, 64) == 1


def test_supports_reasons():
    q = torch.zeros(2, 1, 8, 64, dtype=torch.float16)
    kc = torch.zeros(4, 16, 2, 64, dtype=torch.float16)
    bt = torch.zeros(2, 2, dtype=torch.int32)
    sl = torch.ones(2, dtype=torch.int32)
    args = [q, kc, kc, bt, sl, 0.1, -1, -1, 0.0, None, 1.0, 1.0]
    assert L.paged_attention_supports(*args) is None
    ok = list(args)  # no q_len limit: long rows are cut into prefill-sized row chunks
    ok[0] = torch.zeros(2, 300, 8, 64, dtype=torch.float16)
    assert L.paged_attention_supports(*ok) is None
    bad = list(args)
    bad[0] = torch.zeros(2, 1, 8, 320, dtype=torch.float16)
    bad[1] = bad[2] = torch.zeros(4, 16, 2, 320, dtype=torch.float16)
    assert "head_dim" in L.paged_attention_supports(*bad)
    ok = list(args)  # 16 x 8 = 128 rows: split over row chunks, still supported
    ok[0] = torch.zeros(2, 16, 16, 64, dtype=torch.float16)
    assert L.paged_attention_supports(*ok) is None
    bad = list(args)
    bad[1] = bad[2] = kc.to(torch.bfloat16)
    assert "differs" in L.paged_attention_supports(*bad)


# --------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("cache_dtype", [None, torch.float8_e4m3fn])
@pytest.mark.parametrize("splits", [1, None, 7])
def test_decode_gpu_larger(cache_dtype, splits):
    run_case(dtype=torch.bfloat16, cache_dtype=cache_dtype, hq=32, hkv=8, dim=128, q_len=1,
             block_size=16, splits=splits, seq_lens=[1, 15, 16, 17, 1000, 4099],
             scales=(0.05, 0.02) if cache_dtype else (1.0, 1.0))
