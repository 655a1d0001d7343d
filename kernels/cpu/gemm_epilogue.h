// Fused GEMM epilogue math (torch-free): bias, activation, output cast on one fp32 tile row.
//
// Everything here is branch-free arithmetic so that, inlined into a micro-kernel compiled
// for AVX2 or AVX-512 (function target attributes), GCC vectorises the loops with that ISA;
// libm calls (erff, expf, tanhf) would not vectorise. Accuracy: exp has relative error
// < 2e-7 on [-87, 88]; erfc (Numerical Recipes' Chebyshev fit) < 1.2e-7 relative; both far
// below the fp32 rounding of a K-term dot product.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#define PK_GEMM_INLINE inline __attribute__((always_inline))

namespace pk::cpu::gemm {

PK_GEMM_INLINE float bits_to_float(int32_t i) { float f; std::memcpy(&f, &i, 4); return f; }
PK_GEMM_INLINE uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// exp(x), x clamped to [-87.3, 88.0] (so the result is a normal float; callers only need
// saturation there). Range reduction x = n ln2 + r, |r| <= ln2/2, degree-7 Taylor on r.
PK_GEMM_INLINE float fast_exp(float x) {
  // Ternaries, not std::fmin/fmax: those are libm calls without -ffast-math and stop GCC
  // from vectorising the epilogue (measured: gelu cost 9 ns/element scalar). NaN stays NaN.
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = std::fma(n, -0.693145751953125f, x);
  r = std::fma(n, -1.428606765330187e-06f, r);
  float p = 1.f / 5040.f;
  p = std::fma(p, r, 1.f / 720.f);
  p = std::fma(p, r, 1.f / 120.f);
  p = std::fma(p, r, 1.f / 24.f);
  p = std::fma(p, r, 1.f / 6.f);
  p = std::fma(p, r, 0.5f);
  p = std::fma(p, r, 1.f);
  p = std::fma(p, r, 1.f);
  return p * bits_to_float((static_cast<int32_t>(n) + 127) << 23);
}

// erfc(z) for z >= 0 (fractional error < 1.2e-7).
PK_GEMM_INLINE float erfc_pos(float z) {
  const float t = 1.f / std::fma(0.5f, z, 1.f);
  float p = 0.17087277f;
  p = std::fma(p, t, -0.82215223f);
  p = std::fma(p, t, 1.48851587f);
  p = std::fma(p, t, -1.13520398f);
  p = std::fma(p, t, 0.27886807f);
  p = std::fma(p, t, -0.18628806f);
  p = std::fma(p, t, 0.09678418f);
  p = std::fma(p, t, 0.37409196f);
  p = std::fma(p, t, 1.00002368f);
  p = std::fma(p, t, -1.26551223f);
  return t * fast_exp(p - z * z);
}

// gelu(x) = 0.5 x (1 + erf(x / sqrt2)); written with erfc so the negative tail keeps its
// relative accuracy: x >= 0: 0.5 x (2 - erfc(z)), x < 0: 0.5 x erfc(z), z = |x| / sqrt2.
PK_GEMM_INLINE float gelu_erf(float x) {
  const float e = erfc_pos(std::fabs(x) * 0.70710678118654752f);
  return 0.5f * x * (x >= 0.f ? 2.f - e : e);
}

// gelu_tanh(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3);
// 1 + tanh(u) = 2 e / (e + 1), e = exp(2u): no cancellation in the negative tail.
PK_GEMM_INLINE float gelu_tanh(float x) {
  const float u = 0.7978845608028654f * std::fma(0.044715f * x, x * x, x);
  const float e = fast_exp(2.f * u);
  return x * (e / (e + 1.f));
}

PK_GEMM_INLINE float silu(float x) { return x / (1.f + fast_exp(-x)); }

PK_GEMM_INLINE uint16_t to_bf16_bits(float f) {  // round to nearest even, NaN kept (quiet)
  const uint32_t u = float_to_bits(f);
  const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? ((u >> 16) | 0x40u) : r);
}

// Bias (already fp32, padded to NR), activation, cast and store of one tile row of NR
// values, `n` of which are stored.
template <int NR>
PK_GEMM_INLINE void epilogue_row(float* row, const float* bias, int act, void* c, int c_kind, int n) {
  if (bias != nullptr) {
#pragma omp simd
    for (int j = 0; j < NR; ++j) row[j] += bias[j];
  }
  switch (act) {
    case 1:
#pragma omp simd
      for (int j = 0; j < NR; ++j) row[j] = row[j] < 0.f ? 0.f : row[j];  // NaN stays NaN (as torch)
      break;
    case 2:
#pragma omp simd
      for (int j = 0; j < NR; ++j) row[j] = gelu_erf(row[j]);
      break;
    case 3:
#pragma omp simd
      for (int j = 0; j < NR; ++j) row[j] = gelu_tanh(row[j]);
      break;
    case 4:
#pragma omp simd
      for (int j = 0; j < NR; ++j) row[j] = silu(row[j]);
      break;
    default: break;
  }
  if (c_kind == 0) {
    float* o = static_cast<float*>(c);
    if (n == NR) {
#pragma omp simd
      for (int j = 0; j < NR; ++j) o[j] = row[j];
    } else {
      for (int j = 0; j < n; ++j) o[j] = row[j];
    }
  } else if (c_kind == 1) {
    uint16_t tmp[NR];
#pragma omp simd
    for (int j = 0; j < NR; ++j) tmp[j] = to_bf16_bits(row[j]);
    std::memcpy(c, tmp, sizeof(uint16_t) * n);
  } else {
    _Float16 tmp[NR];
#pragma omp simd
    for (int j = 0; j < NR; ++j) tmp[j] = static_cast<_Float16>(row[j]);
    std::memcpy(c, tmp, sizeof(uint16_t) * n);
  }
}

}  // namespace pk::cpu::gemm
