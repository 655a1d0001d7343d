// CPU launchers for paged attention (uniform and packed variable-length queries) and KV-cache writes: validate (including the
// block table and slots, which the kernels trust for addressing), call the torch-free kernels.
#include <algorithm>
#include <vector>

#include "cpu/attention.h"
#include "checks.h"
#include "cpu/kv_cache.h"
#include "cpu/paged_attention.h"

namespace {

using pk::cpu::attn::kFP8E4M3;

int cache_kind(const at::Tensor& c, const char* name) {
  if (c.scalar_type() == at::kFloat8_e4m3fn) return kFP8E4M3;
  if (c.scalar_type() == at::kFloat || c.scalar_type() == at::kBFloat16 || c.scalar_type() == at::kHalf)
    return pk::float_kind(c, name);
  PK_CHECK_ARG(false, name, "expected float32, bfloat16, float16 or float8_e4m3fn, got ", c.scalar_type());
  return -1;
}

void check_cache_pair(const at::Tensor& kc, const at::Tensor& vc) {
  PK_CHECK_ARG(kc.dim() == 4, "k_cache", "expected [num_blocks, block_size, heads_kv, head_dim], got ", kc.sizes());
  PK_CHECK_ARG(vc.sizes() == kc.sizes(), "v_cache", "expected the shape of k_cache ", kc.sizes());
  PK_CHECK_ARG(vc.scalar_type() == kc.scalar_type(), "v_cache", "expected dtype ", kc.scalar_type());
  PK_CHECK_ARG(kc.device().is_cpu() && vc.device().is_cpu(), "k_cache/v_cache", "expected CPU tensors");
}

at::Tensor take_out(const c10::optional<at::Tensor>& given, at::IntArrayRef sizes, const at::TensorOptions& opts,
                    const char* name) {
  if (!given.has_value()) return at::empty(sizes, opts);
  PK_CHECK_ARG(given->sizes() == sizes, name, "expected shape ", sizes, ", got ", given->sizes());
  PK_CHECK_ARG(given->scalar_type() == opts.dtype().toScalarType(), name, "expected dtype ",
               opts.dtype().toScalarType());
  return *given;
}

// Optional per-KV-head fp8 scales: fp32 [2, heads_kv] (row 0 keys, row 1 values).
const float* kv_scales_ptr(const c10::optional<at::Tensor>& kv_scales, int64_t heads_kv, int64_t* strides) {
  strides[0] = strides[1] = 0;
  if (!kv_scales.has_value()) return nullptr;
  const at::Tensor& t = *kv_scales;
  PK_CHECK_ARG(t.scalar_type() == at::kFloat && t.dim() == 2 && t.size(0) == 2 && t.size(1) == heads_kv &&
                   t.device().is_cpu(), "kv_scales", "expected a CPU float32 [2, ", heads_kv, "]");
  strides[0] = t.stride(0);
  strides[1] = t.stride(1);
  return t.data_ptr<float>();
}

// What the uniform and the packed (varlen) paged ops share: caches, block table, seq_lens and
// the scalar options, checked and written into p. q_lens: each sequence's query count.
void fill_paged_params(pk::cpu::attn::PagedParams& p, const at::Tensor& q, int q_kind, int64_t Hq, int64_t D,
                       const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& block_table,
                       const at::Tensor& seq_lens, const std::vector<int64_t>& q_lens, double softmax_scale,
                       int64_t window_left, int64_t window_right, double softcap,
                       const c10::optional<at::Tensor>& alibi_slopes, double k_scale, double v_scale,
                       const c10::optional<at::Tensor>& kv_scales) {
  check_cache_pair(k_cache, v_cache);
  const int c_kind = cache_kind(k_cache, "k_cache");
  PK_CHECK_ARG(c_kind == kFP8E4M3 || c_kind == q_kind, "k_cache", "expected dtype ", q.scalar_type(),
               " or float8_e4m3fn, got ", k_cache.scalar_type());
  const int64_t S = static_cast<int64_t>(q_lens.size());
  const int64_t NB = k_cache.size(0), BS = k_cache.size(1), Hk = k_cache.size(2);
  PK_CHECK_ARG(k_cache.size(3) == D, "k_cache", "expected head_dim ", D);
  PK_CHECK_ARG(Hk > 0 && Hq % Hk == 0, "k_cache", "heads_q (", Hq, ") must be a multiple of heads_kv (", Hk, ")");
  PK_CHECK_ARG(block_table.scalar_type() == at::kInt && block_table.dim() == 2 && block_table.size(0) == S,
               "block_table", "expected int32 [", S, ", max_blocks]");
  PK_CHECK_ARG(seq_lens.scalar_type() == at::kInt && seq_lens.dim() == 1 && seq_lens.size(0) == S &&
                   seq_lens.is_contiguous(), "seq_lens", "expected a contiguous int32 [", S, "]");
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const int32_t* bt = block_table.data_ptr<int32_t>();
  for (int64_t s = 0; s < S; ++s) {
    // seq_len 0 is a padded slot (its rows give 0 / -inf); otherwise it holds the q_len new tokens
    PK_CHECK_ARG(lens[s] >= 0 && lens[s] <= block_table.size(1) * BS && (lens[s] == 0 || lens[s] >= q_lens[s]),
                 "seq_lens", "seq_lens[", s, "] = ", lens[s], " must be 0 or lie in [q_len (", q_lens[s],
                 "), max_blocks * block_size]");
    for (int64_t i = 0; i < (lens[s] + BS - 1) / BS; ++i) {
      const int32_t blk = bt[s * block_table.stride(0) + i * block_table.stride(1)];
      PK_CHECK_ARG(blk >= 0 && blk < NB, "block_table", "block id ", blk, " at [", s, ", ", i, "] out of [0, ", NB,
                   ")");
    }
  }
  p.q = q.data_ptr(); p.q_kind = q_kind;
  p.k_cache = k_cache.data_ptr(); p.v_cache = v_cache.data_ptr(); p.cache_kind = c_kind;
  p.block_table = bt; p.bt_s[0] = block_table.stride(0); p.bt_s[1] = block_table.stride(1);
  p.seq_lens = lens;
  p.num_seqs = S; p.heads_q = Hq; p.heads_kv = Hk; p.head_dim = D; p.block_size = BS;
  for (int i = 0; i < 4; ++i) { p.kc_s[i] = k_cache.stride(i); p.vc_s[i] = v_cache.stride(i); }
  p.scale = static_cast<float>(softmax_scale);
  p.softcap = static_cast<float>(softcap);
  p.k_scale = static_cast<float>(k_scale);
  p.v_scale = static_cast<float>(v_scale);
  p.kv_scales = kv_scales_ptr(kv_scales, Hk, p.kvs_s);
  p.window_left = window_left;
  p.window_right = window_right;
  p.alibi = nullptr;
  if (alibi_slopes.has_value()) {
    const at::Tensor& a = *alibi_slopes;
    PK_CHECK_ARG(a.scalar_type() == at::kFloat && ((a.dim() == 1 && a.size(0) == Hq) ||
                                                   (a.dim() == 2 && a.size(0) == S && a.size(1) == Hq)),
                 "alibi_slopes", "expected float32 [", Hq, "] or [", S, ", ", Hq, "]");
    p.alibi = a.data_ptr<float>();
    p.alibi_hs = a.stride(-1);
    p.alibi_bs = a.dim() == 2 ? a.stride(0) : 0;
  }
}

std::tuple<at::Tensor, at::Tensor> cpu_paged_attention(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& block_table,
    const at::Tensor& seq_lens, double softmax_scale, int64_t window_left, int64_t window_right, double softcap,
    const c10::optional<at::Tensor>& alibi_slopes, double k_scale, double v_scale,
    const c10::optional<at::Tensor>& kv_scales, const c10::optional<at::Tensor>& out_,
    const c10::optional<at::Tensor>& lse_, const c10::optional<at::Tensor>& sinks) {
  const int q_kind = pk::float_kind(q, "q");
  PK_CHECK_ARG(q.dim() == 4, "q", "expected [num_seqs, q_len, heads_q, head_dim], got ", q.sizes());
  const int64_t S = q.size(0), L = q.size(1), Hq = q.size(2), D = q.size(3);
  pk::cpu::attn::PagedParams p{};
  fill_paged_params(p, q, q_kind, Hq, D, k_cache, v_cache, block_table, seq_lens, std::vector<int64_t>(S, L),
                    softmax_scale, window_left, window_right, softcap, alibi_slopes, k_scale, v_scale, kv_scales);
  at::Tensor out = take_out(out_, q.sizes(), q.options(), "out");
  at::Tensor lse = take_out(lse_, {S, Hq, L}, q.options().dtype(at::kFloat), "lse");
  if (out.numel() == 0) return {out, lse};
  p.out = out.data_ptr(); p.lse = lse.data_ptr<float>();
  p.sinks = pk::sinks_ptr(sinks, Hq);
  p.cu_q = nullptr; p.q_len = L;
  for (int i = 0; i < 4; ++i) { p.q_s[i] = q.stride(i); p.o_s[i] = out.stride(i); }
  for (int i = 0; i < 3; ++i) p.lse_s[i] = lse.stride(i);
  pk::cpu::attn::paged_attention_fwd(p);
  return {out, lse};
}

// Packed variable-length queries: q [total_q, heads_q, D], sequence s owns tokens
// cu_seqlens_q[s]..cu_seqlens_q[s+1]; out [total_q, heads_q, D], lse [heads_q, total_q].
std::tuple<at::Tensor, at::Tensor> cpu_varlen_paged_attention(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& block_table,
    const at::Tensor& seq_lens, const at::Tensor& cu_seqlens_q, int64_t max_seqlen_q, double softmax_scale,
    int64_t window_left, int64_t window_right, double softcap, const c10::optional<at::Tensor>& alibi_slopes,
    double k_scale, double v_scale, const c10::optional<at::Tensor>& kv_scales, const c10::optional<at::Tensor>& out_,
    const c10::optional<at::Tensor>& lse_, const c10::optional<at::Tensor>& sinks) {
  const int q_kind = pk::float_kind(q, "q");
  PK_CHECK_ARG(q.dim() == 3, "q", "expected [total_q, heads_q, head_dim], got ", q.sizes());
  const int64_t T = q.size(0), Hq = q.size(1), D = q.size(2);
  PK_CHECK_ARG(cu_seqlens_q.scalar_type() == at::kInt && cu_seqlens_q.dim() == 1 && cu_seqlens_q.size(0) >= 1 &&
                   cu_seqlens_q.is_contiguous(), "cu_seqlens_q", "expected a contiguous int32 [num_seqs + 1]");
  const int32_t* cu = cu_seqlens_q.data_ptr<int32_t>();
  const int64_t S = cu_seqlens_q.size(0) - 1;
  PK_CHECK_ARG(cu[0] == 0 && cu[S] == T, "cu_seqlens_q", "expected to start at 0 and end at total_q (", T, ")");
  std::vector<int64_t> q_lens(S);
  for (int64_t s = 0; s < S; ++s) {
    q_lens[s] = cu[s + 1] - cu[s];
    PK_CHECK_ARG(q_lens[s] >= 0 && q_lens[s] <= max_seqlen_q, "cu_seqlens_q",
                 "query run ", s, " has length ", q_lens[s], ", expected in [0, max_seqlen_q (", max_seqlen_q, ")]");
  }
  pk::cpu::attn::PagedParams p{};
  fill_paged_params(p, q, q_kind, Hq, D, k_cache, v_cache, block_table, seq_lens, q_lens, softmax_scale,
                    window_left, window_right, softcap, alibi_slopes, k_scale, v_scale, kv_scales);
  at::Tensor out = take_out(out_, q.sizes(), q.options(), "out");
  at::Tensor lse = take_out(lse_, {Hq, T}, q.options().dtype(at::kFloat), "lse");
  if (out.numel() == 0) return {out, lse};
  p.out = out.data_ptr(); p.lse = lse.data_ptr<float>();
  p.sinks = pk::sinks_ptr(sinks, Hq);
  p.cu_q = cu; p.q_len = max_seqlen_q;
  p.q_s[0] = 0; p.o_s[0] = 0; p.lse_s[0] = 0;  // packed: tokens carry the sequence
  for (int i = 0; i < 3; ++i) { p.q_s[i + 1] = q.stride(i); p.o_s[i + 1] = out.stride(i); }
  p.lse_s[1] = lse.stride(0); p.lse_s[2] = lse.stride(1);
  pk::cpu::attn::paged_attention_fwd(p);
  return {out, lse};
}

void cpu_write_kv_cache(const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache,
                        const at::Tensor& v_cache, const at::Tensor& slot_mapping, double k_scale, double v_scale,
                        const c10::optional<at::Tensor>& kv_scales) {
  const int s_kind = pk::float_kind(k, "k");
  PK_CHECK_ARG(v.scalar_type() == k.scalar_type(), "v", "expected dtype ", k.scalar_type());
  PK_CHECK_ARG(k.dim() == 3 && v.sizes() == k.sizes(), "k/v", "expected equal [num_tokens, heads_kv, head_dim]");
  check_cache_pair(k_cache, v_cache);
  const int c_kind = cache_kind(k_cache, "k_cache");
  const int64_t T = k.size(0), NB = k_cache.size(0), BS = k_cache.size(1);
  PK_CHECK_ARG(k_cache.size(2) == k.size(1) && k_cache.size(3) == k.size(2), "k_cache",
               "expected [num_blocks, block_size, ", k.size(1), ", ", k.size(2), "]");
  PK_CHECK_ARG((slot_mapping.scalar_type() == at::kInt || slot_mapping.scalar_type() == at::kLong) &&
                   slot_mapping.dim() == 1 && slot_mapping.size(0) == T,
               "slot_mapping", "expected int32 or int64 [", T, "]");
  const bool s64 = slot_mapping.scalar_type() == at::kLong;
  std::vector<int64_t> used;  // the written slots: two tokens may not share one (rows would race)
  used.reserve(T);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = s64 ? slot_mapping.data_ptr<int64_t>()[t * slot_mapping.stride(0)]
                             : slot_mapping.data_ptr<int32_t>()[t * slot_mapping.stride(0)];
    PK_CHECK_ARG(slot >= -1 && slot < NB * BS, "slot_mapping", "slot ", slot, " at ", t, " out of [-1, ", NB * BS,
                 ")");
    if (slot >= 0) used.push_back(slot);
  }
  std::sort(used.begin(), used.end());
  const auto dup = std::adjacent_find(used.begin(), used.end());
  PK_CHECK_ARG(dup == used.end(), "slot_mapping", "slot ", dup == used.end() ? 0 : *dup,
               " appears more than once (each token needs a slot of its own)");
  if (T == 0 || k.size(1) == 0 || k.size(2) == 0) return;
  pk::cpu::attn::WriteKvParams p{};
  p.k = k.data_ptr(); p.v = v.data_ptr(); p.src_kind = s_kind;
  p.k_cache = k_cache.data_ptr(); p.v_cache = v_cache.data_ptr(); p.cache_kind = c_kind;
  p.slots = slot_mapping.data_ptr(); p.slot_bytes = s64 ? 8 : 4; p.slot_stride = slot_mapping.stride(0);
  p.num_tokens = T; p.heads = k.size(1); p.head_dim = k.size(2); p.block_size = BS;
  for (int i = 0; i < 3; ++i) { p.k_s[i] = k.stride(i); p.v_s[i] = v.stride(i); }
  for (int i = 0; i < 4; ++i) { p.kc_s[i] = k_cache.stride(i); p.vc_s[i] = v_cache.stride(i); }
  p.k_scale = static_cast<float>(k_scale);
  p.v_scale = static_cast<float>(v_scale);
  p.kv_scales = kv_scales_ptr(kv_scales, k.size(1), p.kvs_s);
  pk::cpu::attn::write_kv_cache(p);
}

}  // namespace

TORCH_LIBRARY_IMPL(polykernels_C, CPU, m) {
  m.impl("cpu_paged_attention", &cpu_paged_attention);
  m.impl("cpu_varlen_paged_attention", &cpu_varlen_paged_attention);
  m.impl("cpu_write_kv_cache", &cpu_write_kv_cache);
}
