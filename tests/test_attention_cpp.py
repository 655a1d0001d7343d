"""C++ CPU attention forward (dense + varlen) against the fp64 reference, on every ISA path.

Tolerance rule (docs/testing.md): the kernel's error against the fp64 reference must be at most
2x the error of the same attention computed by torch in the input dtype, plus a small
absolute floor (table below). Outputs and lse are poisoned with NaN before each call (the ops
take `out` / `lse`), so an element the kernel fails to write shows up as NaN.
"""
import math

import pytest
import torch

from polykernels import _extension
from polykernels import reference as ref
from polykernels.reference import attention_ref

pytestmark = pytest.mark.skipif(_extension.unavailable_reason() is not None,
                                reason=f"{_extension.unavailable_reason()}")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FLOOR = {torch.float32: 2e-5, torch.bfloat16: 2e-3, torch.float16: 5e-4}  # absolute floor
LSE_TOL = 2e-4   # lse is fp32 from exact inputs: same for every dtype


def C():
    return torch.ops.polykernels_C


def torch_same_dtype(q, k, v, causal, scale, wl, wr, softcap, alibi):
    """The same attention done by torch in the input dtype (the error baseline)."""
    dt = q.dtype
    hq, hk = q.shape[2], k.shape[2]
    k = k.repeat_interleave(hq // hk, dim=2)
    v = v.repeat_interleave(hq // hk, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    sq, sk = q.shape[1], k.shape[1]
    visible, d = attention_ref.visibility(sq, sk, causal, wl, wr, q.device)
    if alibi is not None:
        sl = alibi if alibi.dim() == 2 else alibi[None]
        s = s - (sl[:, :, None, None] * d.abs()[None, None]).to(dt)
    s = s.masked_fill(~visible, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", p.to(dt), v)


def check(name, out, lse, ro, rl, base):
    """out/lse vs the fp64 reference (ro, rl); base = torch same-dtype output."""
    assert not out.isnan().any(), f"{name}: NaN in out at {out.isnan().nonzero()[:5].tolist()} (unwritten?)"
    assert not lse.isnan().any(), f"{name}: NaN in lse at {lse.isnan().nonzero()[:5].tolist()}"
    err = (out.double() - ro).abs()
    base_err = (base.double() - ro).abs().max().item()
    tol = 2 * base_err + FLOOR[out.dtype]
    worst = err.argmax().item()
    assert err.max().item() <= tol, (
        f"{name}: out max err {err.max().item():.3e} at {list(torch.unravel_index(torch.tensor(worst), err.shape))}"
        f" > tol {tol:.3e} (torch {out.dtype} err {base_err:.3e})")
    ninf = torch.isinf(rl)
    assert torch.equal(torch.isinf(lse) & (lse < 0), ninf), f"{name}: -inf lse rows differ"
    lerr = (lse.double() - rl).abs()[~ninf]
    if lerr.numel():
        assert lerr.max().item() <= LSE_TOL * (1 + rl[~ninf].abs().max().item()), \
            f"{name}: lse max err {lerr.max().item():.3e}"


# (B, Sq, Sk, Hq, Hk, D, causal, window_left, window_right, softcap, alibi: None | "h" | "bh")
CASES = [
    (2, 37, 53, 4, 2, 64, True, -1, -1, 0.0, None),      # GQA 2, bottom-right causal, Sq < Sk
    (1, 70, 45, 3, 1, 80, True, -1, -1, 0.0, None),      # MQA, Sq > Sk: leading rows see nothing
    (1, 70, 70, 3, 1, 80, False, 5, 9, 0.0, None),       # two-sided window
    (2, 19, 130, 4, 4, 33, False, -1, -1, 20.0, "h"),    # odd head_dim, softcap, ALiBi [H]
    (1, 1, 100, 8, 2, 128, True, 16, -1, 0.0, "bh"),     # decode-like, window, ALiBi [B, H]
    (3, 5, 1, 2, 1, 8, False, -1, -1, 0.0, None),        # a single key
    (1, 66, 66, 16, 2, 48, False, 0, 0, 0.0, None),      # group 8, only the diagonal visible
    (1, 9, 20, 2, 1, 256, False, -1, 3, 5.0, "h"),       # large head_dim, right window only
]


def make(case, dtype, noncontig=False):
    B, Sq, Sk, Hq, Hk, D, causal, wl, wr, softcap, alibi = case
    if noncontig:
        # q as a [B, H, S, D] tensor viewed as [B, S, H, D]; k/v with a dim stride of 2.
        q = torch.randn(B, Hq, Sq, D, dtype=dtype).transpose(1, 2)
        k = torch.randn(B, Sk, Hk, 2 * D, dtype=dtype)[..., ::2]
        v = torch.randn(B, Hk, Sk, D, dtype=dtype).transpose(1, 2)
    else:
        q, k, v = (torch.randn(B, s, h, D, dtype=dtype) for s, h in ((Sq, Hq), (Sk, Hk), (Sk, Hk)))
    slopes = None
    if alibi == "h":
        slopes = torch.rand(Hq) * 0.5
    elif alibi == "bh":
        slopes = torch.rand(B, Hq) * 0.5
    return q, k, v, causal, 1 / math.sqrt(D), wl, wr, softcap, slopes


def run(q, k, v, causal, scale, wl, wr, softcap, slopes):
    out = torch.full_like(q, float("nan"))
    lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), float("nan"))
    o, l = C().cpu_attention_fwd(q, k, v, causal, scale, wl, wr, softcap, slopes, out, lse)
    assert o.data_ptr() == out.data_ptr() and l.data_ptr() == lse.data_ptr()
    return out, lse


def reference(q, k, v, causal, scale, wl, wr, softcap, slopes):
    ro, rl = ref.attention(q.double(), k.double(), v.double(), causal, scale, wl, wr, softcap,
                           None if slopes is None else slopes.double())
    return ro, rl.double()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_attention_cases(isa, dtype):
    for i, case in enumerate(CASES):
        args = make(case, dtype, noncontig=(i % 2 == 1))
        out, lse = run(*args)
        check(f"[{isa} {dtype} case {case} noncontig={i % 2 == 1}]", out, lse, *reference(*args),
              torch_same_dtype(*args))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_varlen(isa, dtype):
    # sequences of lengths incl. 0 and 1, q shorter than k; non-contiguous q (head-major).
    lens_q, lens_k = [5, 0, 1, 40, 17], [9, 3, 1, 40, 70]
    Hq, Hk, D = 4, 2, 40
    cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32)
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32)
    Tq, Tk = int(cu_q[-1]), int(cu_k[-1])
    q = torch.randn(Hq, Tq, D, dtype=dtype).transpose(0, 1)
    k, v = torch.randn(Tk, Hk, D, dtype=dtype), torch.randn(Tk, Hk, D, dtype=dtype)
    slopes = torch.rand(len(lens_q), Hq) * 0.3
    for causal, wl, wr, softcap, sl in ((True, -1, -1, 0.0, None), (False, 7, 2, 10.0, slopes)):
        out = torch.full_like(q, float("nan"))
        lse = torch.full((Hq, Tq), float("nan"))
        C().cpu_varlen_attention_fwd(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal,
                                     D ** -0.5, wl, wr, softcap, sl, out, lse)
        ro, rl = ref.varlen_attention(q.double(), k.double(), v.double(), cu_q, cu_k, max(lens_q),
                                      max(lens_k), causal, D ** -0.5, wl, wr, softcap,
                                      None if sl is None else sl.double())
        # baseline: per sequence, same dtype
        base = torch.zeros_like(q)
        for b in range(len(lens_q)):
            q0, q1, k0, k1 = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
            if q1 > q0 and k1 > k0:
                base[q0:q1] = torch_same_dtype(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], causal,
                                               D ** -0.5, wl, wr, softcap,
                                               None if sl is None else sl[b])[0]
        check(f"[{isa} {dtype} varlen causal={causal}]", out, lse, ro, rl.double(), base)


def test_threads_identical():
    """Each output is computed by one work item in a fixed order: 1 and 2 threads agree bitwise."""
    _extension.load()
    args = make((2, 77, 90, 8, 2, 64, True, -1, -1, 0.0, "h"), torch.bfloat16)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        o1, l1 = run(*args)
        torch.set_num_threads(2)
        o2, l2 = run(*args)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(o1, o2) and torch.equal(l1, l2)


def test_allocates_without_out_and_validates():
    _extension.load()
    q, k, v, causal, scale, wl, wr, softcap, slopes = make(CASES[0], torch.float32)
    o, l = C().cpu_attention_fwd(q, k, v, causal, scale, wl, wr, softcap, slopes)
    ro, rl = reference(q, k, v, causal, scale, wl, wr, softcap, slopes)
    assert (o.double() - ro).abs().max() < 1e-5 and (l.double() - rl).abs().max() < 1e-4
    # no keys at all: every row gives 0 and lse -inf (never NaN)
    q0, k0 = torch.randn(1, 3, 2, 16), torch.randn(1, 0, 1, 16)
    out = torch.full_like(q0, float("nan"))
    lse = torch.full((1, 2, 3), float("nan"))
    C().cpu_attention_fwd(q0, k0, k0, False, 0.25, -1, -1, 0.0, None, out, lse)
    assert torch.equal(out, torch.zeros_like(out)) and bool((lse == float("-inf")).all())
    with pytest.raises(RuntimeError, match="heads_q"):
        C().cpu_attention_fwd(q, k[:, :, :1].expand(-1, -1, 3, -1), v[:, :, :1].expand(-1, -1, 3, -1),
                              causal, scale, wl, wr, softcap, None)
    with pytest.raises(RuntimeError, match="alibi_slopes"):
        C().cpu_attention_fwd(q, k, v, causal, scale, wl, wr, softcap, torch.rand(3))


def test_dispatch_picks_cpp():
    import polykernels as pk
    q, k, v = (torch.randn(1, 33, 4, 32, dtype=torch.bfloat16) for _ in range(3))
    with pk.use(attention="cpp"):
        out = pk.attention(q, k, v, causal=True)
    ro, _ = reference(q, k, v, True, 32 ** -0.5, -1, -1, 0.0, None)
    assert (out.double() - ro).abs().max() < 2e-2
