"""Ahead-of-time compilation of Triton kernels for GPU targets, on a machine with no GPU.

Used by the codegen tests of every Triton family: compile a kernel for each reference
target, then assert the intended matrix instruction is in the assembly and nothing spills.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
import triton.backends.nvidia
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

# name -> (GPUTarget, assembly key, matrix instruction that must appear for fp16/bf16 dots)
TARGETS = {
    "sm80": (GPUTarget("cuda", 80, 32), "ptx", "mma.sync"),
    "sm90": (GPUTarget("cuda", 90, 32), "ptx", "wgmma.mma_async"),
    "gfx90a": (GPUTarget("hip", "gfx90a", 64), "amdgcn", "v_mfma"),
    "gfx942": (GPUTarget("hip", "gfx942", 64), "amdgcn", "v_mfma"),
}


@dataclass
class Compiled:
    target: str
    asm: str
    n_regs: int
    n_spills: int
    shared: int


def compile_for(kernel, target: str, signature: dict, constexprs: dict, options: dict,
                divisible_by_16: tuple = ()) -> Compiled:
    """Compile ``kernel`` for ``target`` (a key of TARGETS).

    ``signature`` maps every parameter name to a Triton type ("*fp16", "i32", "fp32",
    "constexpr"); ``constexprs`` gives the constexpr values; ``options`` the launch options
    (num_warps, num_stages, and AMD knobs such as waves_per_eu).
    """
    # --- issue 6 (matmul): ``divisible_by_16`` names pointer/int parameters to mark with
    # tt.divisibility=16, as the JIT does at run time for 16-byte-aligned pointers and ints
    # that are multiples of 16. Without it every load is scalar and large tiles spill
    # (measured: 128x128x32 fp16 GEMM on sm80, 2704 spill bytes without, 0 with).
    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in divisible_by_16}
    # --- end issue 6
    gpu_target, asm_key, _ = TARGETS[target]
    constexprs = {k if isinstance(k, tuple) else (kernel.arg_names.index(k),): v
                  for k, v in constexprs.items()}
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    k = triton.compile(src, target=gpu_target, options=dict(options))
    if asm_key == "ptx":
        regs, spills = _cubin_resource_usage(k.asm["cubin"])
    else:
        regs, spills = _amdgcn_resource_usage(k.asm["amdgcn"])
    return Compiled(target, k.asm[asm_key], regs, spills, k.metadata.shared)


def _cubin_resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, spill bytes) from ``cuobjdump --dump-resource-usage`` (bundled with Triton).

    Without a driver Triton's metadata has no n_regs/n_spills, so read the cubin instead:
    spilled registers show up as LOCAL (and STACK) bytes.
    """
    tool = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], check=True,
                             capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", out))
    return int(fields["REG"]), int(fields.get("STACK", 0)) + int(fields.get("LOCAL", 0))


def _amdgcn_resource_usage(asm: str) -> tuple[int, int]:
    """(VGPRs, spill count + scratch bytes) from the AMD assembly's metadata."""
    def field(name):
        m = re.search(rf"\.{name}:\s*(\d+)", asm)
        return int(m.group(1)) if m else 0
    spills = field("vgpr_spill_count") + field("sgpr_spill_count") + field("private_segment_fixed_size")
    return field("vgpr_count"), spills


def assert_good_codegen(c: Compiled, name: str, instruction: str | None = None) -> None:
    """Fail naming the kernel/config when the matrix instruction is missing or it spills."""
    want = instruction or TARGETS[c.target][2]
    assert want in c.asm, f"{name} on {c.target}: no '{want}' in the generated assembly"
    assert c.n_spills == 0, (f"{name} on {c.target}: spills ({c.n_spills} spill bytes/registers, "
                             f"{c.n_regs} registers)")


def compile_in_subprocess(test_file: str, timeout: int = 600) -> dict:
    """Run ``python test_file`` with the interpreter off (conftest turns it on for the suite,
    and TRITON_INTERPRET must be fixed before triton is imported) and return the JSON dict it
    prints on its last line: {case: result or {"error": ...}}. Codegen test modules compile
    all their cases in that one child process and assert on the results."""
    import json
    import sys
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, os.path.abspath(test_file)], env=env,
                          cwd=os.path.dirname(os.path.abspath(test_file)),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
