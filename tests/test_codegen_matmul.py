"""Codegen of the Triton matmul family, compiled ahead of time (no GPU needed) for sm80,
sm90, gfx90a and gfx942 with each kernel's default config for a representative shape:
the expected matrix instruction must appear and nothing may spill.

The compiles run in one subprocess with TRITON_INTERPRET=0 (conftest turns the
interpreter on for this process, and interpreted kernels cannot be compiled); each test
then checks its case. Pointers and shape/stride integers are marked divisible by 16 and
unit strides are constexpr 1, as the JIT specialises them at run time for aligned tensors
with dims that are multiples of 16.

The same cases were also compiled with Triton 3.6 (the GPU reference machines' version,
installed beside 3.9 with ``pip install --target``): all 64 clean there too. That check
caught two 3.6-only problems now fixed in the kernels: an int8 dot needs an explicit
``out_dtype=tl.int32``, and reading each int4 byte twice (k // 2 addressing) spilled
1.3-1.6 KB on NVIDIA, unlike loading the packed bytes once and interleaving the nibbles.
"""
from __future__ import annotations

import json
import os
import re
import sys

import pytest
from codegen import compile_in_subprocess

TARGETS = ("sm80", "sm90", "gfx90a", "gfx942")
ARCH = {"sm80": (8, 0), "sm90": (9, 0), "gfx90a": "gfx90a", "gfx942": "gfx942"}
UNIT_STRIDES = {"stride_ak", "stride_bn", "stride_cn", "stride_xk", "stride_qk", "stride_sg",
                "stride_zg", "stride_wn"}
MATRIX_OPS = r"(wgmma\.mma_async\S*|mma\.sync\S*|v_mfma\S*)"

# What each case must use (what Triton 3.9 emits, checked by hand): the architecture's
# matrix instruction for the operand type. wgmma needs M tiles of 64, so the BLOCK_M=16
# GEMV config uses mma.sync on sm90; int8 on sm80 is the saturating s8 mma (int32
# accumulation cannot overflow for K < 2**17 anyway). sm80 and gfx90a have no fp8 matrix
# units (Triton refuses e4m3 on sm80), so scaled fp8 is not compiled there and
# register.scaled_matmul_supports refuses it.
_SM80 = {"fp16": "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
         "bf16": "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
         "fp32tf32": "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
         "i8": "mma.sync.aligned.m16n8k32.row.col.satfinite.s32.s8.s8.s32"}
_SM90 = {"fp16": ".f32.f16.f16", "bf16": ".f32.bf16.bf16", "fp32tf32": ".f32.tf32.tf32",
         "fp8e4nv": ".f32.e4m3.e4m3", "i8": ".s32.s8.s8"}
_GFX90A = {"fp16": "v_mfma_f32_16x16x16f16", "bf16": "v_mfma_f32_16x16x16bf16_1k",
           "i8": "v_mfma_i32_16x16x16i8"}
_GFX942 = {"fp16": "v_mfma_f32_16x16x16_f16", "bf16": "v_mfma_f32_16x16x16_bf16",
           "fp8e4b8": "v_mfma_f32_16x16x32_fp8_fp8", "i8": "v_mfma_i32_16x16x32_i8"}


def _expected(case: str, target: str) -> str | None:
    kind, dt, variant, _ = case.split(":")
    if kind == "splitk":
        return None  # pure reduction: no dot; only the no-spill check applies
    if target == "sm80":
        return _SM80[dt]
    if target == "sm90":
        if kind == "wo" and variant.startswith("M1-"):
            return _SM80[dt]
        return "wgmma.mma_async.sync.aligned.m64n" if dt not in _SM90 else \
            ("wgmma.mma_async.sync.aligned", _SM90[dt])
    return (_GFX90A if target == "gfx90a" else _GFX942)[dt]


def _kernel_cases():
    """Case ids ``kind:dtype:shape/variant:target``; every kernel on every target."""
    cases = []
    for t in TARGETS:
        nv = not t.startswith("gfx")
        for dt in ("fp16", "bf16"):
            cases += [f"gemm:{dt}:M4096-gelu:{t}", f"gemm:{dt}:M4096-none:{t}",
                      f"gemm:{dt}:M16-split4:{t}"]
            cases += [f"wo:{dt}:M1-int4-split4:{t}", f"wo:{dt}:M4096-int4:{t}"]
            cases += [f"grouped:{dt}:T4096:{t}"]
        cases += [f"wo:fp16:M1-int8-split4:{t}"]
        if nv:
            cases.append(f"gemm:fp32tf32:M4096-none:{t}")
        fp8 = {"gfx942": "fp8e4b8", "sm90": "fp8e4nv"}.get(t)
        if fp8:
            cases.append(f"scaled:{fp8}:M4096:{t}")
        cases += [f"scaled:i8:M4096:{t}", f"splitk:bf16:M16:{t}"]
    return cases


CASES = _kernel_cases()
TORCH_DT = {"fp16": "float16", "bf16": "bfloat16", "fp32tf32": "float32", "i8": "int8",
            "fp8e4nv": "float8_e4m3fn", "fp8e4b8": "float8_e4m3fnuz"}


def _compile_case(case: str) -> dict:
    import torch

    from codegen import compile_for
    from polykernels.triton.matmul import (configs_amd, configs_nvidia, gemm, grouped, scaled,
                                           splitk, weight_only)

    kind, dt, variant, target = case.split(":")
    cfgs = configs_amd if target.startswith("gfx") else configs_nvidia
    arch = ARCH[target]
    tdt = getattr(torch, TORCH_DT[dt])
    tri = "fp32" if dt == "fp32tf32" else dt
    M = int(variant.split("-")[0][1:])
    split = int(variant.split("split")[1]) if "split" in variant else 1
    cfg = None
    if kind == "gemm":
        act = 2 if "gelu" in variant else 0
        cfg = cfgs.gemm(arch, M, 4096, 4096, tdt, act)[0]
        kernel = gemm._gemm_kernel
        ptrs = dict(a_ptr=tri, b_ptr=tri, c_ptr=tri, bias_ptr=tri, ws_ptr="fp32")
        consts = dict(HAS_BIAS=True, ACT=act, SPLIT_K=split, EVEN_K=True,
                      PRECISION="tf32" if dt == "fp32tf32" else None, DOT_FP32=False)
    elif kind == "scaled":
        cfg = cfgs.scaled(arch, M, 4096, 4096, tdt)[0]
        kernel = scaled._scaled_gemm_kernel
        ptrs = dict(a_ptr=tri, b_ptr=tri, c_ptr="bf16", sa_ptr="fp32", sb_ptr="fp32",
                    bias_ptr="bf16")
        consts = dict(ROW_SCALE_A=True, COL_SCALE_B=True, HAS_BIAS=True, IS_INT=dt == "i8",
                      EVEN_K=True)
    elif kind == "wo":
        bits = 4 if "int4" in variant else 8
        cfg = cfgs.weight_only(arch, M, 4096, 4096, bits, 128)[0]
        kernel = weight_only._weight_only_kernel
        ptrs = dict(x_ptr=tri, q_ptr="u8", s_ptr=tri, z_ptr=tri, c_ptr=tri, bias_ptr=tri,
                    ws_ptr="fp32")
        consts = dict(BITS=bits, HAS_ZEROS=True, HAS_BIAS=True, SPLIT_K=split, EVEN_K=True,
                      TILE_SCALE=True, PRECISION=None, DOT_FP32=False)
    elif kind == "grouped":
        cfg = cfgs.grouped(arch, M, 4096, 4096, 8, tdt)[0]
        kernel = grouped._grouped_gemm_kernel
        ptrs = dict(x_ptr=tri, w_ptr=tri, c_ptr=tri, sizes_ptr="i32")
        consts = dict(EVEN_K=True, PRECISION=None, DOT_FP32=False)
    else:
        kernel = splitk._splitk_reduce_kernel
        ptrs = dict(ws_ptr="fp32", c_ptr=tri, bias_ptr=tri)
        consts = dict(HAS_BIAS=True, ACT=2, BLOCK_M=splitk.BLOCK, BLOCK_N=splitk.BLOCK)
    if cfg is not None:
        consts.update(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=8)
        options = cfg.launch_options()
    else:
        options = {"num_warps": 4, "num_stages": 1}
    sig, div16, cx = {}, [], {}
    for name in kernel.arg_names:
        if name in ptrs:
            sig[name] = "*" + ptrs[name]
            div16.append(name)
        elif name in consts:
            sig[name] = "constexpr"
            cx[name] = consts[name]
        elif name in UNIT_STRIDES:
            sig[name] = "constexpr"
            cx[name] = 1
        else:
            sig[name] = "i32"
            div16.append(name)
    c = compile_for(kernel, target, sig, cx, options, tuple(div16))
    return dict(asm_ops=sorted(set(re.findall(MATRIX_OPS, c.asm))), n_spills=c.n_spills,
                n_regs=c.n_regs, shared=c.shared, config=str(cfg))


@pytest.fixture(scope="module")
def compiled():
    """Compile every case in one interpreter-free subprocess; {case: result or error}."""
    return compile_in_subprocess(__file__)


@pytest.mark.parametrize("case", CASES)
def test_codegen(compiled, case):
    r = compiled[case]
    assert "error" not in r, f"{case}: compile failed: {r.get('error')}"
    print(case, r)
    want = _expected(case, case.split(":")[-1])
    if want is not None:
        parts = want if isinstance(want, tuple) else (want,)
        assert any(all(p in op for p in parts) for op in r["asm_ops"]), \
            f"{case} ({r['config']}): expected {parts}, found {r['asm_ops']}"
    elif case.startswith("splitk"):
        assert not r["asm_ops"], f"{case}: unexpected matrix ops {r['asm_ops']}"
    assert r["n_spills"] == 0, f"{case} ({r['config']}): {r['n_spills']} spill bytes, {r['n_regs']} regs"


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    out = {}
    for case in CASES:
        try:
            out[case] = _compile_case(case)
        except Exception as e:  # reported per case by the test
            out[case] = {"error": f"{type(e).__name__}: {str(e)[-2000:]}"}
    print(json.dumps(out))
