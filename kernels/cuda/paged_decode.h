// Paged decode attention for NVIDIA GPUs, torch-free: raw pointers, sizes, element strides and
// a cudaStream_t. The torch-facing launcher is bindings/cuda_paged_attention.cpp.
//
// Semantics are those of polykernels.reference.paged_attention: query token t of sequence s
// sits at position seq_lens[s] - q_len + t and attends causally to the sequence's keys (token
// p lives in block block_table[s][p / block_size], offset p % block_size), narrowed to
// distance <= window_left when window_left >= 0; optional softcap (s = cap * tanh(s / cap))
// and ALiBi (s -= slope * distance). A row with no visible key gives out 0 and lse -inf.
//
// Index values are range-checked on the device, never trusted to address memory (issue 14):
// seq_lens[s] must be 0 or in [q_len, max_blocks * block_size], else every row of sequence s
// is NaN (out and lse); a block id a row's visible key lives in must be in [0, num_blocks),
// else that row is NaN. Reads stay inside the tensors either way; other rows are unaffected.
//
// Supported (checked by the launcher and kernels/cuda/register.py supports()): fp16 or bf16 q
// and caches of the same dtype (no fp8), head_dim 64 / 128 / 256 with a unit stride and
// 16-byte aligned rows (pointers and the other strides multiples of 8 elements),
// q_len * (heads_q / heads_kv) <= kMaxRows, any block size.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace pk::cuda {

constexpr int kMaxRows = 16;  // GQA-packed rows (q_len * group) one thread block handles

enum class DType : int { kFloat16 = 0, kBFloat16 = 1 };

struct PagedDecodeParams {
  const void* q;               // [num_seqs, q_len, heads_q, head_dim]
  const void* k_cache;         // [num_blocks, block_size, heads_kv, head_dim]
  const void* v_cache;         // same shape as k_cache
  const int32_t* block_table;  // [num_seqs, max_blocks], column stride 1
  const int32_t* seq_lens;     // [num_seqs], each 0 or in [q_len, max_blocks * block_size]
  const float* alibi;          // nullptr, or slopes with strides alibi_stride_s (0 for [heads_q]) / _h
  void* out;                   // [num_seqs, q_len, heads_q, head_dim] contiguous, q's dtype
  float* lse;                  // [num_seqs, heads_q, q_len] contiguous
  float* part_out;             // num_splits > 1: [num_seqs, num_splits, q_len, heads_q, head_dim]
  float* part_lse;             // num_splits > 1: [num_seqs, num_splits, heads_q, q_len]
  int num_seqs, q_len, heads_q, heads_kv, head_dim, block_size, num_splits;
  int64_t num_blocks;  // k_cache.size(0): valid block ids are [0, num_blocks)
  int64_t max_blocks;  // block_table.size(1): seq_lens[s] <= max_blocks * block_size
  int64_t q_stride_s, q_stride_t, q_stride_h;
  int64_t k_stride_b, k_stride_t, k_stride_h;
  int64_t v_stride_b, v_stride_t, v_stride_h;
  int64_t bt_stride;
  int64_t alibi_stride_s, alibi_stride_h;
  float softmax_scale;
  float softcap;    // <= 0: off
  int window_left;  // < 0: unbounded
  DType dtype;
};

// Launches the decode kernel (grid num_seqs x heads_kv x num_splits) and, with num_splits > 1,
// the kernel that merges the splits. Returns cudaErrorInvalidValue for an unsupported head_dim
// or row count, otherwise the launch status.
cudaError_t paged_decode(const PagedDecodeParams& p, cudaStream_t stream);

}  // namespace pk::cuda
