// AVX-512 path of the CPU attention kernels: fp32 compute (bf16/fp16 converted while packing),
// 16 lanes, key blocks of 64 (4 rows x 4 vectors = 16 accumulators of 32 zmm registers).
// GCC 12 warns "__Y may be used uninitialized" inside its own AVX-512 intrinsic headers (the
// undefined pass-through operand of the masked builtins; GCC bug 105593): a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "attention_isa.h"
#include "dtype_convert.h"

// Compiled for AVX-512 F/BW/VL/DQ (+FMA, F16C) only; called only when the CPU has them.
// Headers above keep every shared inline function on the baseline target.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")

#include "attention_avx512_vec.h"
#include "attention_engine.h"

namespace pk::cpu::attn::avx512 {
using Ops = OpsF32<Vec512, 64>;
void dense_items(const AttnParams& p, const DenseItem* items, int64_t n) { run_dense_items<Vec512, Ops>(p, items, n); }
void paged_items(const PagedParams& p, const PagedItem* items, int64_t n, int64_t n_splits, float* part_o,
                 float* part_lse, const float* fp8_lut) {
  run_paged_items<Vec512, Ops>(p, items, n, n_splits, part_o, part_lse, fp8_lut);
}
}  // namespace pk::cpu::attn::avx512

#pragma GCC pop_options
