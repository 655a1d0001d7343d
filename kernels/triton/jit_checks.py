"""@triton.jit helpers shared by the attention kernel families for the inputs the kernels do
not trust (docs/dispatch.md, "Index values"; issue 14). Imports triton: kernels only (the
registry imports ``triton.common``, which must not).
"""
import triton
import triton.language as tl


@triton.jit
def cu_seqlens_ok(CU, num_seqs, total, max_len, CHUNK: tl.constexpr):
    """Whether offsets CU[0..num_seqs] start at 0, end at total, never decrease and hold no run
    above max_len. Every program scans them all (num_seqs + 1 ints, cache-resident; no host
    sync, no extra launch): one bad run can make two good-looking ones overlap, so no program
    can judge its own run alone. Differences cannot overflow before the first violation (up
    to it every entry lies in [0, total]; later ones do not change the answer)."""
    bad = 0
    for i0 in range(0, num_seqs + 1, CHUNK):
        i = i0 + tl.arange(0, CHUNK)
        c = tl.load(CU + i, mask=i <= num_seqs, other=0)
        n = tl.load(CU + i + 1, mask=i < num_seqs, other=0)
        wrong = (((i == 0) & (c != 0)) | ((i == num_seqs) & (c != total))
                 | ((i < num_seqs) & ((n < c) | (n - c > max_len))))
        bad += tl.sum(wrong.to(tl.int32), 0)
    return bad == 0


@triton.jit
def zero_nonfinite(v):
    """(v with its NaN / inf entries 0, per key row: 1.0 where the row held one) for a key tile
    whose keys some rows see and others do not. A NaN / inf in V would reach every row through
    its 0 weight (0 * NaN = NaN), seen or not; ``nan_rows_seeing`` then gives the rows that do
    see one a NaN denominator, which their out and lse inherit (a row that sees an infinity
    gets NaN, not inf). The test is on fp32: the interpreter compares bf16 by bit pattern.
    The reductions' forms are the ones that compile spill-free (tests/test_codegen_*.py):
    float sums for fp32 tiles, an integer min otherwise."""
    finite = tl.abs(v.to(tl.float32)) < float("inf")   # NaN, +-inf: False
    if v.dtype == tl.float32:
        key_special = tl.sum(tl.where(finite, 0.0, 1.0), 1)
    else:
        key_special = 1.0 - tl.min(finite.to(tl.int32), 1).to(tl.float32)
    return tl.where(finite, v, 0.0), key_special


@triton.jit
def nan_rows_seeing(key_special, seen, l_i):
    """l_i NaN for the rows that see (``seen`` [rows, keys]) a key ``zero_nonfinite`` marked."""
    sees = tl.sum(tl.where(seen, key_special[None, :], 0.0), 1) > 0.0
    return tl.where(sees, float("nan"), l_i)
