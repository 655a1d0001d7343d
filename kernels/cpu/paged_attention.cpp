// CPU paged decode: work planning (sequence x KV head x context split), path selection and
// the merge of split partials (ISA-neutral; the per-ISA kernels do the attention itself).
#include "paged_attention.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <vector>

#include "attention_isa.h"
#include "dtype_convert.h"
#include "kv_cache.h"

namespace pk::cpu::attn {
namespace {

// Enough items for any small core count, fixed so results never depend on the thread count;
// a split below ~256 keys costs more in merging than it gains.
constexpr int64_t kTargetItems = 32;
constexpr int64_t kMinKeysPerSplit = 256;

}  // namespace

bool paged_direct_ok(AttnPath path, const PagedParams& p) {
  // (fp8 with per-KV-head scales: the score scale differs per KV head, so one item per head)
  const bool kind_ok = p.cache_kind == kF32 || p.cache_kind == kBF16 || p.cache_kind == kF16 ||
                       (p.cache_kind == kFP8E4M3 && p.kv_scales == nullptr);
  return path == AttnPath::AVX2 && kind_ok && p.kc_s[3] == 1 && p.vc_s[3] == 1 && p.head_dim % 8 == 0 &&
         p.heads_q / p.heads_kv <= kDirectMaxRows;
}

void paged_attention_fwd(const PagedParams& p) {
  const int64_t group = p.heads_q / p.heads_kv;
  const int64_t ng = group < 64 ? group : 64;
  const int64_t nt = 64 / ng;
  const AttnPath path = choose_path(p.q_kind, p.cache_kind);
  // A sequence with one query on the pack-free path: one item walks kv_per_item KV heads of
  // each block together (all of them for <= 64 rows), reading the block front to back.
  const bool direct = paged_direct_ok(path, p);
  const int64_t kv_per_item = direct ? (64 / group < p.heads_kv ? 64 / group : p.heads_kv) : 1;
  auto kv_chunks = [&](int64_t s) {
    return direct && p.q_count(s) == 1 ? (p.heads_kv + kv_per_item - 1) / kv_per_item : 0;
  };
  int64_t max_len = 0;
  for (int64_t s = 0; s < p.num_seqs; ++s) max_len = p.seq_lens[s] > max_len ? p.seq_lens[s] : max_len;
  const int64_t head_chunks = (group + ng - 1) / ng;
  int64_t base_items = 0;
  for (int64_t s = 0; s < p.num_seqs; ++s)
    base_items += kv_chunks(s) > 0 ? kv_chunks(s) : p.heads_kv * ((p.q_count(s) + nt - 1) / nt) * head_chunks;
  if (base_items == 0) return;
  int64_t n_splits = (kTargetItems + base_items - 1) / base_items;
  const int64_t cap = max_len / kMinKeysPerSplit > 1 ? max_len / kMinKeysPerSplit : 1;
  if (n_splits > cap) n_splits = cap;

  std::vector<PagedItem> items;
  items.reserve(base_items * n_splits);
  // Splits of one row set are adjacent so the dynamic schedule spreads long sequences.
  for (int64_t s = 0; s < p.num_seqs; ++s) {
    if (kv_chunks(s) > 0) {
      for (int64_t hk = 0; hk < p.heads_kv; hk += kv_per_item)
        for (int64_t sp = 0; sp < n_splits; ++sp)
          items.push_back({s, hk, 0, group, 0, 1, sp, kv_per_item < p.heads_kv - hk ? kv_per_item : p.heads_kv - hk});
      continue;
    }
    for (int64_t hk = 0; hk < p.heads_kv; ++hk)
      for (int64_t t0 = 0, sq = p.q_count(s); t0 < sq; t0 += nt)
        for (int64_t g0 = 0; g0 < group; g0 += ng)
          for (int64_t sp = 0; sp < n_splits; ++sp)
            items.push_back({s, hk, g0, ng < group - g0 ? ng : group - g0, t0, nt < sq - t0 ? nt : sq - t0, sp, 1});
  }

  std::vector<float> part_o, part_lse;
  const int64_t rows = p.total_tokens() * p.heads_q;  // partials: [split][token (row_base order)][head]
  if (n_splits > 1) {
    part_o.resize(static_cast<size_t>(n_splits * rows * p.head_dim));
    part_lse.resize(static_cast<size_t>(n_splits * rows));
  }
  const float* lut = p.cache_kind == kFP8E4M3 ? fp8_e4m3_to_float_table() : nullptr;
  switch (path) {
    case AttnPath::AVX512BF16:
      avx512bf16::paged_items(p, items.data(), items.size(), n_splits, part_o.data(), part_lse.data(), lut);
      break;
    case AttnPath::AVX512:
      avx512::paged_items(p, items.data(), items.size(), n_splits, part_o.data(), part_lse.data(), lut);
      break;
    case AttnPath::AVX2:
      avx2::paged_items(p, items.data(), items.size(), n_splits, part_o.data(), part_lse.data(), lut);
      break;
    default:
      scalar::paged_items(p, items.data(), items.size(), n_splits, part_o.data(), part_lse.data(), lut);
      break;
  }
  if (n_splits == 1) return;

  // Merge: out = sum_i w_i o_i with w_i = exp(lse_i - lse), lse = log sum_i exp(lse_i).
  // Splits with lse -inf (no visible key) contribute nothing; all -inf gives 0 / -inf.
  const int qs = p.q_kind == kF32 ? 4 : 2;
  const float ninf = -std::numeric_limits<float>::infinity();
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t h = row % p.heads_q, gtok = row / p.heads_q;
    const int64_t s = p.cu_q ? 0 : gtok / p.q_len, tok = p.cu_q ? gtok : gtok % p.q_len;  // packed: seq strides are 0
    // the sink (if any) joins the merge as one more state with out 0
    const float sink = p.sinks != nullptr ? p.sinks[h] : ninf;
    float m = sink;
    for (int64_t sp = 0; sp < n_splits; ++sp) m = std::fmax(m, part_lse[sp * rows + row]);
    char* dst = static_cast<char*>(p.out) + (s * p.o_s[0] + tok * p.o_s[1] + h * p.o_s[2]) * qs;
    float* lse = p.lse + s * p.lse_s[0] + h * p.lse_s[1] + tok * p.lse_s[2];
    if (m == ninf) {
      for (int64_t d = 0; d < p.head_dim; ++d) store_from_float(dst, d * p.o_s[3], 0.f, p.q_kind);
      *lse = ninf;
      continue;
    }
    float wsum = sink == ninf ? 0.f : std::exp(sink - m);
    float wts[64];
    for (int64_t sp = 0; sp < n_splits; ++sp) {
      const float l = part_lse[sp * rows + row];
      wts[sp] = l == ninf ? 0.f : std::exp(l - m);
      wsum += wts[sp];
    }
    for (int64_t d = 0; d < p.head_dim; ++d) {
      float acc = 0.f;
      for (int64_t sp = 0; sp < n_splits; ++sp)
        if (wts[sp] != 0.f) acc += wts[sp] * part_o[(sp * rows + row) * p.head_dim + d];
      store_from_float(dst, d * p.o_s[3], acc / wsum, p.q_kind);
    }
    *lse = m + std::log(wsum);
  }
}

}  // namespace pk::cpu::attn
