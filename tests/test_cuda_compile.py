"""CUDA C++ kernels (kernels/cuda/*.cu): compile checks here, correctness on a GPU.

1. nvcc compiles every .cu with the extension's own flags (kernels/_build_config.py: sm_80 and
   sm_90a) with warnings as errors, and ptxas reports no register spills. Compile only: this
   machine has no GPU. Skipped only when nvcc is absent.
2. The device code is torch-free (docs/testing.md: CPU torch wheels lack the CUDA headers).
3. -m gpu: the paged decode kernel against the reference (poisoned outputs via the caching
   allocator, forced split counts, awkward shapes), and its range checks of block ids and
   seq_lens (issue 14: NaN rows, never an out-of-bounds read).
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.join(ROOT, "kernels", "cuda")
CU_FILES = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu")))


def _nvcc():
    for cand in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc"):
        if cand and os.path.exists(cand):
            return cand
    return None


def test_there_are_cuda_sources():
    assert CU_FILES, "no kernels/cuda/*.cu found"


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not installed: the CUDA compile check needs the CUDA toolkit")
@pytest.mark.parametrize("path", CU_FILES, ids=os.path.basename)
def test_nvcc_compiles_without_warnings_or_spills(path, tmp_path):
    from polykernels import _build_config as cfg

    flags = cfg.nvcc_flags()
    assert "-gencode=arch=compute_80,code=sm_80" in flags and "-gencode=arch=compute_90a,code=sm_90a" in flags
    cmd = [_nvcc(), *flags, "-Werror", "all-warnings", "-Xptxas", "-v,-warn-spills,-warn-lmem-usage",
           "-I", CUDA_DIR, "-c", path, "-o", str(tmp_path / "out.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nvcc failed ({' '.join(cmd)}):\n{log[-6000:]}"
    spills = [m for m in re.finditer(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
              if int(m.group(1)) or int(m.group(2))]
    assert not spills, f"{os.path.basename(path)}: register spills: {[m.group(0) for m in spills]}"
    # Both architectures were actually compiled.
    assert "for 'sm_80'" in log and "for 'sm_90a'" in log, log[-2000:]


def test_device_code_is_torch_free():
    for path in CU_FILES + sorted(glob.glob(os.path.join(CUDA_DIR, "*.h"))):
        with open(path) as f:
            src = f.read()
        includes = re.findall(r'#include\s*[<"]([^>"]+)[>"]', src)
        bad = [i for i in includes if i.startswith(("torch/", "ATen/", "c10/", "pybind11"))]
        assert not bad, f"{os.path.basename(path)} includes torch headers: {bad}"


# --------------------------------------------------------------------------- GPU

def _poison_allocator():
    """Fill the caching allocator's free blocks with NaN so the C++ launcher's at::empty
    outputs start as NaN (it allocates them itself, so they cannot be passed in)."""
    x = torch.full((64 << 20,), float("nan"), device="cuda")
    del x


GPU_CASES = [
    dict(dtype=torch.float16, hq=8, hkv=8, dim=64, q_len=1, block_size=16),
    dict(dtype=torch.bfloat16, hq=32, hkv=8, dim=128, q_len=1, block_size=16),
    dict(dtype=torch.bfloat16, hq=28, hkv=4, dim=128, q_len=2, block_size=48),
    dict(dtype=torch.float16, hq=16, hkv=2, dim=256, q_len=2, block_size=32),
    dict(dtype=torch.bfloat16, hq=8, hkv=1, dim=128, q_len=2, block_size=16, window_left=37,
         softcap=20.0, alibi="batch"),
    dict(dtype=torch.float16, hq=4, hkv=4, dim=128, q_len=4, block_size=256, alibi="heads"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("splits", [1, 3, None])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "-".join(
    f"{k}={str(v).replace('torch.', '')}" for k, v in c.items()))
def test_cuda_paged_decode_matches_reference(case, splits):
    from test_paged_triton import check_close, make_paged, torch_lowp_paged

    from polykernels import reference as ref
    from polykernels.cuda import register as cuda_impl

    case = dict(case)
    dtype, hq, hkv, dim, q_len, bs = (case.pop(k) for k in ("dtype", "hq", "hkv", "dim", "q_len", "block_size"))
    window_left, softcap, alibi = case.pop("window_left", -1), case.pop("softcap", 0.0), case.pop("alibi", None)
    seq_lens = [max(q_len, n) for n in (1, bs - 1, bs, bs + 1, 1000, 3 * 128 + 5)]
    kc, vc, table, sl = make_paged(seq_lens, bs, hkv, dim, dtype, device="cuda")
    q = torch.randn(len(seq_lens), q_len, hq, dim, dtype=dtype, device="cuda")
    slopes = None
    if alibi == "heads":
        slopes = torch.rand(hq, device="cuda") * 0.1
    elif alibi == "batch":
        slopes = torch.rand(len(seq_lens), hq, device="cuda") * 0.1
    args = (q, kc, vc, table, sl, dim ** -0.5, window_left, -1, softcap, slopes, 1.0, 1.0)
    assert cuda_impl.paged_attention_supports(*args) is None
    _poison_allocator()
    out, lse = cuda_impl.paged_attention(*args, num_splits=splits)
    torch.cuda.synchronize()
    r_out, r_lse = ref.paged_attention(*args)
    base = torch_lowp_paged(q, kc, vc, table, sl, dim ** -0.5, window_left, softcap, slopes, 1.0, 1.0)
    check_close(f"cuda paged out [{dtype} {hq}/{hkv} D{dim} q_len {q_len} bs {bs} splits {splits}]",
                out, r_out, base, dtype)
    err = (lse - r_lse).abs()
    assert torch.isfinite(lse).all() and err.max().item() <= 1e-2, f"lse max err {err.max().item():.3g}"


@pytest.mark.gpu
def test_cuda_paged_decode_refusals_are_named():
    from polykernels.cuda import register as cuda_impl

    q = torch.zeros(2, 1, 8, 96, dtype=torch.float16, device="cuda")
    kc = torch.zeros(4, 16, 2, 96, dtype=torch.float16, device="cuda")
    bt = torch.zeros(2, 2, dtype=torch.int32, device="cuda")
    sl = torch.ones(2, dtype=torch.int32, device="cuda")
    assert "head_dim" in cuda_impl.paged_attention_supports(q, kc, kc, bt, sl, 0.1, -1, -1, 0.0, None, 1.0, 1.0)


def poisoned_index_case(device):
    """Issue 14 inputs: (args with bad seq_lens / block ids, the same args clean, nan_rows
    [num_seqs, q_len] bool: the rows that depend on a bad value)."""
    from test_paged_triton import make_paged

    dtype, hq, hkv, dim, q_len, bs = torch.float16, 8, 2, 128, 2, 16
    lens = [300, 200, 170, 90, 40, 161]
    kc, vc, table, sl = make_paged(lens, bs, hkv, dim, dtype, device=device)
    q = torch.randn(len(lens), q_len, hq, dim, dtype=dtype, device=device)
    bad_table, bad_sl = table.clone(), sl.clone()
    nan_rows = torch.zeros(len(lens), q_len, dtype=torch.bool, device=device)
    bad_sl[1] = table.shape[1] * bs + 1  # more keys than the table holds
    bad_table[2, 3] = kc.shape[0] + 5    # keys 48..63, seen by both query tokens
    bad_sl[3] = -4
    bad_sl[4] = 1                        # 0 < seq_len < q_len
    nan_rows[1:5] = True
    bad_table[5, 160 // bs] = -1         # key 160, the last: seen by query token 1 only
    nan_rows[5, 1] = True
    rest = (dim ** -0.5, -1, -1, 0.0, None, 1.0, 1.0)
    return (q, kc, vc, bad_table, bad_sl) + rest, (q, kc, vc, table, sl) + rest, nan_rows


@pytest.mark.gpu
@pytest.mark.parametrize("splits", [1, 3])
def test_cuda_paged_decode_poisons_bad_indices(splits):
    """Issue 14: an out-of-range block id or seq_len makes exactly the rows that depend on it
    NaN (out and lse; through the split merge too) and is never used to address memory; the
    other rows match the reference."""
    from test_paged_triton import check_close, torch_lowp_paged

    from polykernels import reference as ref
    from polykernels.cuda import register as cuda_impl

    args, clean, nan_rows = poisoned_index_case("cuda")
    _poison_allocator()
    out, lse = cuda_impl.paged_attention(*args, num_splits=splits)
    torch.cuda.synchronize()
    lse = lse.transpose(1, 2)  # [num_seqs, q_len, heads_q], rows indexed like out
    assert out[nan_rows].isnan().all() and lse[nan_rows].isnan().all()
    good = ~nan_rows
    r_out, r_lse = ref.paged_attention(*clean)
    base = torch_lowp_paged(*clean[:5], clean[5], clean[6], clean[8], clean[9], 1.0, 1.0)
    check_close(f"cuda paged rows without bad indices, splits {splits}", out[good], r_out[good],
                base[good], out.dtype)
    err = (lse[good] - r_lse.transpose(1, 2)[good]).abs()
    assert torch.isfinite(lse[good]).all() and err.max().item() <= 1e-2, f"lse max err {err.max().item():.3g}"
