// Merge two partial attention results (split-KV / cascade attention), torch-free.
#pragma once
#include <cstdint>

namespace pk::cpu {

// out_a/out_b/out: [rows, heads, head_dim] addressed through strides (elements);
// lse_*: [heads, rows] through strides. T is float, or uint16_t holding bf16/fp16 bits
// (selected by `kind`: 0 fp32, 1 bf16, 2 fp16).
struct MergeStatesArgs {
  const void* out_a; const void* out_b; void* out;
  const float* lse_a; const float* lse_b; float* lse;
  int64_t outer, rows, heads, head_dim;             // outer = product of leading dims
  int64_t oa_s[4], ob_s[4], o_s[4];                 // strides of out_a, out_b, out: outer, row, head, dim
  int64_t la_s[3], lb_s[3], l_s[3];                 // strides of lse_a, lse_b, lse: outer, head, row
  int kind;
};

void merge_attention_states(const MergeStatesArgs& a);

}  // namespace pk::cpu
