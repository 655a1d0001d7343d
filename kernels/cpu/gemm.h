// CPU GEMM with a fused epilogue (torch-free): C = act(A @ B + bias), cast to C's dtype.
//
// Design (BLIS-like, simplified for inference shapes):
//  * A is packed once per call into MR-row micro-panels (fp32, or bf16 pairs for the
//    AVX512-BF16 path); each thread packs one NR-column micro-panel of B at a time into a
//    thread-local buffer that stays in its L2 and reuses it for every M tile it owns.
//  * The micro-kernel runs the whole K loop with the MR x NR tile in registers, then
//    applies bias + activation and the output cast before one store, so every output
//    element is produced by exactly one micro-kernel call: results do not depend on the
//    number of threads (bitwise identical for 1 vs N threads).
//  * At most 4 rows with B's K contiguous (decode-style linear on a [N, K] weight): no
//    packing; each output is a dot product streamed from the weight row, parallel over N.
//  * Packing buffers are thread-local and grow-only (kept between calls: no page faults on
//    fresh memory per call); they hold at most the packed A plus one B panel per thread.
//  * ISA path chosen at run time (pk::cpu::active_isa()): AVX512-BF16 (vdpbf16ps, both
//    operands bf16), AVX-512 fp32 FMA, AVX2 fp32 FMA, portable scalar. bf16/fp16 operands on
//    the fp32 paths are widened while packing.
#pragma once
#include <cstdint>

namespace pk::cpu::gemm {

enum class Act : int { None = 0, Relu = 1, Gelu = 2, GeluTanh = 3, Silu = 4 };

// Element kinds: 0 fp32, 1 bf16, 2 fp16 (same as pk::float_kind).
struct GemmArgs {
  // A: `batch` matrices of [M, K]; element (b, m, k) at a[b*sa_b + m*sa_m + k*sa_k].
  const void* a = nullptr;
  int a_kind = 0;
  int64_t batch = 1, M = 0, K = 0, N = 0;
  int64_t sa_b = 0, sa_m = 0, sa_k = 0;
  // B: [K, N], element (k, n) at b[k*sb_k + n*sb_n] (a linear weight [N, K] is B with
  // sb_k = w.stride(1), sb_n = w.stride(0)).
  const void* b = nullptr;
  int b_kind = 0;
  int64_t sb_k = 0, sb_n = 0;
  // bias [N] (element n at bias[n*s_bias]) or nullptr.
  const void* bias = nullptr;
  int bias_kind = 0;
  int64_t s_bias = 1;
  Act act = Act::None;
  // C: rows r = b*M + m, element (r, n) at c[r*ldc + n].
  void* c = nullptr;
  int c_kind = 0;
  int64_t ldc = 0;
  int num_threads = 1;
};

void gemm(const GemmArgs& args);

// Name of the micro-kernel gemm() would use for these operand kinds now (for tests/benchmarks).
const char* kernel_name(int a_kind, int b_kind);

// Activation applied to one fp32 value (same code as the fused epilogue; for tests/reuse).
float activation_ref(Act act, float x);

}  // namespace pk::cpu::gemm
