// Merging two attention partial states:
//   lse = log(exp(lse_a) + exp(lse_b)),  out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse)
// computed with the max subtracted first so it never overflows. A side whose lse is -inf
// (no visible key) contributes nothing; both -inf gives out 0 and lse -inf (never NaN).
#include "merge_states.h"

#include <cmath>
#include <limits>

#include "dtype_convert.h"

namespace pk::cpu {

void merge_attention_states(const MergeStatesArgs& a) {
  const int64_t total = a.outer * a.rows * a.heads;
#pragma omp parallel for schedule(static)
  for (int64_t idx = 0; idx < total; ++idx) {
    const int64_t h = idx % a.heads;
    const int64_t r = (idx / a.heads) % a.rows;
    const int64_t o = idx / (a.heads * a.rows);
    const float la = a.lse_a[o * a.la_s[0] + h * a.la_s[1] + r * a.la_s[2]];
    const float lb = a.lse_b[o * a.lb_s[0] + h * a.lb_s[1] + r * a.lb_s[2]];
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
    const int64_t ba = o * a.oa_s[0] + r * a.oa_s[1] + h * a.oa_s[2];
    const int64_t bb = o * a.ob_s[0] + r * a.ob_s[1] + h * a.ob_s[2];
    const int64_t bo = o * a.o_s[0] + r * a.o_s[1] + h * a.o_s[2];
    for (int64_t d = 0; d < a.head_dim; ++d) {
      // Skip a zero-weight side entirely so a NaN/inf in an unused partial cannot leak.
      float v = 0.f;
      if (wa != 0.f) v += wa * load_as_float(a.out_a, ba + d * a.oa_s[3], a.kind);
      if (wb != 0.f) v += wb * load_as_float(a.out_b, bb + d * a.ob_s[3], a.kind);
      store_from_float(a.out, bo + d * a.o_s[3], v, a.kind);
    }
  }
}

}  // namespace pk::cpu
