// Weight-only quantized linear on CPU (torch-free): out = x @ dequant(qweight).T + bias.
//
// Format (defined by polykernels.reference.quant): unsigned codes u in [0, 2^bits), per
// group g = k / group_size along K a scale s[n, g] and zero z[n, g] (2^(bits-1) when no
// zeros are given): W[n, k] = (u[n, k] - z[n, g]) * s[n, g]. int8: qweight [N, K] one code
// per byte; int4: [N, K/2], element 2j in the low nibble of byte j, 2j+1 in the high one.
//
// rows <= kGemvMaxRows: a GEMV-style kernel streams each weight row once, dequantising in
// registers (parallel over N); int4 with bf16 activations on AVX512-BF16 (group_size a
// multiple of 64) maps codes to bf16 through a table and uses vdpbf16ps. More rows: a panel of weight rows is dequantised to fp32
// and multiplied with the GEMM (gemm.h), panel by panel.
#pragma once
#include <cstdint>

namespace pk::cpu::qlinear {

constexpr int64_t kGemvMaxRows = 16;

struct QLinearArgs {
  const void* x = nullptr;            // [rows, K], element (r, k) at x[r*sx_r + k*sx_k]
  int x_kind = 0;                     // 0 fp32, 1 bf16, 2 fp16
  int64_t rows = 0, K = 0, N = 0;
  int64_t sx_r = 0, sx_k = 1;
  const uint8_t* q = nullptr;         // row n starts at q + n*sq_n; bytes contiguous within a row
  int64_t sq_n = 0;
  int bits = 4;
  int64_t group_size = 0;             // > 0, divides K; even for int4
  const void* scales = nullptr;       // [N, G], element (n, g) at scales[n*ss_n + g*ss_g]
  int s_kind = 0;
  int64_t ss_n = 0, ss_g = 1;
  const void* zeros = nullptr;        // same layout as scales, or nullptr
  int z_kind = 0;
  int64_t sz_n = 0, sz_g = 1;
  const void* bias = nullptr;         // [N] or nullptr
  int bias_kind = 0;
  int64_t s_bias = 1;
  void* out = nullptr;                // [rows, N], element (r, n) at out[r*ldo + n]
  int out_kind = 0;
  int64_t ldo = 0;
  int num_threads = 1;
};

void quantized_linear(const QLinearArgs& args);

// Which kernel quantized_linear() would run now (tests, benchmarks); group_size resolved (> 0).
const char* path_name(int64_t rows, int bits, int x_kind, int64_t group_size);

}  // namespace pk::cpu::qlinear
