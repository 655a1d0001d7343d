// Weight-only quantized linear on CPU: GEMV kernel for few rows, dequantise + GEMM for many.
// Contract in quantized_linear.h.
#include "quantized_linear.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <new>
#include <vector>

#include "cpu_isa.h"
#include "dtype_convert.h"
#include "gemm.h"

namespace pk::cpu::qlinear {
namespace {

// Prepared inputs of the GEMV kernels: activations widened to fp32 once per call (rows x K,
// tiny next to the weights), int4 activations split into even-k and odd-k halves.
struct Gemv {
  const float* x; int64_t ldx, rows, K;
  const uint8_t* q; int64_t sq_n;
  int bits; int64_t group_size;
  const QLinearArgs* a;
  float scale(int64_t n, int64_t g) const { return load_as_float(a->scales, n * a->ss_n + g * a->ss_g, a->s_kind); }
  float zero(int64_t n, int64_t g) const {
    return a->zeros ? load_as_float(a->zeros, n * a->sz_n + g * a->sz_g, a->z_kind) : float(1 << (bits - 1));
  }
  void store(int64_t r0, int64_t n, const float* res, int count) const {
    const float b = a->bias ? load_as_float(a->bias, n * a->s_bias, a->bias_kind) : 0.f;
    for (int r = 0; r < count; ++r) store_from_float(a->out, (r0 + r) * a->ldo + n, res[r] + b, a->out_kind);
  }
};

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")
namespace avx512 {
struct V {
  using T = __m512;
  static constexpr int W = 16, RB = 4;
  static T zero() { return _mm512_setzero_ps(); }
  static T set1(float f) { return _mm512_set1_ps(f); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static float hsum(T a) { return _mm512_reduce_add_ps(a); }
  static T u8(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static void u4(const uint8_t* p, T& lo, T& hi) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)));
    hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
  }
};
#include "quantized_linear_gemv.h"
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
struct V {
  using T = __m256;
  static constexpr int W = 8, RB = 2;  // 16 ymm registers: 2 rows x 4 accumulators + totals
  static T zero() { return _mm256_setzero_ps(); }
  static T set1(float f) { return _mm256_set1_ps(f); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static float hsum(T a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static T u8(const uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static void u4(const uint8_t* p, T& lo, T& hi) {
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)));
    hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
  }
};
#include "quantized_linear_gemv.h"
}  // namespace avx2
#pragma GCC pop_options

namespace scalar {  // portable: one lane, the same arithmetic
struct V {
  using T = float;
  static constexpr int W = 1, RB = 4;
  static T zero() { return 0.f; }
  static T set1(float f) { return f; }
  static T load(const float* p) { return *p; }
  static T fma(T a, T b, T c) { return a * b + c; }
  static T add(T a, T b) { return a + b; }
  static T sub(T a, T b) { return a - b; }
  static float hsum(T a) { return a; }
  static T u8(const uint8_t* p) { return static_cast<float>(*p); }
  static void u4(const uint8_t* p, T& lo, T& hi) { lo = float(*p & 15); hi = float(*p >> 4); }
};
#include "quantized_linear_gemv.h"
}  // namespace scalar

struct Buffer {
  void* p = nullptr;
  size_t cap = 0;
  ~Buffer() { std::free(p); }
  void* get(size_t bytes) {
    if (bytes > cap) {
      std::free(p);
      cap = (bytes + 4095) & ~size_t(4095);
      p = std::aligned_alloc(64, cap);
      if (p == nullptr) {
        cap = 0;
        throw std::bad_alloc();
      }
    }
    return p;
  }
};
thread_local Buffer tl_x_buf, tl_w_buf;

void run_gemv(const QLinearArgs& a) {
  const int64_t K = a.K, half = K / 2;
  float* x = static_cast<float*>(tl_x_buf.get(sizeof(float) * std::max<int64_t>(a.rows * K, 1)));
  for (int64_t r = 0; r < a.rows; ++r)
    for (int64_t k = 0; k < K; ++k) {
      const float v = load_as_float(a.x, r * a.sx_r + k * a.sx_k, a.x_kind);
      // int4: even k -> first half, odd k -> second half (pairs with low / high nibbles)
      const int64_t dst = a.bits == 4 ? (k & 1) * half + k / 2 : k;
      x[r * K + dst] = v;
    }
  const Gemv c{x, K, a.rows, K, a.q, a.sq_n, a.bits, a.group_size, &a};
  const Isa isa = active_isa();
  // Blocks of 16 output columns: contiguous weight rows per thread, cheap scheduling.
  const int64_t blocks = (a.N + 15) / 16;
#pragma omp parallel for schedule(static) num_threads(std::max(1, a.num_threads))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t n0 = b * 16, n1 = std::min(a.N, n0 + 16);
    if (isa >= Isa::AVX512) avx512::gemv_range(c, n0, n1);
    else if (isa == Isa::AVX2) avx2::gemv_range(c, n0, n1);
    else scalar::gemv_range(c, n0, n1);
  }
}

// Weight rows [n0, n0 + nb) dequantised to fp32 [nb, K]: (u - z) * s, the reference's order.
void dequant_panel(const QLinearArgs& a, int64_t n0, int64_t nb, float* w) {
  const int64_t K = a.K, gs = a.group_size;
#pragma omp parallel for schedule(static) num_threads(std::max(1, a.num_threads))
  for (int64_t i = 0; i < nb; ++i) {
    const int64_t n = n0 + i;
    const uint8_t* q = a.q + n * a.sq_n;
    float* row = w + i * K;
    for (int64_t g = 0; g < K / gs; ++g) {
      const float s = load_as_float(a.scales, n * a.ss_n + g * a.ss_g, a.s_kind);
      const float z = a.zeros ? load_as_float(a.zeros, n * a.sz_n + g * a.sz_g, a.z_kind) : float(1 << (a.bits - 1));
      for (int64_t k = g * gs; k < (g + 1) * gs; ++k) {
        const int u = a.bits == 8 ? q[k] : (k & 1 ? q[k >> 1] >> 4 : q[k >> 1] & 15);
        row[k] = (static_cast<float>(u) - z) * s;
      }
    }
  }
}

void run_panels(const QLinearArgs& a) {
  // Panels of ~4 MB of fp32 weights (L3-resident while the GEMM packs them), 32-row multiples.
  const int64_t K = std::max<int64_t>(a.K, 1);
  const int64_t nb_max = std::clamp<int64_t>((int64_t(1) << 20) / K / 32 * 32, 32, 1024);
  float* w = static_cast<float*>(tl_w_buf.get(sizeof(float) * nb_max * K));
  const int64_t bias_elem = a.bias_kind == 0 ? 4 : 2, out_elem = a.out_kind == 0 ? 4 : 2;
  for (int64_t n0 = 0; n0 < a.N; n0 += nb_max) {
    const int64_t nb = std::min(nb_max, a.N - n0);
    dequant_panel(a, n0, nb, w);
    gemm::GemmArgs g;
    g.a = a.x; g.a_kind = a.x_kind;
    g.batch = 1; g.M = a.rows; g.K = a.K; g.N = nb;
    g.sa_b = 0; g.sa_m = a.sx_r; g.sa_k = a.sx_k;
    g.b = w; g.b_kind = 0; g.sb_k = 1; g.sb_n = a.K;
    if (a.bias) {
      g.bias = static_cast<const char*>(a.bias) + n0 * a.s_bias * bias_elem;
      g.bias_kind = a.bias_kind; g.s_bias = a.s_bias;
    }
    g.c = static_cast<char*>(a.out) + n0 * out_elem;
    g.c_kind = a.out_kind; g.ldc = a.ldo;
    g.num_threads = a.num_threads;
    gemm::gemm(g);
  }
}

}  // namespace

const char* path_name(int64_t rows) {
  if (rows > kGemvMaxRows) return "dequant_gemm";
  const Isa isa = active_isa();
  return isa >= Isa::AVX512 ? "gemv_avx512" : isa == Isa::AVX2 ? "gemv_avx2" : "gemv_scalar";
}

void quantized_linear(const QLinearArgs& a) {
  if (a.rows == 0 || a.N == 0) return;
  if (a.rows <= kGemvMaxRows) run_gemv(a);
  else run_panels(a);
}

}  // namespace pk::cpu::qlinear
