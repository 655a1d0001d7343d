"""Codegen of the Triton flash attention kernels for sm80, sm90, gfx90a and gfx942 (no GPU
needed): each vendor's default config must use the matrix instruction (mma.sync /
wgmma.mma_async / v_mfma) and must not spill.

The compiles run in one subprocess with TRITON_INTERPRET=0 (conftest turns the interpreter
on for this process, and interpreted kernels cannot be compiled).
"""
from __future__ import annotations

import inspect
import json
import os
import sys

import pytest
from codegen import compile_in_subprocess

TARGET_NAMES = ("sm80", "sm90", "gfx90a", "gfx942")
KINDS = ("fwd", "bwd_dkdv", "bwd_dq")
# kind:dtype:head_dim:features ; features = varlen + softcap + alibi (+ sinks, forward) variant
CASES = [f"{k}:{dt}:{d}:plain:{t}" for t in TARGET_NAMES for k in KINDS for d in (64, 128)
         for dt in ("fp16", "bf16")]
CASES += [f"fwd:fp16:256:plain:{t}" for t in TARGET_NAMES]
CASES += [f"{k}:bf16:256:plain:{t}" for t in TARGET_NAMES for k in KINDS[1:]]
# fp32 ("ieee" dots: FMA on NVIDIA, fp32 MFMA on AMD): spill-free, fits shared memory.
CASES += [f"{k}:fp32:{d}:plain:{t}" for t in ("sm90", "gfx942") for k in KINDS for d in (128, 256)]
CASES += [f"{k}:bf16:{d}:features:{t}" for t in TARGET_NAMES for k in KINDS for d in (64, 128)]
# causal / window forward: the hidden-NaN-V guard compiled in (configs_*.fwd_configs(masked=))
CASES += [f"fwd:{dt}:{d}:causal:{t}" for t in TARGET_NAMES for dt in ("fp16", "bf16")
          for d in (64, 128, 256)]
CASES += [f"fwd:fp32:{d}:causal:{t}" for t in ("sm90", "gfx942") for d in (128, 256)]
# MLA-style forward: q/k head dim 192, v head dim 128 (FlashAttention-3's d != dv case)
CASES += [f"fwd:bf16:192:mla:{t}" for t in TARGET_NAMES]

_MATRIX = {"sm80": "mma.sync", "sm90": "wgmma.mma_async", "gfx90a": "v_mfma", "gfx942": "v_mfma"}
# The dk/dv kernel at head_dim 256 keeps 32 keys per program (64 would spill on sm90), below
# wgmma's 64-row minimum: it uses mma.sync there (see configs_nvidia.bwd_dkdv_configs).
_MATRIX_OVERRIDE = {"bwd_dkdv:bf16:256:plain:sm90": "mma.sync"}
_MATRIX_OVERRIDE.update({c: "fma.rn.f32" for c in CASES if ":fp32:" in c and c.endswith(":sm90")})
_ARCH = {"sm80": (8, 0), "sm90": (9, 0), "gfx90a": "gfx90a", "gfx942": "gfx942"}
_DATA_PTRS = ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV", "LSE", "DELTA")


def _compile_case(case: str, cfg=None) -> dict:
    import torch

    from codegen import compile_for
    from polykernels.triton.flash_attention import backward, configs_amd, configs_nvidia, forward

    kind, dt, d, variant, target = case.split(":")
    d, features = int(d), variant == "features"
    masked = variant in ("features", "causal")   # the forward's hidden-NaN-V guard compiled in
    cfgs = configs_amd if target.startswith("gfx") else configs_nvidia
    if cfg is None:  # the vendor default for this shape
        extra = dict(masked=masked) if kind == "fwd" else {}
        cfg = getattr(cfgs, f"{kind}_configs")(d, getattr(torch, {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[dt]),
                                               _ARCH[target], features, **extra)[0]
    kernel = {"fwd": forward.attn_fwd_kernel, "bwd_dkdv": backward.attn_bwd_dkdv_kernel,
              "bwd_dq": backward.attn_bwd_dq_kernel}[kind]
    block_d = 16
    while block_d < d:
        block_d *= 2
    dv, block_dv = (128, 128) if variant == "mla" else (d, block_d)
    consts = dict(HEAD_DIM=d, BLOCK_D=block_d, HEAD_DIM_V=dv, BLOCK_DV=block_dv,
                  BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                  IS_VARLEN=features, HAS_SOFTCAP=features, HAS_ALIBI=features, HAS_SINKS=features,
                  MASKED=masked,
                  DOT_FP32=False,
                  PREC="ieee" if dt == "fp32" else None)
    sig, cx, div16 = {}, {}, []
    for name in kernel.arg_names:
        if name in consts:
            sig[name], cx[name] = "constexpr", consts[name]
        elif name.startswith("stride_") and name.endswith("d"):
            # head-dim strides are 1; the JIT specialises ints equal to 1 into constants.
            sig[name], cx[name] = "constexpr", 1
        elif name in _DATA_PTRS:
            sig[name] = "*fp32" if name in ("LSE", "DELTA") else f"*{dt}"
            div16.append(name)
        elif name in ("CU_Q", "CU_K"):
            sig[name] = "*i32"
        elif name in ("ALIBI", "SINKS"):
            sig[name] = "*fp32"
        elif name in ("sm_scale", "softcap"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            # batch/seq/head strides of [B, S, H, D] tensors are multiples of 16 for the
            # head dims compiled here (what the JIT sees at run time).
            if name.startswith("stride_") and not name.startswith(("stride_l", "stride_a")):
                div16.append(name)
    kwargs = {}
    if "divisible_by_16" in inspect.signature(compile_for).parameters:
        kwargs["divisible_by_16"] = tuple(div16)
    c = compile_for(kernel, target, sig, cx, cfg.launch_options(), **kwargs)
    return dict(has_matrix=_MATRIX_OVERRIDE.get(case, _MATRIX[target]) in c.asm, n_spills=c.n_spills, n_regs=c.n_regs,
                shared=c.shared, config=str(cfg))


@pytest.fixture(scope="module")
def compiled():
    """Compile every case in one interpreter-free subprocess; {case: result or error}."""
    return compile_in_subprocess(__file__)


@pytest.mark.parametrize("case", CASES)
def test_codegen(compiled, case):
    r = compiled[case]
    assert "error" not in r, f"{case}: compile failed: {r.get('error')}"
    target = case.split(":")[-1]
    want = _MATRIX_OVERRIDE.get(case, _MATRIX[target])
    assert r["has_matrix"], f"{case} ({r['config']}): no '{want}' in the assembly"
    assert r["n_spills"] == 0, f"{case} ({r['config']}): {r['n_spills']} spills, {r['n_regs']} registers"


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    results = {}
    for case in CASES:
        try:
            results[case] = _compile_case(case)
        except Exception as e:  # reported per case by the parent test
            results[case] = {"error": f"{type(e).__name__}: {str(e)[-1500:]}"}
    print(json.dumps(results))
