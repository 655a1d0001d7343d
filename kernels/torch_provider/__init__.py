"""The ``torch`` provider: PyTorch's own kernels (and the vendor libraries behind them:
oneDNN/MKL on CPU, cuBLAS/hipBLASLt on GPUs) as impls named ``torch`` of backend ``torch``.

They rank above the pure-torch reference (priority 50 vs 0) and below our kernels (100/110),
so they are the failover before the slow reference, and ``pk.use(matmul="torch")`` /
``POLYKERNELS_IMPL=matmul=torch`` runs torch's kernel explicitly (benchmarks against torch).

Modules: ``attention`` (SDPA's CPU flash kernel), ``matmul`` (GEMMs, fp8/int8 GEMMs,
grouped GEMM), ``quantized`` (int4/int8 weight-only kernels with a packed-weight cache),
``register`` (``register()``, listed in ``dispatch/builtin.py``). Ops torch has no kernel for
(paged attention, KV-cache writes, merging attention states, attention backward) have no
``torch`` impl. Every ``supports()`` refuses, with the reason, what the kernel cannot do
exactly; the facts they rely on were measured on torch 2.13 and are stated where used.
"""
