// CPU attention forward (dense and varlen), torch-free: raw pointers, sizes, strides.
//
// Semantics are the reference's (kernels/reference/attention_ref.py): for query row i and key
// column j of one (batch, head), d = i + Sk - Sq - j; s = scale * q.k; softcap > 0:
// s = softcap * tanh(s / softcap); ALiBi: s -= slope * |d|; visible iff -right <= d <= left
// (-1 = unbounded; causal forces right = 0); out = softmax(s over visible) @ v; lse = log of
// the softmax denominator (natural log); a row with no visible key gives out 0, lse -inf.
// Sinks (optional, one logit per query head): e^sink joins each row's denominator as a key
// with no value (lse includes it; a row with no visible key gives out 0, lse = sink).
// GQA: query head h reads key/value head h / (heads_q / heads_kv), never copied.
#pragma once
#include <cstdint>

namespace pk::cpu::attn {

// Element kinds of q/k/v/out (and of KV caches).
enum Kind : int { kF32 = 0, kBF16 = 1, kF16 = 2, kFP8E4M3 = 3 };

struct AttnParams {
  const void* q; const void* k; const void* v;
  void* out;                    // same kind as q
  float* lse;                   // fp32
  int kind;                     // kF32, kBF16 or kF16 (q, k, v and out share it)
  int64_t batch, heads_q, heads_kv, head_dim;
  int64_t seqlen_q, seqlen_k;   // dense only
  // Varlen when non-null: sequence b owns query tokens [cu_q[b], cu_q[b+1]) and key tokens
  // [cu_k[b], cu_k[b+1]); `batch` is then the number of sequences and batch strides are 0.
  const int32_t* cu_q; const int32_t* cu_k;
  // Strides in elements: [batch, token, head, dim] for q/k/v/out, [batch, head, token] for lse.
  int64_t q_s[4], k_s[4], v_s[4], o_s[4], lse_s[3];
  float scale, softcap;
  bool causal;
  int64_t window_left, window_right;
  const float* alibi;           // slope of (b, h) = alibi[b * alibi_bs + h * alibi_hs], or null
  int64_t alibi_bs, alibi_hs;
  const float* sinks;           // [heads_q] contiguous fp32, or null
};

// Runs on the ISA path pk::cpu::active_isa() selects; OpenMP over sequences x KV heads x query
// blocks. Results do not depend on the number of threads (each output is computed by one
// work item whose arithmetic order is fixed).
void attention_fwd(const AttnParams& p);

}  // namespace pk::cpu::attn
