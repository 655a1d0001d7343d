// Merging two attention partial states:
//   lse = log(exp(lse_a) + exp(lse_b)),  out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse)
// computed with the max subtracted first so it never overflows. A side whose lse is -inf
// (no visible key) contributes nothing; both -inf gives out 0 and lse -inf (never NaN).
// lse +inf also marks an empty state (FlashAttention-2 writes it for a zero-length
// sequence; vLLM's convention): it is read as -inf.
//
// The element type is a template parameter so the inner loop over head_dim has no per-element
// dtype switch and the compiler can vectorise it (measured: the switch version ran at ~3 GB/s
// against ~14 GB/s for torch's own elementwise ops at B256 H32 D128 bf16).
#include "merge_states.h"

#include <cmath>
#include <limits>

#include "dtype_convert.h"

namespace pk::cpu {
namespace {

inline float empty_if_pos_inf(float lse) {
  return lse == std::numeric_limits<float>::infinity() ? -std::numeric_limits<float>::infinity() : lse;
}

struct F32 {
  using T = float;
  static float load(const T* p, int64_t i) { return p[i]; }
  static void store(T* p, int64_t i, float v) { p[i] = v; }
};
struct BF16 {
  using T = uint16_t;
  static float load(const T* p, int64_t i) { return bf16_to_float(p[i]); }
  static void store(T* p, int64_t i, float v) { p[i] = float_to_bf16(v); }
};
struct FP16 {
  using T = uint16_t;
  static float load(const T* p, int64_t i) { return fp16_to_float(p[i]); }
  static void store(T* p, int64_t i, float v) { p[i] = float_to_fp16(v); }
};

template <typename E>
void merge(const MergeStatesArgs& a) {
  using T = typename E::T;
  const T* out_a = static_cast<const T*>(a.out_a);
  const T* out_b = static_cast<const T*>(a.out_b);
  T* out = static_cast<T*>(a.out);
  const int64_t total = a.outer * a.rows * a.heads;
  const int64_t dim = a.head_dim;
  const int64_t sa = a.oa_s[3], sb = a.ob_s[3], so = a.o_s[3];
  // Too little work per row for threads to pay off on small decode merges.
#pragma omp parallel for schedule(static) if (total * dim >= (1 << 16))
  for (int64_t idx = 0; idx < total; ++idx) {
    const int64_t h = idx % a.heads;
    const int64_t r = (idx / a.heads) % a.rows;
    const int64_t o = idx / (a.heads * a.rows);
    const float la = empty_if_pos_inf(a.lse_a[o * a.la_s[0] + h * a.la_s[1] + r * a.la_s[2]]);
    const float lb = empty_if_pos_inf(a.lse_b[o * a.lb_s[0] + h * a.lb_s[1] + r * a.lb_s[2]]);
    const float m = std::fmax(la, lb);
    float wa = 0.f, wb = 0.f, lse = -std::numeric_limits<float>::infinity();
    if (m != -std::numeric_limits<float>::infinity()) {
      const float ea = std::exp(la - m), eb = std::exp(lb - m);
      const float s = ea + eb;
      wa = ea / s;
      wb = eb / s;
      lse = m + std::log(s);
    }
    a.lse[o * a.l_s[0] + h * a.l_s[1] + r * a.l_s[2]] = lse;
    const T* pa = out_a + o * a.oa_s[0] + r * a.oa_s[1] + h * a.oa_s[2];
    const T* pb = out_b + o * a.ob_s[0] + r * a.ob_s[1] + h * a.ob_s[2];
    T* po = out + o * a.o_s[0] + r * a.o_s[1] + h * a.o_s[2];
    // A zero-weight side is never read, so a NaN/inf in an unused partial cannot leak.
    if (wa != 0.f && wb != 0.f) {
      if (sa == 1 && sb == 1 && so == 1) {
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) E::store(po, d, wa * E::load(pa, d) + wb * E::load(pb, d));
      } else {
        for (int64_t d = 0; d < dim; ++d)
          E::store(po, d * so, wa * E::load(pa, d * sa) + wb * E::load(pb, d * sb));
      }
    } else if (wa != 0.f || wb != 0.f) {
      const T* p = wa != 0.f ? pa : pb;
      const int64_t sp = wa != 0.f ? sa : sb;
      for (int64_t d = 0; d < dim; ++d) E::store(po, d * so, E::load(p, d * sp));  // weight is 1
    } else {
      for (int64_t d = 0; d < dim; ++d) E::store(po, d * so, 0.f);
    }
  }
}

}  // namespace

void merge_attention_states(const MergeStatesArgs& a) {
  switch (a.kind) {
    case 0: merge<F32>(a); break;
    case 1: merge<BF16>(a); break;
    default: merge<FP16>(a); break;
  }
}

}  // namespace pk::cpu
