// CPU attention forward: work planning (ISA-neutral), path selection, and the scalar path.
#include "attention.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "attention_isa.h"
#include "cpu_isa.h"
#include "dtype_convert.h"

namespace pk::cpu::attn {
namespace {

// Scalar "vector" of one lane: the portable path, and the reference the SIMD paths follow.
struct VecScalar {
  using reg = float;
  static constexpr int W = 1;
  static reg zero() { return 0.f; }
  static reg load(const float* p) { return *p; }
  static void store(float* p, reg v) { *p = v; }
  static reg set1(float x) { return x; }
  static reg fmadd(reg a, reg b, reg c) { return std::fma(a, b, c); }
  static reg mul(reg a, reg b) { return a * b; }
  static reg add(reg a, reg b) { return a + b; }
  static reg sub(reg a, reg b) { return a - b; }
  static reg max(reg a, reg b) { return a > b ? a : b; }
  static float reduce_max(reg v) { return v; }
  static float reduce_add(reg v) { return v; }
  static reg exp(reg x) { return std::exp(x); }
};

}  // namespace
}  // namespace pk::cpu::attn

#include "attention_engine.h"

namespace pk::cpu::attn {

namespace scalar {
using Ops = OpsF32<VecScalar, 16>;
void dense_items(const AttnParams& p, const DenseItem* items, int64_t n) {
  run_dense_items<VecScalar, Ops>(p, items, n);
}
void paged_items(const PagedParams& p, const PagedItem* items, int64_t n, int64_t n_splits, float* part_o,
                 float* part_lse, const float* fp8_lut) {
  run_paged_items<VecScalar, Ops>(p, items, n, n_splits, part_o, part_lse, fp8_lut);
}
}  // namespace scalar

AttnPath choose_path(int q_kind, int kv_kind) {
  switch (active_isa()) {
    case Isa::AVX512_BF16:
      if (q_kind == kBF16 && (kv_kind == kBF16 || kv_kind == kFP8E4M3)) return AttnPath::AVX512BF16;
      return AttnPath::AVX512;
    case Isa::AVX512: return AttnPath::AVX512;
    case Isa::AVX2: return AttnPath::AVX2;
    default: return AttnPath::Scalar;
  }
}

void attention_fwd(const AttnParams& p) {
  // Rows per item: the query heads sharing a KV head (up to 64) x as many positions as fit
  // in 64 rows, so K/V blocks are packed once for all of them.
  const int64_t group = p.heads_q / p.heads_kv;
  const int64_t ng = group < 64 ? group : 64;
  const int64_t nt = 64 / ng;
  std::vector<DenseItem> items;
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t sq = p.cu_q ? p.cu_q[b + 1] - p.cu_q[b] : p.seqlen_q;
    for (int64_t hk = 0; hk < p.heads_kv; ++hk)
      for (int64_t t0 = 0; t0 < sq; t0 += nt)
        for (int64_t g0 = 0; g0 < group; g0 += ng)
          items.push_back({b, hk, g0, ng < group - g0 ? ng : group - g0, t0, nt < sq - t0 ? nt : sq - t0});
  }
  if (items.empty()) return;
  // Long causal rows cost more: put the last query blocks first for dynamic scheduling.
  std::vector<DenseItem> ordered(items.rbegin(), items.rend());
  switch (choose_path(p.kind, p.kind)) {
    case AttnPath::AVX512BF16: avx512bf16::dense_items(p, ordered.data(), ordered.size()); break;
    case AttnPath::AVX512: avx512::dense_items(p, ordered.data(), ordered.size()); break;
    case AttnPath::AVX2: avx2::dense_items(p, ordered.data(), ordered.size()); break;
    default: scalar::dense_items(p, ordered.data(), ordered.size()); break;
  }
}

}  // namespace pk::cpu::attn
