"""C++ CPU paged decode and KV-cache writes against the reference, on every ISA path.

Paged: out/lse poisoned with NaN before each call; tolerance = 2x the error of the same
attention done by torch in the query dtype (over the dequantised gathered K/V) + a floor.
KV writes: compared bit for bit with the reference (conversions are round-to-nearest-even in
both), untouched slots must keep their NaN poison.
"""
import math

import pytest
import torch

from polykernels import _extension
from polykernels import reference as ref
from polykernels.reference.paged_ref import gather_kv

from _threads import at_thread_counts
from test_attention_cpp import FLOOR, LSE_TOL, torch_same_dtype

pytestmark = pytest.mark.skipif(_extension.unavailable_reason() is not None,
                                reason=f"{_extension.unavailable_reason()}")
FP8 = torch.float8_e4m3fn


def C():
    return torch.ops.polykernels_C


def make_cache(num_blocks, block_size, hk, d, dtype, noncontig):
    if noncontig:  # head_dim slice of a wider buffer: token/head strides are not the packed ones
        return torch.randn(num_blocks, block_size, hk, d + 7)[..., :d].to(dtype) if dtype != FP8 else None
    return torch.randn(num_blocks, block_size, hk, d).to(dtype)


def paged_case(dtype, cache_fp8, seq_lens, q_len, hq, hk, d, block_size, window_left=-1, softcap=0.0,
               alibi=False, noncontig=False):
    S = len(seq_lens)
    nblk = [(L + block_size - 1) // block_size for L in seq_lens]
    max_blocks = max(nblk) + 1
    num_blocks = sum(nblk) + 3
    if cache_fp8:
        kf, vf = (torch.randn(num_blocks, block_size, hk, d) for _ in range(2))
        k_scale, v_scale = kf.abs().max().item() / 448 * 1.5, vf.abs().max().item() / 448 * 0.7
        k_cache, v_cache = (kf / k_scale).clamp(-448, 448).to(FP8), (vf / v_scale).clamp(-448, 448).to(FP8)
    else:
        k_scale = v_scale = 1.0
        k_cache = make_cache(num_blocks, block_size, hk, d, dtype, noncontig)
        v_cache = make_cache(num_blocks, block_size, hk, d, dtype, noncontig)
    perm = torch.randperm(num_blocks).to(torch.int32)
    bt = torch.zeros(max_blocks, S, dtype=torch.int32)  # transposed below: non-contiguous table
    pos = 0
    for s, n in enumerate(nblk):
        bt[:n, s] = perm[pos:pos + n]
        pos += n
    bt[-1, :] = perm[0]  # unused tail entries point anywhere
    if S > 1 and nblk[0] > 0 and nblk[1] > 0:
        bt[0, 1] = bt[0, 0]  # a shared prefix block
    block_table = bt.t()
    seq = torch.tensor(seq_lens, dtype=torch.int32)
    if noncontig:
        q = torch.randn(S, hq, q_len, d, dtype=dtype).transpose(1, 2)
    else:
        q = torch.randn(S, q_len, hq, d, dtype=dtype)
    slopes = torch.rand(S, hq) * 0.2 if alibi else None
    return (q, k_cache, v_cache, block_table, seq, 1 / math.sqrt(d), window_left, -1, softcap, slopes,
            k_scale, v_scale)


def run_paged(args):
    q = args[0]
    out = torch.full_like(q, float("nan"))
    lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), float("nan"))
    C().cpu_paged_attention(*args, out=out, lse=lse)
    return out, lse


def check_paged(name, args):
    q, k_cache, v_cache, block_table, seq, scale, wl, wr, softcap, slopes, k_scale, v_scale = args
    out, lse = run_paged(args)
    assert not out.isnan().any(), f"{name}: NaN in out at {out.isnan().nonzero()[:5].tolist()}"
    assert not lse.isnan().any(), f"{name}: NaN in lse"
    ro, rl = ref.paged_attention(q.double(), k_cache, v_cache, block_table, seq, scale, wl, wr, softcap,
                                 None if slopes is None else slopes.double(), k_scale, v_scale)
    worst, base_worst = 0.0, 0.0
    for s, L in enumerate(seq.tolist()):
        k = gather_kv(k_cache, block_table[s], L, k_scale, q.dtype)
        v = gather_kv(v_cache, block_table[s], L, v_scale, q.dtype)
        base = torch_same_dtype(q[s:s + 1], k[None], v[None], True, scale, wl, wr, softcap,
                                None if slopes is None else slopes[s])[0]
        base_worst = max(base_worst, (base.double() - ro[s]).abs().max().item())
        worst = max(worst, (out[s].double() - ro[s]).abs().max().item())
    tol = 2 * base_worst + FLOOR[q.dtype]
    assert worst <= tol, f"{name}: out max err {worst:.3e} > tol {tol:.3e} (torch {q.dtype} err {base_worst:.3e})"
    ninf = torch.isinf(rl)
    assert torch.equal(torch.isinf(lse), ninf), f"{name}: -inf lse rows differ"
    lerr = (lse.double() - rl.double()).abs()[~ninf].max().item()
    assert lerr <= LSE_TOL * (1 + rl[~ninf].abs().max().item()), f"{name}: lse err {lerr:.3e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_paged(isa, dtype):
    # 2 sequences x 2 KV heads: few items, so the longest is split (merge exercised); the
    # short one leaves most splits empty.
    check_paged(f"[{isa} {dtype} split]", paged_case(dtype, False, [1100, 3], 1, 8, 2, 64, 16))
    check_paged(f"[{isa} {dtype} q_len 3 window alibi softcap noncontig]",
                paged_case(dtype, False, [37, 3, 90], 3, 6, 3, 40, 5, window_left=20, softcap=15.0,
                           alibi=True, noncontig=True))
    check_paged(f"[{isa} {dtype} MQA D 128]", paged_case(dtype, False, [200, 64], 2, 4, 1, 128, 32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_paged_row_tiles(isa, dtype):
    # The pack-free decode path (<= 8 rows per KV head; the AVX2 path) tiles rows by 4, 2 and 1
    # and the head dim by 8 / R vectors with a one-vector tail: 5 rows (4 + 1), 3 rows x 2 tokens, MHA
    # (1 row) with D 24 (tail chunks), 7 rows with a key count that leaves a partial key tile.
    check_paged(f"[{isa} {dtype} 5 rows D 48]", paged_case(dtype, False, [301, 9], 1, 5, 1, 48, 16))
    check_paged(f"[{isa} {dtype} 3x2 rows D 40]", paged_case(dtype, False, [77, 130], 2, 6, 2, 40, 8,
                                                               window_left=50))
    check_paged(f"[{isa} {dtype} MHA D 24]", paged_case(dtype, False, [1, 61, 250], 1, 3, 3, 24, 16, alibi=True))
    check_paged(f"[{isa} {dtype} 7 rows D 136]", paged_case(dtype, False, [131, 5], 1, 14, 2, 136, 32,
                                                             softcap=20.0))
    # row tiles of 4 + 2 (6 rows), and MHA (1 row per KV head) with a wider head dim
    check_paged(f"[{isa} {dtype} 6 rows D 48]", paged_case(dtype, False, [90, 33], 1, 12, 2, 48, 16))
    check_paged(f"[{isa} {dtype} MHA D 64]", paged_case(dtype, False, [75, 2], 1, 2, 2, 64, 16, alibi=True))
    # decode items cover up to 64 query rows of several KV heads: 9 KV heads of 8 rows = 8 + 1
    check_paged(f"[{isa} {dtype} 9 KV heads x 8 rows]", paged_case(dtype, False, [300, 17], 1, 72, 9, 32, 16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_paged_fp8(isa, dtype):
    check_paged(f"[{isa} {dtype} fp8]", paged_case(dtype, True, [700, 50, 1], 1, 8, 2, 64, 16, alibi=True))
    check_paged(f"[{isa} {dtype} fp8 odd D]", paged_case(dtype, True, [33, 20], 4, 2, 1, 33, 8, window_left=9))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_fp8_every_code(isa, dtype):
    # Every finite e4m3 code (normal, subnormal, both zeros) in K and V, read by the decode
    # path's in-register widening (AVX2) or the lookup table (elsewhere), against the reference.
    every = torch.tensor([c for c in range(256) if c & 0x7F != 0x7F], dtype=torch.uint8)
    subnormal = torch.tensor([c for c in range(256) if c & 0x78 == 0], dtype=torch.uint8)
    for codes in (every, subnormal):   # (the second alone: subnormals are lost among the normals)
        _fp8_codes_case(isa, dtype, codes)


def _fp8_codes_case(isa, dtype, codes):
    seq_lens, hq, hk, d, bs = [254, 37], 8, 2, 64, 16
    nblk = sum((n + bs - 1) // bs for n in seq_lens) + 1
    n = nblk * bs * hk * d
    k_cache = codes[torch.arange(n) % len(codes)].view(nblk, bs, hk, d).view(FP8)
    v_cache = codes[torch.randperm(n) % len(codes)].view(nblk, bs, hk, d).view(FP8)
    table = torch.randperm(nblk).to(torch.int32)
    block_table = torch.stack([table[:17], table[3:20]])   # (shared blocks are fine to read)
    q = torch.randn(2, 1, hq, d, dtype=dtype) / 64
    args = (q, k_cache, v_cache, block_table, torch.tensor(seq_lens, dtype=torch.int32), 1 / math.sqrt(d),
            -1, -1, 0.0, None, 0.01, 0.02)
    check_paged(f"[{isa} {dtype} fp8 {len(codes)} codes]", args)
    # a NaN code in a V row the query sees makes its output NaN; the other sequence is untouched
    bad = v_cache.view(torch.uint8).clone()
    bad[block_table[0, 1].item(), 5, 1, 7] = 0x7F   # a block only sequence 0 reads
    out, lse = run_paged((q, k_cache, bad.view(FP8), *args[3:]))
    good, _ = run_paged(args)
    nan = out[0, 0].isnan()   # [hq, d]: KV head 1's query heads 4..7, dim 7 only
    assert nan[4:8, 7].all() and int(nan.sum()) == 4
    assert torch.equal(out[1], good[1])


def test_paged_threads_identical():
    _extension.load()
    args = paged_case(torch.bfloat16, False, [1500, 40], 1, 8, 2, 64, 16)
    (o1, l1), (o2, l2) = at_thread_counts(lambda: run_paged(args))
    assert torch.equal(o1, o2) and torch.equal(l1, l2)


def test_paged_rejects_bad_block_table():
    _extension.load()
    args = list(paged_case(torch.float32, False, [40], 1, 2, 1, 16, 16))
    args[3] = args[3].clone()
    args[3][0, 1] = 10_000
    with pytest.raises(RuntimeError, match="block_table"):
        C().cpu_paged_attention(*args)


def _poisoned(cache):
    if cache.dtype == FP8:
        return torch.full(cache.shape, 0x7F, dtype=torch.uint8).view(FP8)  # NaN code
    return torch.full_like(cache, float("nan"))


def _same_bits(a, b):
    return torch.equal(a.view(torch.uint8) if a.dtype == FP8 else a.view(torch.int16 if a.element_size() == 2 else torch.int32),
                       b.view(torch.uint8) if b.dtype == FP8 else b.view(torch.int16 if b.element_size() == 2 else torch.int32))


@pytest.mark.parametrize("src_dtype,cache_dtype", [
    (torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
    (torch.float32, torch.bfloat16), (torch.bfloat16, FP8), (torch.float16, FP8), (torch.float32, FP8)], ids=str)
def test_write_kv_cache(src_dtype, cache_dtype):
    _extension.load()
    T, H, D, NB, BS = 13, 3, 24, 5, 4
    k = torch.randn(T, H, 2 * D, dtype=src_dtype)[..., ::2] * 30   # non-contiguous, beyond fp8 range
    v = torch.randn(H, T, D, dtype=src_dtype).transpose(0, 1)
    slots = torch.randperm(NB * BS)[:T]
    slots[[2, 7]] = -1
    shape = (NB, BS, H, D)
    proto = torch.zeros(shape, dtype=cache_dtype)
    for slot_dtype in (torch.int64, torch.int32):
        kc, vc = _poisoned(proto), _poisoned(proto)
        rk, rv = _poisoned(proto), _poisoned(proto)
        C().cpu_write_kv_cache(k, v, kc, vc, slots.to(slot_dtype), 0.05, 0.02)
        ref.write_kv_cache(k, v, rk, rv, slots.to(slot_dtype), 0.05, 0.02)
        assert _same_bits(kc, rk), f"k cache differs ({src_dtype} -> {cache_dtype})"
        assert _same_bits(vc, rv), f"v cache differs ({src_dtype} -> {cache_dtype})"


def test_fp8_conversion_matches_torch():
    """Every rounding case: ties, subnormals, the largest values, saturation, NaN, signed zero."""
    _extension.load()
    x = torch.cat([torch.linspace(-500, 500, 20001), torch.linspace(-0.02, 0.02, 4001),
                   torch.tensor([448.0, 464.0, 465.0, -464.0, 2.0 ** -9, 2.0 ** -10, 3 * 2.0 ** -10,
                                 1.0 + 1 / 16, 1.0 + 3 / 16, -0.0, float("nan")])])
    # all 256 codes and their midpoints
    codes = torch.arange(256, dtype=torch.uint8).view(FP8).float()
    codes = codes[torch.isfinite(codes)].sort().values
    x = torch.cat([x, codes, (codes[1:] + codes[:-1]) / 2])
    n = x.numel()
    src = x.reshape(n, 1, 1)
    cache = torch.zeros(n, 1, 1, 1, dtype=FP8)
    C().cpu_write_kv_cache(src, src, cache, torch.zeros_like(cache), torch.arange(n), 1.0, 1.0)
    want = x.clamp(-448, 448).to(FP8)
    got, exp = cache.view(torch.uint8).flatten(), want.view(torch.uint8)
    bad = (got != exp).nonzero().flatten()
    assert bad.numel() == 0, f"{bad.numel()} mismatches, e.g. x={x[bad[:5]].tolist()} got {got[bad[:5]].tolist()} want {exp[bad[:5]].tolist()}"


def test_dispatch_picks_cpp_paged():
    import polykernels as pk
    args = paged_case(torch.bfloat16, False, [70, 5], 1, 4, 2, 32, 16)
    q, kc, vc, bt, seq = args[:5]
    with pk.use(paged_attention="cpp"):
        out = pk.paged_attention(q, kc, vc, bt, seq)
    ro, _ = ref.paged_attention(q.double(), kc, vc, bt, seq, 32 ** -0.5, -1, -1, 0.0, None, 1.0, 1.0)
    assert (out.double() - ro).abs().max() < 2e-2
