// Work items and the per-ISA entry points of the CPU attention kernels (torch-free).
// attention.cpp / paged_attention.cpp plan the work (ISA-neutral code) and call the entry
// point of the path pk::cpu::active_isa() selects; each entry point lives in its own
// translation unit compiled for that ISA (attention_scalar in attention.cpp).
#pragma once
#include <cstdint>

#include "attention.h"
#include "paged_attention.h"

namespace pk::cpu::attn {

// Query rows of one item: heads [hk * group + g0, + ng) x positions [t0, t0 + nt) of
// sequence b, all sharing KV head hk; ng * nt <= 64.
struct DenseItem { int64_t b, hk, g0, ng, t0, nt; };
// nh > 1 (pack-free decode path only): KV heads hk .. hk + nh - 1, each with all its query
// heads (g0 = 0, ng = group) and one token.
struct PagedItem { int64_t seq, hk, g0, ng, t0, nt, split, nh; };

// Query rows per KV head up to which the engine's pack-free path reads K/V rows where they
// lie instead of packing blocks (decode); Vec types opt in (the AVX2 path).
constexpr int kDirectMaxRows = 8;

#define PK_ATTN_DECLARE_ISA(ns)                                                                      \
  namespace ns {                                                                                     \
  void dense_items(const AttnParams& p, const DenseItem* items, int64_t n);                           \
  void paged_items(const PagedParams& p, const PagedItem* items, int64_t n, int64_t n_splits,         \
                   float* part_o, float* part_lse, const float* fp8_lut);                             \
  }
PK_ATTN_DECLARE_ISA(scalar)
PK_ATTN_DECLARE_ISA(avx2)
PK_ATTN_DECLARE_ISA(avx512)
PK_ATTN_DECLARE_ISA(avx512bf16)  // bf16 queries with bf16 or fp8 keys/values only
#undef PK_ATTN_DECLARE_ISA

// Which entry point to use for these kinds on the active ISA.
enum class AttnPath { Scalar, AVX2, AVX512, AVX512BF16 };
AttnPath choose_path(int q_kind, int kv_kind);

// Whether `path` runs this problem's decode through the pack-free path, so that one item may
// cover several KV heads (PagedItem::nh): an opted-in path, an fp32 / bf16 / fp16 cache or an
// fp8 one without per-KV-head scales, contiguous head dims of a multiple of 8, at most
// kDirectMaxRows query heads per KV head.
bool paged_direct_ok(AttnPath path, const PagedParams& p);

}  // namespace pk::cpu::attn
