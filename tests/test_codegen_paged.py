"""Ahead-of-time codegen of the paged attention kernels for sm80, sm90, gfx90a and gfx942
(uniform q_len and packed varlen queries).

The decode kernel's two dots (QK^T, PV) must become matrix instructions on every target for
the GQA-packed tile (16+ rows) and nothing may spill. The reduce, merge and write kernels have
no tl.dot (they are elementwise/bandwidth kernels), so for them only "no spills" is asserted.
Configs come from the same configs_nvidia / configs_amd functions the launcher uses.

All compiles run in one subprocess with TRITON_INTERPRET=0 (conftest turns the interpreter
on in this process, and interpreted kernels cannot be compiled); each test checks its case.
Pointers and the token/block strides are marked divisible by 16, as the JIT specialises
them for aligned caches with head dims that are multiples of 16.

Also run by hand with Triton 3.6 (the GPU machines' version) on 2026-11-26: every case clean
(`PYTHONPATH=<triton-3.6 target dir> TRITON_INTERPRET=0 python tests/test_codegen_paged.py
--compile-all`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

TARGETS = ("sm80", "sm90", "gfx90a", "gfx942")
NO_FP8 = ("sm80",)
FLOATS = {"qk_scale", "v_scale", "softcap", "inv_k_scale", "inv_v_scale", "fp8_max"}
ALIGNED = {"Q", "K", "V", "OUT", "KC", "VC", "PO", "OA", "OB", "stride_qs", "stride_qt",
           "stride_kb", "stride_kt", "stride_vb", "stride_vt", "stride_os", "stride_ot",
           "stride_op", "head_dim", "stride_kcb", "stride_kct", "stride_vcb", "stride_vct", "stride_qh",
           "stride_kh", "stride_vh", "stride_oh", "stride_pos", "stride_pop", "stride_pot",
           "stride_poh", "stride_kch", "stride_vch", "stride_kt", "stride_vt", "s_oa_b",
           "s_oa_r", "s_oa_h", "s_ob_b", "s_ob_r", "s_ob_h", "s_o_b", "s_o_r", "s_o_h"}
UNIT_STRIDES = {"stride_qd", "stride_kd", "stride_vd", "stride_od", "stride_pod", "s_oa_d",
                "s_ob_d", "s_o_d", "stride_kcd", "stride_vcd",
                "stride_btb"}   # the launcher makes block-table columns contiguous
MATRIX = ("wgmma.mma_async", "mma.sync", "v_mfma")

# decode: (q dtype, cache dtype, head dim, rows = q_len * group, features)
DECODE = {
    "fp16-D128-rows16": ("fp16", "fp16", 128, 16, {}),
    "bf16-D128-rows32-window-softcap-alibi-sinks": ("bf16", "bf16", 128, 32,
                                                    dict(HAS_WINDOW=True, HAS_SOFTCAP=True,
                                                         HAS_ALIBI=True, HAS_SINKS=True)),
    "bf16-D256-rows16": ("bf16", "bf16", 256, 16, {}),
    "fp16-D64-rows64": ("fp16", "fp16", 64, 64, {}),
    "bf16-fp8cache-D128-rows16": ("bf16", "fp8", 128, 16, {}),
    "bf16-fp8cache-D128-rows16-head-scales": ("bf16", "fp8", 128, 16, dict(HAS_KV_SCALES=True)),
    # varlen_paged_attention: packed queries (cu_seqlens_q), prefill-sized row tiles
    "bf16-D128-rows32-varlen": ("bf16", "bf16", 128, 32, dict(VARLEN=True, MULTI_TOKEN=True)),
    "fp16-D64-rows64-varlen-window-alibi": ("fp16", "fp16", 64, 64,
                                            dict(VARLEN=True, HAS_WINDOW=True, HAS_ALIBI=True,
                                                 MULTI_TOKEN=True)),
    # q_len > 1 (speculative decoding): rows of several tokens, the hidden-NaN-V path
    "bf16-D128-rows32-qlen4-window": ("bf16", "bf16", 128, 32, dict(HAS_WINDOW=True, MULTI_TOKEN=True)),
}


def _cases() -> list[str]:
    out = []
    for t in TARGETS:
        for name, spec in DECODE.items():
            # No fp8 e4m3 type on sm80 (Triton needs sm89+): the launcher's supports()
            # refuses fp8 caches there, so there is nothing to compile. (gfx90a converts in
            # software: compiled and checked like the rest.)
            if not (spec[1] == "fp8" and t in NO_FP8):
                out.append(f"decode:{name}:{t}")
        out += [f"reduce:bf16:{t}", f"merge:bf16:{t}", f"write:bf16:{t}"]
        if t not in NO_FP8:
            out.append(f"write:fp8:{t}")
    return out


CASES = _cases()


def _fp8(target):
    return "fp8e4b8" if target == "gfx942" else "fp8e4nv"


def _compile_case(case: str) -> dict:
    from codegen import compile_for
    from polykernels.triton.paged_attention import configs_amd, configs_nvidia
    from polykernels.triton.paged_attention.decode_kernel import paged_decode_kernel
    from polykernels.triton.paged_attention.merge_kernel import merge_two_kernel, reduce_splits_kernel
    from polykernels.triton.paged_attention.write_kernel import write_kv_kernel

    kind, name, target = case.split(":")
    cfgs = configs_amd if target.startswith("gfx") else configs_nvidia
    if kind == "decode":
        qd, cd, dim, rows, feats = DECODE[name]
        cd = _fp8(target) if cd == "fp8" else cd
        cfg = cfgs.decode_config(rows, dim, 1 if cd.startswith("fp8") else 2)
        kernel = paged_decode_kernel
        ptrs = {"Q": qd, "K": cd, "V": cd, "BT": "i32", "SL": "i32", "CU_Q": "i32", "ALIBI": "fp32",
                "KVS": "fp32", "SINKS": "fp32", "OUT": qd, "LSE": "fp32"}
        consts = dict(BLOCK_M=rows, BLOCK_N=cfg.block_n, BLOCK_D=dim, HAS_WINDOW=False,
                      HAS_SOFTCAP=False, HAS_ALIBI=False, DOT_FP32=False, VARLEN=False,
                      HAS_KV_SCALES=False, HAS_SINKS=False, SCAN=128, MULTI_TOKEN=False)
        consts.update(feats)
    elif kind == "reduce":
        cfg, kernel = cfgs.reduce_config(), reduce_splits_kernel
        ptrs = {"PO": "fp32", "PL": "fp32", "OUT": name, "LSE": "fp32", "SINKS": "fp32"}
        consts = dict(BLOCK_S=64, BLOCK_D=256, HAS_SINKS=True)
    elif kind == "merge":
        cfg, kernel = cfgs.reduce_config(), merge_two_kernel
        ptrs = {"OA": name, "OB": name, "OUT": name, "LA": "fp32", "LB": "fp32", "LSE": "fp32"}
        consts = dict(BLOCK_D=128)
    else:
        cache = _fp8(target) if name == "fp8" else name
        cfg, kernel = cfgs.write_config(), write_kv_kernel
        ptrs = {"K": "bf16", "V": "bf16", "KC": cache, "VC": cache, "SLOT": "i64", "KVS": "fp32"}
        consts = dict(BLOCK_H=8, BLOCK_D=128, QUANT=name == "fp8", ROUND_FP8=False,
                      FP8_MIN_EXP=-7 if cache == "fp8e4b8" else -6, HAS_KV_SCALES=name == "fp8")
    # Unit head-dim strides become constexpr 1, as the JIT specialises them for the usual
    # contiguous last dim: that is what makes the gathered K/V loads vector loads.
    consts.update({a: 1 for a in kernel.arg_names if a in UNIT_STRIDES})
    sig = {}
    for arg in kernel.arg_names:
        if arg in consts:
            sig[arg] = "constexpr"
        elif arg in ptrs:
            sig[arg] = "*" + ptrs[arg]
        else:
            sig[arg] = "fp32" if arg in FLOATS else "i32"
    aligned = tuple(a for a in kernel.arg_names if a in ALIGNED and sig[a] != "constexpr")
    c = compile_for(kernel, target, sig, consts, cfg.launch_options(), divisible_by_16=aligned)
    return {"matrix": [m for m in MATRIX if m in c.asm], "n_spills": c.n_spills,
            "n_regs": c.n_regs, "config": repr(cfg)}


@pytest.fixture(scope="module")
def compiled() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="0")
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--compile-all"], cwd=here,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"codegen subprocess failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES)
def test_codegen(compiled, case):
    r = compiled[case]
    assert "error" not in r, f"{case}: compile failed: {r.get('error')}"
    kind, _, target = case.split(":")
    if kind == "decode":
        # wgmma needs 64-row warpgroup tiles; Triton issues the 16/32-row GQA tile as mma.sync,
        # still the tensor-core path on Hopper. AMD: v_mfma. Ampere: mma.sync.
        want = {"sm80": ("mma.sync",), "sm90": ("wgmma.mma_async", "mma.sync"),
                "gfx90a": ("v_mfma",), "gfx942": ("v_mfma",)}[target]
        assert any(w in r["matrix"] for w in want), \
            f"{case}: no {' / '.join(want)} in the assembly (found {r['matrix']}; {r['config']})"
    assert r["n_spills"] == 0, f"{case}: {r['n_spills']} spills ({r['n_regs']} registers; {r['config']})"


if __name__ == "__main__" and sys.argv[1:] == ["--compile-all"]:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    results = {}
    for case in CASES:
        try:
            results[case] = _compile_case(case)
        except Exception as e:  # reported per case by the test
            results[case] = {"error": f"{type(e).__name__}: {str(e)[-1500:]}"}
        print(case, results[case], file=sys.stderr, flush=True)
    print(json.dumps(results))
