// CPU GEMM with fused epilogue: packing, per-ISA micro-kernels and the threaded driver.
// Contract and design notes in gemm.h.
#include "gemm.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <new>
#include <cstring>

#include "cpu_isa.h"
#include "dtype_convert.h"
#include "scratch_buffer.h"
#include "gemm_epilogue.h"

namespace pk::cpu::gemm {
namespace {

using Buffer = pk::cpu::ScratchBuffer;  // per-thread, grow-only (scratch_buffer.h)
thread_local Buffer tl_a_buf, tl_b_buf, tl_bias_buf;

template <int KIND>
inline float ld(const void* p, int64_t i) {
  if constexpr (KIND == 0) return static_cast<const float*>(p)[i];
  else if constexpr (KIND == 1) return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
  else return fp16_to_float(static_cast<const uint16_t*>(p)[i]);
}

inline uint16_t ld16(const void* p, int64_t i) { return static_cast<const uint16_t*>(p)[i]; }

// ---------------------------------------------------------------------------------------
// Packing. fp32 panels: A tile [K][MR], B panel [K][NR]. bf16-pair panels (vdpbf16ps):
// element (k, x) and (k+1, x) share one 32-bit word, A tile [ceil(K/2)][MR], B panel
// [ceil(K/2)][NR]; an odd K gets a zero high half in the last word. Rows/columns beyond
// the matrix are zero so the micro-kernel never needs edge cases in its K loop.

template <int KIND>
void pack_a_f32(const GemmArgs& g, int64_t r0, int mr_total, float* dst) {
  const int64_t R = g.batch * g.M;
  for (int i = 0; i < mr_total; ++i) {
    const int64_t r = r0 + i;
    if (r >= R) {
      for (int64_t k = 0; k < g.K; ++k) dst[k * mr_total + i] = 0.f;
      continue;
    }
    const int64_t base = (r / g.M) * g.sa_b + (r % g.M) * g.sa_m;
    for (int64_t k = 0; k < g.K; ++k) dst[k * mr_total + i] = ld<KIND>(g.a, base + k * g.sa_k);
  }
}

void pack_a_pairs(const GemmArgs& g, int64_t r0, int mr_total, uint32_t* dst) {
  const int64_t R = g.batch * g.M, kp_n = (g.K + 1) / 2;
  for (int i = 0; i < mr_total; ++i) {
    const int64_t r = r0 + i;
    if (r >= R) {
      for (int64_t kp = 0; kp < kp_n; ++kp) dst[kp * mr_total + i] = 0u;
      continue;
    }
    const int64_t base = (r / g.M) * g.sa_b + (r % g.M) * g.sa_m;
    if (g.sa_k == 1) {  // contiguous row: each pair is one 32-bit load
      const uint16_t* src = static_cast<const uint16_t*>(g.a) + base;
      for (int64_t kp = 0; kp < g.K / 2; ++kp) {
        uint32_t w;
        std::memcpy(&w, src + 2 * kp, 4);
        dst[kp * mr_total + i] = w;
      }
      if (g.K & 1) dst[(kp_n - 1) * mr_total + i] = src[g.K - 1];
      continue;
    }
    for (int64_t kp = 0; kp < kp_n; ++kp) {
      const int64_t k = 2 * kp;
      const uint32_t lo = ld16(g.a, base + k * g.sa_k);
      const uint32_t hi = k + 1 < g.K ? ld16(g.a, base + (k + 1) * g.sa_k) : 0u;
      dst[kp * mr_total + i] = lo | (hi << 16);
    }
  }
}

template <int KIND>
void pack_b_f32(const GemmArgs& g, int64_t j0, int nr, int NR, float* dst) {
  if (g.sb_n == 1) {  // row-major B [K, N]: contiguous rows of the panel
    for (int64_t k = 0; k < g.K; ++k) {
      float* row = dst + k * NR;
      const int64_t base = k * g.sb_k + j0;
      if constexpr (KIND == 0) {
        std::memcpy(row, static_cast<const float*>(g.b) + base, sizeof(float) * nr);
      } else {
        // widened along the contiguous row (vectorised), not through the blocked transpose
        // below: 16-bit weights [K, N] packed ~3x faster (grouped_matmul's few-row GEMMs)
        for (int j = 0; j < nr; ++j) row[j] = ld<KIND>(g.b, base + j);
      }
      for (int j = nr; j < NR; ++j) row[j] = 0.f;
    }
    return;
  }
  constexpr int64_t KB = 64;  // e.g. a linear weight [N, K]: blocked transpose (see pack_b_pairs)
  for (int64_t kb = 0; kb < g.K; kb += KB) {
    const int64_t ke = std::min(g.K, kb + KB);
    for (int j = 0; j < NR; ++j) {
      if (j >= nr) {
        for (int64_t k = kb; k < ke; ++k) dst[k * NR + j] = 0.f;
        continue;
      }
      const int64_t base = (j0 + j) * g.sb_n;
      for (int64_t k = kb; k < ke; ++k) dst[k * NR + j] = ld<KIND>(g.b, base + k * g.sb_k);
    }
  }
}

void pack_b_pairs(const GemmArgs& g, int64_t j0, int nr, int NR, uint32_t* dst) {
  const int64_t K = g.K, kp_n = (K + 1) / 2;
  const uint16_t* b = static_cast<const uint16_t*>(g.b);
  if (g.sb_k == 1) {  // linear weight [N, K] contiguous along K: a pair is one 32-bit load
    // Transpose in blocks of 64 pairs so the 8 KB of destination being scattered into stays
    // in L1 (column-at-a-time over the whole panel missed L1 on every store: measured 1.6x
    // slower end to end on M512 K4096 N11008).
    constexpr int64_t KB = 64;
    for (int64_t kb = 0; kb < kp_n; kb += KB) {
      const int64_t ke = std::min(kp_n, kb + KB), full_end = std::min(ke, K / 2);
      for (int j = 0; j < NR; ++j) {
        if (j >= nr) {
          for (int64_t kp = kb; kp < ke; ++kp) dst[kp * NR + j] = 0u;
          continue;
        }
        const uint16_t* src = b + (j0 + j) * g.sb_n;
        for (int64_t kp = kb; kp < full_end; ++kp) {
          uint32_t w;
          std::memcpy(&w, src + 2 * kp, 4);
          dst[kp * NR + j] = w;
        }
        if ((K & 1) && ke == kp_n) dst[(kp_n - 1) * NR + j] = src[K - 1];
      }
    }
    return;
  }
  for (int64_t kp = 0; kp < kp_n; ++kp) {  // row-major B [K, N]: interleave two rows
    const int64_t k = 2 * kp;
    const uint16_t* lo = b + k * g.sb_k + j0 * g.sb_n;
    const uint16_t* hi = lo + g.sb_k;
    uint32_t* d = dst + kp * NR;
    if (k + 1 < K && g.sb_n == 1) {
      for (int j = 0; j < nr; ++j) d[j] = uint32_t(lo[j]) | (uint32_t(hi[j]) << 16);
    } else {
      for (int j = 0; j < nr; ++j)
        d[j] = uint32_t(lo[j * g.sb_n]) | (k + 1 < K ? uint32_t(hi[j * g.sb_n]) << 16 : 0u);
    }
    for (int j = nr; j < NR; ++j) d[j] = 0u;
  }
}

// ---------------------------------------------------------------------------------------
// Micro-kernels: full K loop on an MR x NR register tile, then the fused epilogue.

struct Epi {
  int mr, nr;            // valid rows / columns of this tile
  const float* bias;     // fp32, NR readable values (padded), or nullptr
  int act;
  char* c;               // top-left output element
  int64_t ldc_bytes;
  int c_kind;
};

template <int MR, int NR>
PK_GEMM_INLINE void finish(float* t, const Epi& e) {
  for (int i = 0; i < e.mr; ++i)
    epilogue_row<NR>(t + i * NR, e.bias, e.act, e.c + i * e.ldc_bytes, e.c_kind, e.nr);
}

#define PK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define PK_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))
#define PK_AVX2 __attribute__((target("avx2,fma,f16c")))

// AVX-512 fp32: 8 x 32 tile = 16 zmm accumulators; per k two B loads and 8 broadcasts.
PK_AVX512 void uk_avx512_f32(int64_t K, const void* ap, const void* bp, const Epi& e) {
  const float* A = static_cast<const float*>(ap);
  const float* B = static_cast<const float*>(bp);
  __m512 acc[8][2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m512 b0 = _mm512_load_ps(B + 32 * k), b1 = _mm512_load_ps(B + 32 * k + 16);
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      const __m512 a = _mm512_set1_ps(A[8 * k + i]);
      acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
    }
  }
  alignas(64) float t[8 * 32];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    _mm512_store_ps(t + 32 * i, acc[i][0]);
    _mm512_store_ps(t + 32 * i + 16, acc[i][1]);
  }
  finish<8, 32>(t, e);
}

// AVX512-BF16: same tile; each vdpbf16ps adds a[k]b[k] + a[k+1]b[k+1] (bf16 products are
// exact in fp32, accumulation in fp32), so one instruction does two K steps.
constexpr int BF_MR = 12;  // 24 zmm accumulators + 2 B + 1 broadcast
PK_AVX512BF16 void uk_avx512bf16(int64_t KP, const void* ap, const void* bp, const Epi& e) {
  const uint32_t* A = static_cast<const uint32_t*>(ap);
  const uint32_t* B = static_cast<const uint32_t*>(bp);
  __m512 acc[BF_MR][2];
#pragma GCC unroll 12
  for (int i = 0; i < BF_MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < KP; ++kp) {
    const __m512bh b0 = (__m512bh)_mm512_load_si512(B + 32 * kp);
    const __m512bh b1 = (__m512bh)_mm512_load_si512(B + 32 * kp + 16);
#pragma GCC unroll 12
    for (int i = 0; i < BF_MR; ++i) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(A[BF_MR * kp + i]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], a, b1);
    }
  }
  alignas(64) float t[BF_MR * 32];
#pragma GCC unroll 12
  for (int i = 0; i < BF_MR; ++i) {
    _mm512_store_ps(t + 32 * i, acc[i][0]);
    _mm512_store_ps(t + 32 * i + 16, acc[i][1]);
  }
  finish<BF_MR, 32>(t, e);
}

// AVX2 fp32: 6 x 16 tile = 12 ymm accumulators (16 registers in all).
PK_AVX2 void uk_avx2_f32(int64_t K, const void* ap, const void* bp, const Epi& e) {
  const float* A = static_cast<const float*>(ap);
  const float* B = static_cast<const float*>(bp);
  __m256 acc[6][2];
#pragma GCC unroll 6
  for (int i = 0; i < 6; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_load_ps(B + 16 * k), b1 = _mm256_load_ps(B + 16 * k + 8);
#pragma GCC unroll 6
    for (int i = 0; i < 6; ++i) {
      const __m256 a = _mm256_broadcast_ss(A + 6 * k + i);
      acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
    }
  }
  alignas(64) float t[6 * 16];
#pragma GCC unroll 6
  for (int i = 0; i < 6; ++i) {
    _mm256_store_ps(t + 16 * i, acc[i][0]);
    _mm256_store_ps(t + 16 * i + 8, acc[i][1]);
  }
  finish<6, 16>(t, e);
}

// Portable path (baseline x86-64 / any CPU): plain loops the compiler may vectorise with SSE2.
void uk_scalar_f32(int64_t K, const void* ap, const void* bp, const Epi& e) {
  const float* A = static_cast<const float*>(ap);
  const float* B = static_cast<const float*>(bp);
  alignas(64) float t[4 * 16] = {};
  for (int64_t k = 0; k < K; ++k)
    for (int i = 0; i < 4; ++i) {
      const float a = A[4 * k + i];
      for (int j = 0; j < 16; ++j) t[16 * i + j] += a * B[16 * k + j];
    }
  finish<4, 16>(t, e);
}

using MicroKernel = void (*)(int64_t, const void*, const void*, const Epi&);

struct KernelDesc {
  MicroKernel fn;
  int mr, nr;
  bool pairs;  // bf16-pair packing (else fp32)
  const char* name;
};

KernelDesc choose(int a_kind, int b_kind) {
  const Isa isa = active_isa();
  if (isa == Isa::AVX512_BF16 && a_kind == 1 && b_kind == 1) return {uk_avx512bf16, BF_MR, 32, true, "avx512_bf16"};
  if (isa >= Isa::AVX512) return {uk_avx512_f32, 8, 32, false, "avx512_fp32"};
  if (isa == Isa::AVX2) return {uk_avx2_f32, 6, 16, false, "avx2_fp32"};
  return {uk_scalar_f32, 4, 16, false, "scalar_fp32"};
}

void pack_a_tile(const GemmArgs& g, const KernelDesc& d, int64_t r0, void* dst) {
  if (d.pairs) return pack_a_pairs(g, r0, d.mr, static_cast<uint32_t*>(dst));
  switch (g.a_kind) {
    case 0: return pack_a_f32<0>(g, r0, d.mr, static_cast<float*>(dst));
    case 1: return pack_a_f32<1>(g, r0, d.mr, static_cast<float*>(dst));
    default: return pack_a_f32<2>(g, r0, d.mr, static_cast<float*>(dst));
  }
}

void pack_b_panel(const GemmArgs& g, const KernelDesc& d, int64_t j0, int nr, void* dst) {
  if (d.pairs) return pack_b_pairs(g, j0, nr, d.nr, static_cast<uint32_t*>(dst));
  switch (g.b_kind) {
    case 0: return pack_b_f32<0>(g, j0, nr, d.nr, static_cast<float*>(dst));
    case 1: return pack_b_f32<1>(g, j0, nr, d.nr, static_cast<float*>(dst));
    default: return pack_b_f32<2>(g, j0, nr, d.nr, static_cast<float*>(dst));
  }
}


// ---------------------------------------------------------------------------------------
// Few rows (decode-style linear, R <= kSmallRows) with B's K contiguous (a linear weight
// [N, K] as stored): packing B would cost more than the multiply, so each output column is
// a dot product streamed straight from the weight row, parallel over N. x rows are copied
// once (fp32, or bf16 for the vdpbf16ps kernel). Epilogue per element (N values only).

constexpr int64_t kSmallRows = 4;

struct SmallM {
  const GemmArgs* g;
  const void* x;  // [R][K] contiguous: fp32, or bf16 bits for the bf16 kernel
  int64_t R;
};

inline void small_store(const SmallM& s, int64_t n, const float* res) {
  const GemmArgs& g = *s.g;
  const float b = g.bias ? load_as_float(g.bias, n * g.s_bias, g.bias_kind) : 0.f;
  for (int64_t r = 0; r < s.R; ++r)
    store_from_float(g.c, r * g.ldc + n, activation_ref(g.act, res[r] + b), g.c_kind);
}

PK_AVX512BF16 void small_bf16_avx512(const SmallM& s, int64_t n0, int64_t n1) {
  const GemmArgs& g = *s.g;
  const int64_t K = g.K, R = s.R;
  const uint16_t* x = static_cast<const uint16_t*>(s.x);
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* w = static_cast<const uint16_t*>(g.b) + n * g.sb_n;
    __m512 acc[kSmallRows][2];
    for (int r = 0; r < kSmallRows; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + k), w1 = (__m512bh)_mm512_loadu_si512(w + k + 32);
      for (int64_t r = 0; r < R; ++r) {
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)_mm512_loadu_si512(x + r * K + k), w0);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)_mm512_loadu_si512(x + r * K + k + 32), w1);
      }
    }
    for (; k < K; k += 32) {  // masked tail: lanes past K load as zero
      const __mmask32 m = K - k >= 32 ? ~__mmask32(0) : (__mmask32(1) << (K - k)) - 1;
      const __m512bh w0 = (__m512bh)_mm512_maskz_loadu_epi16(m, w + k);
      for (int64_t r = 0; r < R; ++r)
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)_mm512_maskz_loadu_epi16(m, x + r * K + k), w0);
    }
    float res[kSmallRows];
    for (int64_t r = 0; r < R; ++r) res[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
    small_store(s, n, res);
  }
}

// 16 weights from w + k as fp32 (fp32 / bf16 / fp16 storage), lanes >= rem zero.
PK_AVX512 inline __m512 load_w16(const void* w, int kind, int64_t k, int64_t rem) {
  const __mmask16 m = rem >= 16 ? __mmask16(0xffff) : __mmask16((1u << rem) - 1);
  if (kind == 0) return _mm512_maskz_loadu_ps(m, static_cast<const float*>(w) + k);
  const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(w) + k);
  if (kind == 1) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  return _mm512_cvtph_ps(h);
}

PK_AVX512 void small_f32_avx512(const SmallM& s, int64_t n0, int64_t n1) {
  const GemmArgs& g = *s.g;
  const int64_t K = g.K, R = s.R;
  const float* x = static_cast<const float*>(s.x);
  const int64_t welem = g.b_kind == 0 ? 4 : 2;
  for (int64_t n = n0; n < n1; ++n) {
    const void* w = static_cast<const char*>(g.b) + n * g.sb_n * welem;
    __m512 acc[kSmallRows][2];
    for (int r = 0; r < kSmallRows; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      const __m512 w0 = load_w16(w, g.b_kind, k, 16), w1 = load_w16(w, g.b_kind, k + 16, 16);
      for (int64_t r = 0; r < R; ++r) {
        acc[r][0] = _mm512_fmadd_ps(_mm512_loadu_ps(x + r * K + k), w0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(_mm512_loadu_ps(x + r * K + k + 16), w1, acc[r][1]);
      }
    }
    for (; k < K; k += 16) {
      const int64_t rem = K - k;
      const __mmask16 m = rem >= 16 ? __mmask16(0xffff) : __mmask16((1u << rem) - 1);
      const __m512 w0 = load_w16(w, g.b_kind, k, rem);
      for (int64_t r = 0; r < R; ++r)
        acc[r][0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + r * K + k), w0, acc[r][0]);
    }
    float res[kSmallRows];
    for (int64_t r = 0; r < R; ++r) res[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
    small_store(s, n, res);
  }
}

PK_AVX2 inline __m256 load_w8(const void* w, int kind, int64_t k) {
  if (kind == 0) return _mm256_loadu_ps(static_cast<const float*>(w) + k);
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + k));
  if (kind == 1) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  return _mm256_cvtph_ps(h);
}

PK_AVX2 void small_f32_avx2(const SmallM& s, int64_t n0, int64_t n1) {
  const GemmArgs& g = *s.g;
  const int64_t K = g.K, R = s.R;
  const float* x = static_cast<const float*>(s.x);
  const int64_t welem = g.b_kind == 0 ? 4 : 2;
  for (int64_t n = n0; n < n1; ++n) {
    const void* w = static_cast<const char*>(g.b) + n * g.sb_n * welem;
    __m256 acc[kSmallRows][2];
    for (int r = 0; r < kSmallRows; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      const __m256 w0 = load_w8(w, g.b_kind, k), w1 = load_w8(w, g.b_kind, k + 8);
      for (int64_t r = 0; r < R; ++r) {
        acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * K + k), w0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * K + k + 8), w1, acc[r][1]);
      }
    }
    float res[kSmallRows];
    for (int64_t r = 0; r < R; ++r) {
      const __m256 v = _mm256_add_ps(acc[r][0], acc[r][1]);
      __m128 t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
      t = _mm_add_ps(t, _mm_movehl_ps(t, t));
      t = _mm_add_ss(t, _mm_movehdup_ps(t));
      float tail = 0.f;
      for (int64_t kk = k; kk < K; ++kk) tail += x[r * K + kk] * load_as_float(w, kk, g.b_kind);
      res[r] = _mm_cvtss_f32(t) + tail;
    }
    small_store(s, n, res);
  }
}

// Returns false when this call is not a small-M one (the packed GEMM then runs).
bool small_m(const GemmArgs& g) {
  const int64_t R = g.batch * g.M;
  const Isa isa = active_isa();
  if (R > kSmallRows || g.sb_k != 1 || g.K == 0 || isa < Isa::AVX2) return false;
  const bool bf16 = isa == Isa::AVX512_BF16 && g.a_kind == 1 && g.b_kind == 1;
  const size_t elem = bf16 ? 2 : 4;
  void* xbuf = tl_a_buf.get(elem * static_cast<size_t>(R * g.K));
  for (int64_t r = 0; r < R; ++r) {
    const int64_t base = (r / g.M) * g.sa_b + (r % g.M) * g.sa_m;
    for (int64_t k = 0; k < g.K; ++k) {
      if (bf16) static_cast<uint16_t*>(xbuf)[r * g.K + k] = ld16(g.a, base + k * g.sa_k);
      else static_cast<float*>(xbuf)[r * g.K + k] = load_as_float(g.a, base + k * g.sa_k, g.a_kind);
    }
  }
  const SmallM s{&g, xbuf, R};
  const int64_t blocks = (g.N + 15) / 16;
#pragma omp parallel for schedule(static) num_threads(std::max(1, g.num_threads))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t n0 = b * 16, n1 = std::min(g.N, n0 + 16);
    if (bf16) small_bf16_avx512(s, n0, n1);
    else if (isa >= Isa::AVX512) small_f32_avx512(s, n0, n1);
    else small_f32_avx2(s, n0, n1);
  }
  tl_a_buf.release_above();
  return true;
}
}  // namespace

const char* kernel_name(int a_kind, int b_kind) { return choose(a_kind, b_kind).name; }

float activation_ref(Act act, float x) {
  float row[1] = {x};
  float out;
  epilogue_row<1>(row, nullptr, static_cast<int>(act), &out, 0, 1);
  return out;
}

void gemm(const GemmArgs& g) {
  const int64_t R = g.batch * g.M;
  if (R == 0 || g.N == 0) return;
  if (small_m(g)) return;
  const KernelDesc d = choose(g.a_kind, g.b_kind);
  const int64_t kd = d.pairs ? (g.K + 1) / 2 : g.K;  // 32-bit words per k-column of a panel
  const int64_t m_tiles = (R + d.mr - 1) / d.mr, n_tiles = (g.N + d.nr - 1) / d.nr;
  const int threads = std::max(1, g.num_threads);

  // Bias as fp32, padded so the epilogue can read NR values from any tile's first column.
  float* bias = nullptr;
  if (g.bias != nullptr) {
    bias = static_cast<float*>(tl_bias_buf.get(sizeof(float) * (n_tiles * d.nr)));
    for (int64_t n = 0; n < n_tiles * d.nr; ++n)
      bias[n] = n < g.N ? load_as_float(g.bias, n * g.s_bias, g.bias_kind) : 0.f;
  }

  // Work items: (N panel, chunk of M tiles), N-panel-major so a thread's consecutive items
  // share the B panel it packed. Enough M chunks that every thread gets work when N is narrow.
  const int64_t m_chunks = std::min<int64_t>(m_tiles, std::max<int64_t>(1, (4 * threads + n_tiles - 1) / n_tiles));
  const int64_t m_per = (m_tiles + m_chunks - 1) / m_chunks;
  const int64_t items = n_tiles * m_chunks;
  const size_t a_tile_words = static_cast<size_t>(kd) * d.mr;
  const size_t b_panel_bytes = sizeof(float) * static_cast<size_t>(std::max<int64_t>(kd, 1)) * d.nr;
  char* apack = static_cast<char*>(tl_a_buf.get(sizeof(float) * std::max<size_t>(a_tile_words, 1) * m_tiles));
  const int64_t c_elem = g.c_kind == 0 ? 4 : 2;

#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < m_tiles; ++t) pack_a_tile(g, d, t * d.mr, apack + sizeof(float) * a_tile_words * t);

    void* bpack = tl_b_buf.get(b_panel_bytes);
    int64_t packed = -1;
    // Dynamic: on a shared machine a thread that loses its core for a time slice would
    // otherwise hold back the whole static partition (items are >= 4 per thread).
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t jt = it / m_chunks, mc = it % m_chunks;
      const int64_t j0 = jt * d.nr;
      const int nr = static_cast<int>(std::min<int64_t>(d.nr, g.N - j0));
      if (packed != jt) {
        pack_b_panel(g, d, j0, nr, bpack);
        packed = jt;
      }
      const int64_t t_end = std::min(m_tiles, (mc + 1) * m_per);
      for (int64_t t = mc * m_per; t < t_end; ++t) {
        const int64_t r0 = t * d.mr;
        Epi e;
        e.mr = static_cast<int>(std::min<int64_t>(d.mr, R - r0));
        e.nr = nr;
        e.bias = bias ? bias + j0 : nullptr;
        e.act = static_cast<int>(g.act);
        e.c = static_cast<char*>(g.c) + (r0 * g.ldc + j0) * c_elem;
        e.ldc_bytes = g.ldc * c_elem;
        e.c_kind = g.c_kind;
        d.fn(kd, apack + sizeof(float) * a_tile_words * t, bpack, e);
      }
    }
  }
  tl_a_buf.release_above();  // the packed A of a huge GEMM is not kept (scratch_buffer.h)
}

}  // namespace pk::cpu::gemm
