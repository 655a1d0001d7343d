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
#include "scratch_buffer.h"
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

using Buffer = pk::cpu::ScratchBuffer;  // per-thread, grow-only (scratch_buffer.h)
thread_local Buffer tl_x_buf, tl_w_buf;

// int4 with bf16 activations on AVX512-BF16 (group_size % 64 == 0): codes go through a
// 16-entry table straight to bf16 (u - z) (exact for the integer zeros of the format; a
// non-integer zero is rounded to bf16, no worse than dequantising to bf16) and meet bf16 x
// pairs in vdpbf16ps (exact products, fp32 sums); the group scale is applied once per
// group. About half the instructions per byte of the fp32 path, which is compute-bound.
// Chunk of 32 bytes = 64 codes: zero-extend to 16-bit lanes, split nibbles, look up, and
// interleave (low, high) per 128-bit lane; x pairs are pre-permuted to that order.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")
namespace avx512bf16 {

// x pairs of one row, permuted per 32-byte chunk: P1 order then P2 order (see unpack).
void permute_x(const uint32_t* x32, int64_t half, uint32_t* out) {
  for (int64_t c = 0; c < half; c += 32)
    for (int i = 0; i < 32; ++i) {
      const int lane = i / 8, j = i % 8;  // 128-bit lane, element within the lane's 8 bytes
      const int slot = (j < 4 ? 0 : 16) + lane * 4 + (j % 4);
      out[c + slot] = x32[c + i];
    }
}

template <int RB>
void rows(const Gemv& c, const uint32_t* xp, int64_t n, int64_t r0, float* res) {
  const uint8_t* q = c.q + n * c.sq_n;
  const int64_t half = c.K / 2, gs = c.group_size, groups = c.K / gs;
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i nib = _mm512_set1_epi16(15);
  __m512 tot[RB];
  for (int r = 0; r < RB; ++r) tot[r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const float s = c.scale(n, g), z = c.zero(n, g);
    const __m512i lut = _mm512_castsi256_si512(
        (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(iota, _mm512_set1_ps(z))));
    __m512 a1[RB], a2[RB];
    for (int r = 0; r < RB; ++r) a1[r] = a2[r] = _mm512_setzero_ps();
    for (int64_t h = g * gs / 2; h < (g + 1) * gs / 2; h += 32) {
      const __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + h)));
      const __m512i lo = _mm512_permutexvar_epi16(_mm512_and_si512(v, nib), lut);
      const __m512i hi = _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), lut);
      const __m512bh p1 = (__m512bh)_mm512_unpacklo_epi16(lo, hi), p2 = (__m512bh)_mm512_unpackhi_epi16(lo, hi);
      for (int r = 0; r < RB; ++r) {
        const uint32_t* xr = xp + (r0 + r) * half + h;
        a1[r] = _mm512_dpbf16_ps(a1[r], (__m512bh)_mm512_loadu_si512(xr), p1);
        a2[r] = _mm512_dpbf16_ps(a2[r], (__m512bh)_mm512_loadu_si512(xr + 16), p2);
      }
    }
    const __m512 vs = _mm512_set1_ps(s);
    for (int r = 0; r < RB; ++r) tot[r] = _mm512_fmadd_ps(vs, _mm512_add_ps(a1[r], a2[r]), tot[r]);
  }
  for (int r = 0; r < RB; ++r) res[r] = _mm512_reduce_add_ps(tot[r]);
}

void range(const Gemv& c, const uint32_t* xp, int64_t n0, int64_t n1) {
  float res[4];
  for (int64_t n = n0; n < n1; ++n) {
    int64_t r = 0;
    for (; r + 4 <= c.rows; r += 4) { rows<4>(c, xp, n, r, res); c.store(r, n, res, 4); }
    switch (c.rows - r) {
      case 3: rows<3>(c, xp, n, r, res); c.store(r, n, res, 3); break;
      case 2: rows<2>(c, xp, n, r, res); c.store(r, n, res, 2); break;
      case 1: rows<1>(c, xp, n, r, res); c.store(r, n, res, 1); break;
      default: break;
    }
  }
}

}  // namespace avx512bf16
#pragma GCC pop_options

thread_local std::vector<uint32_t> tl_xp;

void run_gemv_int4_bf16(const QLinearArgs& a) {
  const int64_t K = a.K, half = K / 2;
  std::vector<uint32_t>& xp = tl_xp;
  xp.resize(static_cast<size_t>(a.rows * half));
  std::vector<uint32_t> row(static_cast<size_t>(half));
  for (int64_t r = 0; r < a.rows; ++r) {
    for (int64_t j = 0; j < half; ++j) {
      const uint16_t* x = static_cast<const uint16_t*>(a.x) + r * a.sx_r;
      row[j] = uint32_t(x[2 * j * a.sx_k]) | (uint32_t(x[(2 * j + 1) * a.sx_k]) << 16);
    }
    avx512bf16::permute_x(row.data(), half, xp.data() + r * half);
  }
  const Gemv c{nullptr, K, a.rows, K, a.q, a.sq_n, a.bits, a.group_size, &a};
  const int64_t blocks = (a.N + 15) / 16;
#pragma omp parallel for schedule(static) num_threads(std::max(1, a.num_threads))
  for (int64_t b = 0; b < blocks; ++b)
    avx512bf16::range(c, xp.data(), b * 16, std::min(a.N, b * 16 + 16));
}

bool use_int4_bf16(const QLinearArgs& a) {
  return a.bits == 4 && a.x_kind == 1 && a.group_size % 64 == 0 && active_isa() == Isa::AVX512_BF16;
}

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
// bf16 = true: rounded to bf16 (the GEMM's vdpbf16ps path for bf16 activations; no worse
// than dequantising to the activations' dtype, which is what torch would do).
void dequant_panel(const QLinearArgs& a, int64_t n0, int64_t nb, void* w, bool bf16) {
  const int64_t K = a.K, gs = a.group_size;
#pragma omp parallel for schedule(static) num_threads(std::max(1, a.num_threads))
  for (int64_t i = 0; i < nb; ++i) {
    const int64_t n = n0 + i;
    const uint8_t* q = a.q + n * a.sq_n;
    float* row = static_cast<float*>(w) + i * K;
    uint16_t* row16 = static_cast<uint16_t*>(w) + i * K;
    for (int64_t g = 0; g < K / gs; ++g) {
      const float s = load_as_float(a.scales, n * a.ss_n + g * a.ss_g, a.s_kind);
      const float z = a.zeros ? load_as_float(a.zeros, n * a.sz_n + g * a.sz_g, a.z_kind) : float(1 << (a.bits - 1));
      for (int64_t k = g * gs; k < (g + 1) * gs; ++k) {
        const int u = a.bits == 8 ? q[k] : (k & 1 ? q[k >> 1] >> 4 : q[k >> 1] & 15);
        const float v = (static_cast<float>(u) - z) * s;
        if (bf16) row16[k] = float_to_bf16(v);
        else row[k] = v;
      }
    }
  }
}

void run_panels(const QLinearArgs& a) {
  // Panels of ~4 MB of fp32 weights (L3-resident while the GEMM packs them), 32-row multiples.
  const int64_t K = std::max<int64_t>(a.K, 1);
  const int64_t nb_max = std::clamp<int64_t>((int64_t(1) << 20) / K / 32 * 32, 32, 1024);
  float* w = static_cast<float*>(tl_w_buf.get(sizeof(float) * nb_max * K));
  const bool bf16 = a.x_kind == 1 && active_isa() == Isa::AVX512_BF16;
  const int64_t bias_elem = a.bias_kind == 0 ? 4 : 2, out_elem = a.out_kind == 0 ? 4 : 2;
  for (int64_t n0 = 0; n0 < a.N; n0 += nb_max) {
    const int64_t nb = std::min(nb_max, a.N - n0);
    dequant_panel(a, n0, nb, w, bf16);
    gemm::GemmArgs g;
    g.a = a.x; g.a_kind = a.x_kind;
    g.batch = 1; g.M = a.rows; g.K = a.K; g.N = nb;
    g.sa_b = 0; g.sa_m = a.sx_r; g.sa_k = a.sx_k;
    g.b = w; g.b_kind = bf16 ? 1 : 0; g.sb_k = 1; g.sb_n = a.K;
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

const char* path_name(int64_t rows, int bits, int x_kind, int64_t group_size) {
  if (rows > kGemvMaxRows)
    return x_kind == 1 && active_isa() == Isa::AVX512_BF16 ? "dequant_bf16_gemm" : "dequant_gemm";
  QLinearArgs a;
  a.rows = rows; a.bits = bits; a.x_kind = x_kind; a.group_size = group_size;
  if (use_int4_bf16(a)) return "gemv_int4_bf16";
  const Isa isa = active_isa();
  return isa >= Isa::AVX512 ? "gemv_avx512" : isa == Isa::AVX2 ? "gemv_avx2" : "gemv_scalar";
}

void quantized_linear(const QLinearArgs& a) {
  if (a.rows == 0 || a.N == 0) return;
  if (a.rows <= kGemvMaxRows && use_int4_bf16(a)) run_gemv_int4_bf16(a);
  else if (a.rows <= kGemvMaxRows) run_gemv(a);
  else run_panels(a);
}

}  // namespace pk::cpu::qlinear
