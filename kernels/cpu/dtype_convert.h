// bf16 / fp16 <-> fp32 scalar conversions shared by the CPU kernels (torch-free).
#pragma once
#include <cstdint>
#include <cstring>

namespace pk::cpu {

inline float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even, NaN kept quiet
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float fp16_to_float(uint16_t h) {
  // Use the compiler's _Float16 (GCC >= 12 on x86-64) for exact IEEE conversion.
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return static_cast<float>(v);
}

inline uint16_t float_to_fp16(float f) {
  _Float16 v = static_cast<_Float16>(f);
  uint16_t h;
  std::memcpy(&h, &v, 2);
  return h;
}

// kind: 0 fp32, 1 bf16, 2 fp16
inline float load_as_float(const void* p, int64_t i, int kind) {
  if (kind == 0) return static_cast<const float*>(p)[i];
  uint16_t h = static_cast<const uint16_t*>(p)[i];
  return kind == 1 ? bf16_to_float(h) : fp16_to_float(h);
}

inline void store_from_float(void* p, int64_t i, float v, int kind) {
  if (kind == 0) {
    static_cast<float*>(p)[i] = v;
  } else {
    static_cast<uint16_t*>(p)[i] = kind == 1 ? float_to_bf16(v) : float_to_fp16(v);
  }
}

}  // namespace pk::cpu
