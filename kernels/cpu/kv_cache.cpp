// KV-cache scatter and fp8 e4m3fn conversions (ISA-neutral: memory bound, tiny compute).
#include "kv_cache.h"

#include <cmath>
#include <cstring>

#include "attention.h"
#include "dtype_convert.h"

namespace pk::cpu::attn {
namespace {

float e4m3_value(int code) {
  const int sign = code & 0x80, e = (code >> 3) & 0xf, m = code & 7;
  if (e == 0xf && m == 7) return std::nanf("");
  const float mag = e == 0 ? std::ldexp(static_cast<float>(m), -9)  // subnormal: m * 2^-9
                           : std::ldexp(1.f + m / 8.f, e - 7);
  return sign ? -mag : mag;
}

struct Table {
  float v[256];
  Table() { for (int i = 0; i < 256; ++i) v[i] = e4m3_value(i); }
};

int elem_size(int kind) { return kind == kF32 ? 4 : (kind == kFP8E4M3 ? 1 : 2); }

}  // namespace

const float* fp8_e4m3_to_float_table() {
  static const Table table;
  return table.v;
}

uint8_t float_to_fp8_e4m3(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7f;         // NaN
  float a;
  std::memcpy(&a, &u, 4);
  if (a >= 448.f) return sign | 0x7e;              // saturate (also +-inf)
  if (a < 0.015625f) {                             // below 2^-6: subnormal grid of 2^-9
    // nearbyint rounds half to even; the product is exact (power-of-two scaling).
    return sign | static_cast<uint8_t>(std::nearbyint(a * 512.f));  // 8 encodes 2^-6 exactly
  }
  // Normal: keep 3 mantissa bits of the fp32 pattern with round-half-even, rebias 127 -> 7.
  u += 0x7ffffu + ((u >> 20) & 1u);
  uint32_t code = (u >> 20) - ((127u - 7u) << 3);
  if (code > 0x7e) code = 0x7e;
  return sign | static_cast<uint8_t>(code);
}

void write_kv_cache(const WriteKvParams& p) {
  const int ss = elem_size(p.src_kind), cs = elem_size(p.cache_kind);
  const bool fp8 = p.cache_kind == kFP8E4M3;
  const int64_t total = p.num_tokens * p.heads;
  // Same dtype and unit inner strides (the usual case): each head row is one memcpy.
  // Converting element by element ran at about half of torch's index_put here.
  const bool copy_rows = !fp8 && p.src_kind == p.cache_kind && p.k_s[2] == 1 && p.v_s[2] == 1 &&
                         p.kc_s[3] == 1 && p.vc_s[3] == 1;
  // A decode step writes a few hundred rows: threads cost more than they save there.
#pragma omp parallel for schedule(static) if (total * p.head_dim >= (1 << 18))
  for (int64_t idx = 0; idx < total; ++idx) {
    const int64_t t = idx / p.heads, h = idx % p.heads;
    const char* sp = static_cast<const char*>(p.slots) + t * p.slot_stride * p.slot_bytes;
    int64_t slot;
    if (p.slot_bytes == 4) {
      int32_t s32;
      std::memcpy(&s32, sp, 4);
      slot = s32;
    } else {
      std::memcpy(&slot, sp, 8);
    }
    if (slot < 0) continue;
    const int64_t blk = slot / p.block_size, off = slot % p.block_size;
    for (int side = 0; side < 2; ++side) {
      const char* src = static_cast<const char*>(side ? p.v : p.k);
      const int64_t* s_s = side ? p.v_s : p.k_s;
      const int64_t* c_s = side ? p.vc_s : p.kc_s;
      const float scale = (side ? p.v_scale : p.k_scale) *
                          (p.kv_scales != nullptr ? p.kv_scales[side * p.kvs_s[0] + h * p.kvs_s[1]] : 1.f);
      char* dst = static_cast<char*>(side ? p.v_cache : p.k_cache) +
                  (blk * c_s[0] + off * c_s[1] + h * c_s[2]) * cs;
      src += (t * s_s[0] + h * s_s[1]) * ss;
      if (copy_rows) {
        std::memcpy(dst, src, static_cast<size_t>(p.head_dim) * cs);
        continue;
      }
      for (int64_t d = 0; d < p.head_dim; ++d) {
        const float x = load_as_float(src, d * s_s[2], p.src_kind);
        if (fp8) {
          // value / scale (a division, like the reference), clamped by the conversion.
          reinterpret_cast<uint8_t*>(dst)[d * c_s[3]] = float_to_fp8_e4m3(x / scale);
        } else {
          store_from_float(dst, d * c_s[3], x, p.cache_kind);
        }
      }
    }
  }
}

}  // namespace pk::cpu::attn
