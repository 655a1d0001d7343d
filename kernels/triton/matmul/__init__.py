"""Triton matmul family: fused-epilogue GEMM (+ split-K), fp8/int8 scaled GEMM, weight-only
int4/int8 GEMM/GEMV and the MoE grouped GEMM.

Modules (imported lazily; importing this package imports no triton):
  epilogue.py      shared ``@triton.jit`` helpers: tile ordering, activations
  gemm.py          matmul / linear: kernel, split-K reduction, launcher
  scaled.py        scaled_matmul (fp8 e4m3 / e4m3fnuz, int8) kernel + launcher
  weight_only.py   quantized_linear (int4 / int8 weights, group scales/zeros)
  grouped.py       grouped_matmul (rows sorted by expert, one launch)
  configs.py       vendor/arch choice -> configs_nvidia.py / configs_amd.py (KernelConfig)
  register.py      registration with polykernels.dispatch
"""
