// CPU paged decode attention, torch-free (semantics: kernels/reference/paged_ref.py).
//
// Caches are [num_blocks, block_size, heads_kv, head_dim] (any strides); token p of sequence
// s lives in block block_table[s][p / block_size] at offset p % block_size. The q_len queries
// of a sequence are its last q_len positions, causal always (a window narrows it further);
// q_len is one for all sequences or, packed, one per sequence. A sequence with seq_len 0 (a
// padded slot) has no visible key: its rows give 0 and lse -inf.
// fp8 e4m3 caches hold value / scale: K values are dequantised exactly and k_scale is applied
// to the scores, v_scale to the output, so no precision is lost to the scale.
#pragma once
#include <cstdint>

namespace pk::cpu::attn {

struct PagedParams {
  // first token of sequence s in q/out/lse's token dimension, and its query count
  int64_t q_begin(int64_t s) const { return cu_q ? cu_q[s] : 0; }
  int64_t q_count(int64_t s) const { return cu_q ? cu_q[s + 1] - cu_q[s] : q_len; }
  // rows of the packed token order (seq-major): sequence s's first token
  int64_t row_base(int64_t s) const { return cu_q ? cu_q[s] : s * q_len; }
  int64_t total_tokens() const { return cu_q ? cu_q[num_seqs] : num_seqs * q_len; }

  const void* q; void* out; float* lse;
  int q_kind;                       // kF32, kBF16, kF16 (out has the same kind)
  const void* k_cache; const void* v_cache;
  int cache_kind;                   // kF32, kBF16, kF16 or kFP8E4M3 (both caches)
  const int32_t* block_table; int64_t bt_s[2];
  const int32_t* seq_lens;
  // Uniform queries (cu_q == nullptr): q_len new tokens per sequence. Packed variable-length
  // queries (cu_q = cu_seqlens_q, [num_seqs + 1]): sequence s owns tokens cu_q[s]..cu_q[s+1]
  // of q/out/lse, addressed with the token stride (the seq strides q_s[0], o_s[0], lse_s[0]
  // are then 0), and q_len is only an upper bound.
  const int32_t* cu_q;
  int64_t num_seqs, q_len, heads_q, heads_kv, head_dim, block_size;
  int64_t q_s[4], o_s[4];           // [seq, token, head, dim]
  int64_t lse_s[3];                 // [seq, head, token]
  int64_t kc_s[4], vc_s[4];         // [block, offset, head, dim]
  float scale, softcap, k_scale, v_scale;
  // optional per-KV-head fp8 scales [2][heads_kv] (row 0 keys, row 1 values; element strides
  // kvs_s), multiplying k_scale / v_scale; nullptr = none
  const float* kv_scales; int64_t kvs_s[2];
  int64_t window_left, window_right;
  const float* alibi; int64_t alibi_bs, alibi_hs;
  const float* sinks;               // [heads_q] contiguous fp32 attention sinks, or null
};

// One work item per (sequence, KV head, context split): the heads_q / heads_kv query heads
// sharing a KV head are processed together, so each cached K/V byte is read once per
// sequence; splits (merged afterwards) keep both cores busy when batch x heads_kv is small.
// Decode on the engine's pack-free path (attention_isa.h: paged_direct_ok) takes up to 64
// query rows of several KV heads per item instead, so each block is read front to back.
// The split count depends only on the problem, never on the thread count, so results are
// the same for any number of threads.
void paged_attention_fwd(const PagedParams& p);

}  // namespace pk::cpu::attn
