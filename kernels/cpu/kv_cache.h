// KV-cache writes and fp8 e4m3 (OCP "fn" variant: no infinities, max 448) conversions for
// the CPU kernels, torch-free (semantics: kernels/reference/paged_ref.py write_kv_cache).
#pragma once
#include <cstdint>

namespace pk::cpu::attn {

// The exact fp32 value of each of the 256 e4m3fn codes (0x7f / 0xff are NaN).
const float* fp8_e4m3_to_float_table();

// Round to nearest even, saturating to +-448; NaN -> 0x7f with the sign (torch's rounding).
uint8_t float_to_fp8_e4m3(float x);

struct WriteKvParams {
  const void* k; const void* v;
  int src_kind;                       // kF32, kBF16, kF16 (k and v)
  void* k_cache; void* v_cache;
  int cache_kind;                     // kF32, kBF16, kF16 or kFP8E4M3
  const void* slots; int slot_bytes;  // int32 (4) or int64 (8); -1 = padding token, skipped
  int64_t slot_stride;
  int64_t num_tokens, heads, head_dim, block_size;
  int64_t k_s[3], v_s[3];             // [token, head, dim], elements
  int64_t kc_s[4], vc_s[4];           // [block, offset, head, dim], elements
  float k_scale, v_scale;             // fp8 caches store value / scale
  const float* kv_scales;             // optional [2][heads] per-head factors of k/v_scale (strides kvs_s)
  int64_t kvs_s[2];
};

void write_kv_cache(const WriteKvParams& p);

}  // namespace pk::cpu::attn
