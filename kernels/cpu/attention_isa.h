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
struct PagedItem { int64_t seq, hk, g0, ng, t0, nt, split; };

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

}  // namespace pk::cpu::attn
