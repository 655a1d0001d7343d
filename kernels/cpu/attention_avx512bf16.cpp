// AVX512_BF16 path of the CPU attention kernels, for bf16 queries with bf16 (or fp8 e4m3)
// keys/values: both GEMMs use vdpbf16ps (pairs of bf16 products accumulated in fp32), the
// softmax stays fp32 and P is rounded to bf16 for P V (as the GPU flash kernels do).
//
// Layouts ("pair" = two bf16 in one 32-bit lane, the operand unit of vdpbf16ps):
//   Q  [rows][dp] bf16 (= [rows][dp/2] pairs along the head dim)
//   K  [D/2][BN] pairs: K[j][2p], K[j][2p+1] for 16 keys per vector  -> S tile 4 rows x 64 keys
//   V  [BN/2][dp] pairs: V[2i][d], V[2i+1][d] for 16 dims per vector -> O tile 4 rows x 64 dims
//   P  [rows][BN] bf16 (= pairs along keys)
// GCC 12 warns "__Y may be used uninitialized" inside its own AVX-512 intrinsic headers (the
// undefined pass-through operand of the masked builtins; GCC bug 105593): a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "attention_isa.h"
#include "dtype_convert.h"

// Compiled for AVX-512 with BF16; called only when the CPU has it (pk::cpu::active_isa()).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")

#include "attention_avx512_vec.h"
#include "attention_engine.h"

namespace pk::cpu::attn {
namespace {

inline uint16_t bits16(const char* p, int kind, const float* fp8_lut) {
  if (kind == kBF16) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return h;
  }
  return float_to_bf16(fp8_lut[*reinterpret_cast<const uint8_t*>(p)]);  // exact: e4m3 fits bf16
}


// 16 fp8 e4m3fn codes -> 16 bf16 (exact: 3 mantissa bits fit in 7). Normals rebias the
// exponent with integer adds; subnormals (m * 2^-9) go through an exact int->float product;
// 0x7f / 0xff become NaN. No float denormals are involved, so DAZ/FTZ modes cannot interfere.
inline __m256i fp8x16_to_bf16(const uint8_t* src) {
  const __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  const __m512i em = _mm512_and_si512(x, _mm512_set1_epi32(0x7f));
  const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0x80)), 24);
  __m512i bits = _mm512_add_epi32(_mm512_slli_epi32(em, 20), _mm512_set1_epi32(120 << 23));
  const __mmask16 sub = _mm512_cmplt_epi32_mask(em, _mm512_set1_epi32(8));
  const __m512 subv = _mm512_mul_ps(_mm512_cvtepi32_ps(em), _mm512_set1_ps(1.f / 512.f));
  bits = _mm512_mask_mov_epi32(bits, sub, _mm512_castps_si512(subv));
  const __mmask16 nan = _mm512_cmpeq_epi32_mask(em, _mm512_set1_epi32(0x7f));
  bits = _mm512_mask_mov_epi32(bits, nan, _mm512_set1_epi32(0x7fc00000));
  bits = _mm512_or_si512(bits, sign);
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16));  // exact: low 16 bits are zero
}

// One K/V row of D fp8 codes (dim stride 1) as bf16 into dst.
inline void fp8_row_to_bf16(const char* src, int64_t D, uint16_t* dst, const float* lut) {
  int64_t d = 0;
  for (; d + 16 <= D; d += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + d), fp8x16_to_bf16(reinterpret_cast<const uint8_t*>(src) + d));
  for (; d < D; ++d) dst[d] = float_to_bf16(lut[static_cast<uint8_t>(src[d])]);
}

struct OpsBF16 {
  static constexpr int BN = 64;
  static constexpr int C = 4;  // 16-key (or 16-dim) vectors per tile row
  static int64_t q_bytes(int64_t dp) { return 2 * kMaxRows * dp; }
  static int64_t k_bytes(int64_t dp) { return 2 * dp * BN; }
  static int64_t v_bytes(int64_t dp) { return 2 * dp * BN; }
  static int64_t p_bytes() { return 2 * kMaxRows * BN; }

  static void load_q(void* qbuf, int r, const char* src, int64_t ds, int, int64_t D, int64_t dp, float) {
    uint16_t* dst = static_cast<uint16_t*>(qbuf) + r * dp;
    int64_t d = 0;
    if (src != nullptr)
      for (; d < D; ++d) std::memcpy(dst + d, src + d * ds, 2);
    for (; d < dp; ++d) dst[d] = 0;
  }

  template <class Src>
  static void pack_k_scalar(const Src& src, int64_t j0, int n, int64_t D, uint32_t* kp, bool fast) {
    const int64_t d2 = (D + 1) / 2;
    for (int c = 0; c < n; ++c) {
      const char* kr = src.krow(j0 + c);
      if (fast) {
        for (int64_t p = 0; p < d2; ++p) std::memcpy(kp + p * BN + c, kr + 4 * p, 4);
      } else {
        for (int64_t p = 0; p < d2; ++p) {
          const uint32_t lo = bits16(kr + 2 * p * src.k_ds, src.kind, src.fp8_lut);
          const uint32_t hi = 2 * p + 1 < D ? bits16(kr + (2 * p + 1) * src.k_ds, src.kind, src.fp8_lut) : 0;
          kp[p * BN + c] = lo | (hi << 16);
        }
      }
    }
    for (int c = n; c < BN; ++c)
      for (int64_t p = 0; p < d2; ++p) kp[p * BN + c] = 0;
  }

  // fp8 cache rows: convert 16 rows at a time to bf16 in a small buffer, then the same
  // register transpose (K) / pair interleave (V) as bf16 rows.
  template <class Src>
  static void pack_fp8(const Src& src, int64_t j0, int n, int64_t D, int64_t dp, uint32_t* kp, uint32_t* vp) {
    alignas(64) uint16_t rows[16 * 256];
    const int64_t d2 = D / 2;
    for (int c0 = 0; c0 < BN; c0 += 16) {
      const int m = n - c0 < 16 ? (n - c0 > 0 ? n - c0 : 0) : 16;
      for (int i = 0; i < m; ++i) fp8_row_to_bf16(src.krow(j0 + c0 + i), D, rows + i * 256, src.fp8_lut);
      for (int64_t p0 = 0; p0 < d2; p0 += 16)
        transpose_tile_16([&](int i) { return rows + i * 256; }, m, p0, kp + p0 * BN + c0, BN);
      for (int i = 0; i < m; ++i) fp8_row_to_bf16(src.vrow(j0 + c0 + i), D, rows + i * 256, src.fp8_lut);
      for (int i = m; i < 16; ++i)
        for (int64_t d = 0; d < D; ++d) rows[i * 256 + d] = 0;
      for (int i = 0; i < 8 && c0 + 2 * i < n; ++i)
        interleave_rows(rows + 2 * i * 256, rows + (2 * i + 1) * 256, D, dp, vp + (c0 / 2 + i) * dp);
    }
  }

  // dst[d] = (a[d], b[d]) as a bf16 pair, zero beyond D up to dp.
  static void interleave_rows(const uint16_t* a, const uint16_t* b, int64_t D, int64_t dp, uint32_t* dst) {
    const __m512i lo_idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                            39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
    int64_t d = 0;
    for (; d + 32 <= D; d += 32) {
      const __m512i x = _mm512_loadu_si512(a + d), y = _mm512_loadu_si512(b + d);
      _mm512_storeu_si512(dst + d, _mm512_permutex2var_epi16(x, lo_idx, y));
      _mm512_storeu_si512(dst + d + 16, _mm512_permutex2var_epi16(x, hi_idx, y));
    }
    for (; d < D; ++d) dst[d] = a[d] | (static_cast<uint32_t>(b[d]) << 16);
    for (; d < dp; ++d) dst[d] = 0;
  }

  template <class Src>
  static void pack(const Src& src, int64_t j0, int n, int64_t D, int64_t dp, void* kb, void* vb) {
    uint32_t* kp = static_cast<uint32_t*>(kb);
    uint32_t* vp = static_cast<uint32_t*>(vb);
    const int64_t d2 = (D + 1) / 2;
    if (src.kind == kFP8E4M3 && src.k_ds == 1 && src.v_ds == 1 && D % 32 == 0 && D <= 256) {
      pack_fp8(src, j0, n, D, dp, kp, vp);
      return;
    }
    const bool fast = src.kind == kBF16 && src.k_ds == 2 && src.v_ds == 2 && D % 2 == 0;
    if (fast && d2 % 16 == 0) {
      // 16 keys x 16 pairs at a time, transposed in registers.
      for (int c0 = 0; c0 < BN; c0 += 16) {
        const int m = n - c0 < 16 ? (n - c0 > 0 ? n - c0 : 0) : 16;
        for (int64_t p0 = 0; p0 < d2; p0 += 16)
          transpose_tile_16([&](int i) { return src.krow(j0 + c0 + i); }, m, p0, kp + p0 * BN + c0, BN);
      }
    } else {
      pack_k_scalar(src, j0, n, D, kp, fast);
    }
    for (int i = 0; 2 * i < n; ++i) {
      const char* r0 = src.vrow(j0 + 2 * i);
      const char* r1 = 2 * i + 1 < n ? src.vrow(j0 + 2 * i + 1) : nullptr;
      uint32_t* dst = vp + i * dp;
      int64_t d = 0;
      if (fast && r1 != nullptr) {
        // Interleave two bf16 rows into pairs, 32 dims per step.
        const __m512i lo_idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                                39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
        const __m512i hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
        for (; d + 32 <= D; d += 32) {
          const __m512i a = _mm512_loadu_si512(r0 + 2 * d), b = _mm512_loadu_si512(r1 + 2 * d);
          _mm512_storeu_si512(dst + d, _mm512_permutex2var_epi16(a, lo_idx, b));
          _mm512_storeu_si512(dst + d + 16, _mm512_permutex2var_epi16(a, hi_idx, b));
        }
      }
      for (; d < D; ++d) {
        const uint32_t lo = bits16(r0 + d * src.v_ds, src.kind, src.fp8_lut);
        const uint32_t hi = r1 != nullptr ? bits16(r1 + d * src.v_ds, src.kind, src.fp8_lut) : 0;
        dst[d] = lo | (hi << 16);
      }
      for (; d < dp; ++d) dst[d] = 0;
    }
  }

  static void gemm_qk(const void* qbuf, const void* kb, float* S, int nr, int64_t D, int64_t dp, float scale) {
    const uint32_t* Q = static_cast<const uint32_t*>(qbuf);
    const uint32_t* K = static_cast<const uint32_t*>(kb);
    const int64_t d2 = (D + 1) / 2, qld = dp / 2;
    const __m512 sc = _mm512_set1_ps(scale);
    for (int r0 = 0; r0 < nr; r0 += kR) {
      __m512 acc[kR][C];
      for (int r = 0; r < kR; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
      const uint32_t* q0 = Q + r0 * qld;
      for (int64_t p = 0; p < d2; ++p) {
        __m512i kv[C];
        for (int c = 0; c < C; ++c) kv[c] = _mm512_loadu_si512(K + p * BN + c * 16);
        for (int r = 0; r < kR; ++r) {
          const __m512i qb = _mm512_set1_epi32(static_cast<int>(q0[r * qld + p]));
          for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)kv[c], (__m512bh)qb);
        }
      }
      for (int r = 0; r < kR; ++r)
        for (int c = 0; c < C; ++c) _mm512_storeu_ps(S + (r0 + r) * BN + c * 16, _mm512_mul_ps(acc[r][c], sc));
    }
  }

  static void write_p(float* s, void* pbuf, int r) {
    uint16_t* P = static_cast<uint16_t*>(pbuf) + r * BN;
    for (int c = 0; c < BN; c += 16) {
      const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(s + c));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(P + c), (__m256i)h);
    }
  }

  template <int CC>
  static void pv_tile(const uint32_t* P, const uint32_t* Vp, float* O, const float* alpha, int r0, int n2,
                      int64_t dp, int64_t d0) {
    __m512 acc[kR][CC];
    for (int r = 0; r < kR; ++r) {
      const __m512 a = _mm512_set1_ps(alpha[r0 + r]);
      for (int c = 0; c < CC; ++c) acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(O + (r0 + r) * dp + d0 + c * 16), a);
    }
    for (int i = 0; i < n2; ++i) {
      __m512i vv[CC];
      for (int c = 0; c < CC; ++c) vv[c] = _mm512_loadu_si512(Vp + i * dp + d0 + c * 16);
      for (int r = 0; r < kR; ++r) {
        const __m512i pb = _mm512_set1_epi32(static_cast<int>(P[(r0 + r) * (BN / 2) + i]));
        for (int c = 0; c < CC; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)vv[c], (__m512bh)pb);
      }
    }
    for (int r = 0; r < kR; ++r)
      for (int c = 0; c < CC; ++c) _mm512_storeu_ps(O + (r0 + r) * dp + d0 + c * 16, acc[r][c]);
  }

  static void gemm_pv(const float*, const void* pbuf, const void* vb, float* O, const float* alpha, int nr, int n,
                      int64_t dp) {
    const uint32_t* P = static_cast<const uint32_t*>(pbuf);
    const uint32_t* Vp = static_cast<const uint32_t*>(vb);
    const int n2 = (n + 1) / 2;
    for (int r0 = 0; r0 < nr; r0 += kR) {
      int64_t d0 = 0;
      for (; d0 + C * 16 <= dp; d0 += C * 16) pv_tile<C>(P, Vp, O, alpha, r0, n2, dp, d0);
      for (; d0 < dp; d0 += 16) pv_tile<1>(P, Vp, O, alpha, r0, n2, dp, d0);
    }
  }
};

}  // namespace
}  // namespace pk::cpu::attn

namespace pk::cpu::attn::avx512bf16 {
void dense_items(const AttnParams& p, const DenseItem* items, int64_t n) {
  run_dense_items<Vec512, OpsBF16>(p, items, n);
}
void paged_items(const PagedParams& p, const PagedItem* items, int64_t n, int64_t n_splits, float* part_o,
                 float* part_lse, const float* fp8_lut) {
  run_paged_items<Vec512, OpsBF16>(p, items, n, n_splits, part_o, part_lse, fp8_lut);
}
}  // namespace pk::cpu::attn::avx512bf16

#pragma GCC pop_options
