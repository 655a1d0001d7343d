// Paged decode attention, CUDA C++ (torch-free). See paged_decode.h for the contract.
//
// One thread block (4 warps) per (sequence, KV head, KV split). The q_len * group query rows
// that share the KV head are packed into one block ("GQA packing"), so every K/V byte of the
// sequence is read once per split. Keys are processed in tiles of 128 (one per thread):
//   1. scores: each thread gathers one key row through the block table (16-byte vector loads)
//      and dots it with every packed query row held in shared memory (broadcast reads);
//   2. online softmax: one warp per row turns the tile's scores into probabilities and keeps
//      the running max / sum, publishing the rescale factor of the accumulators;
//   3. P @ V: each thread owns two adjacent head dims for all rows and a share of the tile's
//      keys (the warp reads 64 contiguous elements of one V row: coalesced).
// The per-thread partial sums are reduced through shared memory at the end. With num_splits
// > 1 each block writes fp32 partial (out, lse) and a second kernel merges them.
//
// Index values are never trusted to address memory (issue 14, "never silently wrong"): a
// seq_len outside [0, max_blocks * block_size] or in (0, q_len) makes the block read no key and
// write NaN for every row of the sequence; a block id outside [0, num_blocks) is read as block
// 0 and every row that can see one of its keys gets NaN out and lse. Integer compares only:
// no device assert (it would kill the CUDA context), no host sync.
#include "paged_decode.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

namespace pk::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = kThreads;  // keys per iteration: one per thread in the score phase

__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// 8 consecutive elements from a 16-byte aligned address, as floats.
template <typename T>
__device__ __forceinline__ void load8(const T* p, float* f) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = to_float(e[i]);
}

// 2 consecutive elements from a 4-byte aligned address, as floats.
template <typename T>
__device__ __forceinline__ void load2(const T* p, float& a, float& b) {
  const uint32_t raw = __ldg(reinterpret_cast<const unsigned int*>(p));
  const T* e = reinterpret_cast<const T*>(&raw);
  a = to_float(e[0]);
  b = to_float(e[1]);
}

// Whether a block id read from the table addresses a cache block; callers read block 0 instead
// when it does not.
__device__ __forceinline__ bool block_ok(int32_t blk, int64_t num_blocks) { return blk >= 0 && blk < num_blocks; }

// Whether a key at distance dist = query position - key position is attended to.
__device__ __forceinline__ bool in_view(int dist, int window_left) {
  return dist >= 0 && (window_left < 0 || dist <= window_left);
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <typename T, int D, int ROWS>
__global__ void __launch_bounds__(kThreads) paged_decode_kernel(const PagedDecodeParams p) {
  static_assert(D % 8 == 0 && kThreads % (D / 2) == 0, "head dim must split evenly over the threads");
  constexpr int kPairs = D / 2;              // each thread owns 2 adjacent dims in the PV phase
  constexpr int kTokPar = kThreads / kPairs;  // threads sharing one dim pair over the keys

  __shared__ float q_s[ROWS][D];
  __shared__ float p_s[ROWS][kTile];
  __shared__ float acc_s[kTokPar][ROWS][D];
  __shared__ float m_s[ROWS], l_s[ROWS], alpha_s[ROWS], slope_s[ROWS];
  __shared__ int pos_s[ROWS];
  __shared__ int bad_s[ROWS];  // 1: the row saw a key with an out-of-range block id

  const int s = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int group = p.heads_q / p.heads_kv;
  const int rows = p.q_len * group;
  // An invalid seq_len poisons the whole sequence and reads nothing (0 keys).
  const int seq_len_raw = p.seq_lens[s];
  const bool bad_seq = seq_len_raw < 0 || seq_len_raw > p.max_blocks * p.block_size ||
                       (seq_len_raw > 0 && seq_len_raw < p.q_len);
  const int seq_len = bad_seq ? 0 : seq_len_raw;
  const T* q = static_cast<const T*>(p.q) + static_cast<int64_t>(s) * p.q_stride_s;

  for (int i = tid; i < ROWS * D; i += kThreads) {
    const int r = i / D, d = i % D;
    float v = 0.f;
    if (r < rows) {
      const int t = r / group, h = kvh * group + r % group;
      v = to_float(q[t * p.q_stride_t + h * p.q_stride_h + d]);
    }
    q_s[r][d] = v;
  }
  for (int r = tid; r < ROWS; r += kThreads) {
    const int h = kvh * group + r % group;
    m_s[r] = -INFINITY;
    l_s[r] = 0.f;
    pos_s[r] = seq_len - p.q_len + r / group;
    bad_s[r] = 0;
    slope_s[r] = (p.alibi != nullptr && r < rows) ? p.alibi[s * p.alibi_stride_s + h * p.alibi_stride_h] : 0.f;
  }

  // This block's keys: the visible range cut into num_splits chunks of whole tiles.
  const int lo = p.window_left >= 0 ? max(seq_len - p.q_len - p.window_left, 0) : 0;
  const int n_tiles = (seq_len - lo + kTile - 1) / kTile;
  const int tiles_per_split = (n_tiles + p.num_splits - 1) / p.num_splits;
  const int start = lo + split * tiles_per_split * kTile;
  const int end = min(start + tiles_per_split * kTile, seq_len);

  const T* k_base = static_cast<const T*>(p.k_cache) + static_cast<int64_t>(kvh) * p.k_stride_h;
  const T* v_base = static_cast<const T*>(p.v_cache) + static_cast<int64_t>(kvh) * p.v_stride_h;
  const int32_t* table = p.block_table + static_cast<int64_t>(s) * p.bt_stride;
  const int pair = tid % kPairs, tok_par = tid / kPairs;
  float acc[ROWS][2];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) acc[r][0] = acc[r][1] = 0.f;
  __syncthreads();

  for (int n0 = start; n0 < end; n0 += kTile) {
    // 1. scores of key j = n0 + tid against every row
    const int j = n0 + tid;
    if (j < end) {
      // j < seq_len <= max_blocks * block_size: the table entry itself is in bounds.
      const int32_t blk_raw = table[j / p.block_size];
      const bool blk_ok = block_ok(blk_raw, p.num_blocks);
      if (!blk_ok) {  // rare: poison the rows that see key j (benign race: every writer stores 1)
        for (int r = 0; r < rows; ++r) {
          if (in_view(pos_s[r] - j, p.window_left)) bad_s[r] = 1;
        }
      }
      const int64_t blk = blk_ok ? blk_raw : 0;
      const T* kp = k_base + blk * p.k_stride_b + static_cast<int64_t>(j % p.block_size) * p.k_stride_t;
      float sc[ROWS];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) sc[r] = 0.f;
#pragma unroll 2  // 4 made ptxas spill 4 bytes at 72 registers (sm_90a, bf16, 8 rows)
      for (int d0 = 0; d0 < D; d0 += 8) {
        float kf[8];
        load8(kp + d0, kf);
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
#pragma unroll
          for (int i = 0; i < 8; ++i) sc[r] = fmaf(q_s[r][d0 + i], kf[i], sc[r]);
        }
      }
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        float x = sc[r] * p.softmax_scale;
        if (p.softcap > 0.f) x = p.softcap * tanhf(x / p.softcap);
        const int dist = pos_s[r] - j;
        x -= slope_s[r] * static_cast<float>(abs(dist));
        const bool visible = r < rows && in_view(dist, p.window_left);
        p_s[r][tid] = visible ? x : -INFINITY;
      }
    } else {
#pragma unroll
      for (int r = 0; r < ROWS; ++r) p_s[r][tid] = -INFINITY;
    }
    __syncthreads();

    // 2. online softmax, one warp per row
    for (int r = warp; r < ROWS; r += kWarps) {
      float x[kTile / 32];
      float mx = -INFINITY;
#pragma unroll
      for (int i = 0; i < kTile / 32; ++i) {
        x[i] = p_s[r][lane + 32 * i];
        mx = fmaxf(mx, x[i]);
      }
      mx = warp_max(mx);
      const float m_old = m_s[r];
      const float m_new = fmaxf(m_old, mx);
      // Nothing visible yet: subtract 0 so exp gives 0 instead of NaN (-inf - -inf).
      const float m_safe = m_new == -INFINITY ? 0.f : m_new;
      float sum = 0.f;
#pragma unroll
      for (int i = 0; i < kTile / 32; ++i) {
        const float e = __expf(x[i] - m_safe);
        p_s[r][lane + 32 * i] = e;
        sum += e;
      }
      sum = warp_sum(sum);
      __syncwarp();
      if (lane == 0) {
        const float a = __expf(m_old - m_safe);
        alpha_s[r] = a;
        l_s[r] = l_s[r] * a + sum;
        m_s[r] = m_new;
      }
    }
    __syncthreads();

    // 3. acc = acc * alpha + P @ V over this thread's keys and dim pair
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const float a = alpha_s[r];
      acc[r][0] *= a;
      acc[r][1] *= a;
    }
    const int n_here = min(kTile, end - n0);
    for (int jj = tok_par; jj < n_here; jj += kTokPar) {
      const int jv = n0 + jj;
      const int32_t blk_raw = table[jv / p.block_size];  // same keys as the score phase: a bad id
      const int64_t blk = block_ok(blk_raw, p.num_blocks) ? blk_raw : 0;  // is already recorded
      const T* vp = v_base + blk * p.v_stride_b + static_cast<int64_t>(jv % p.block_size) * p.v_stride_t + 2 * pair;
      float v0, v1;
      load2(vp, v0, v1);
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const float pr = p_s[r][jj];
        acc[r][0] = fmaf(pr, v0, acc[r][0]);
        acc[r][1] = fmaf(pr, v1, acc[r][1]);
      }
    }
    __syncthreads();  // p_s / alpha_s are rewritten by the next tile
  }

  // Reduce the kTokPar partial sums of every (row, dim) and write out.
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    acc_s[tok_par][r][2 * pair] = acc[r][0];
    acc_s[tok_par][r][2 * pair + 1] = acc[r][1];
  }
  __syncthreads();

  const bool final_out = p.num_splits == 1;
  const int64_t sp = static_cast<int64_t>(s) * p.num_splits + split;
  for (int i = tid; i < rows * D; i += kThreads) {
    const int r = i / D, d = i % D;
    float v = 0.f;
#pragma unroll
    for (int t = 0; t < kTokPar; ++t) v += acc_s[t][r][d];
    const float l = l_s[r];
    const float o = (bad_seq || bad_s[r]) ? NAN : l > 0.f ? v / l : 0.f;
    const int t = r / group, h = kvh * group + r % group;
    const int64_t idx = ((sp * p.q_len + t) * p.heads_q + h) * D + d;
    if (final_out) {
      static_cast<T*>(p.out)[idx] = from_float<T>(o);
    } else {
      p.part_out[idx] = o;
    }
  }
  for (int r = tid; r < rows; r += kThreads) {
    const float l = l_s[r];
    const float lse = (bad_seq || bad_s[r]) ? NAN : l > 0.f ? m_s[r] + logf(l) : -INFINITY;
    const int t = r / group, h = kvh * group + r % group;
    const int64_t idx = (sp * p.heads_q + h) * p.q_len + t;
    if (final_out) {
      p.lse[idx] = lse;
    } else {
      p.part_lse[idx] = lse;
    }
  }
}

// Merge the num_splits fp32 partials of one (sequence, token, head): grid (num_seqs * q_len,
// heads_q). Empty splits (lse -inf) weigh exactly 0. A NaN partial lse (a poisoned row, see the
// top) makes the merged row NaN: it is checked explicitly, since fmaxf would drop it and the
// w > 0 test below would give it weight 0.
template <typename T>
__global__ void __launch_bounds__(kThreads) reduce_splits_kernel(const PagedDecodeParams p) {
  const int st = blockIdx.x, h = blockIdx.y;
  const int s = st / p.q_len, t = st % p.q_len;
  const int64_t lse_step = static_cast<int64_t>(p.heads_q) * p.q_len;
  const float* pl = p.part_lse + (static_cast<int64_t>(s) * p.num_splits * p.heads_q + h) * p.q_len + t;
  float m = -INFINITY;
  bool poisoned = false;
  for (int i = 0; i < p.num_splits; ++i) {
    m = fmaxf(m, pl[i * lse_step]);
    poisoned |= isnan(pl[i * lse_step]);
  }
  const float m_safe = m == -INFINITY ? 0.f : m;
  float total = 0.f;
  for (int i = 0; i < p.num_splits; ++i) total += __expf(pl[i * lse_step] - m_safe);
  const int64_t out_step = static_cast<int64_t>(p.q_len) * p.heads_q * p.head_dim;
  const float* po = p.part_out + ((static_cast<int64_t>(s) * p.num_splits * p.q_len + t) * p.heads_q + h) * p.head_dim;
  T* out = static_cast<T*>(p.out) + ((static_cast<int64_t>(s) * p.q_len + t) * p.heads_q + h) * p.head_dim;
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    float a = 0.f;
    for (int i = 0; i < p.num_splits; ++i) {
      const float w = __expf(pl[i * lse_step] - m_safe);
      if (w > 0.f) a = fmaf(w, po[i * out_step + d], a);
    }
    out[d] = from_float<T>(poisoned ? NAN : total > 0.f ? a / total : 0.f);
  }
  if (threadIdx.x == 0) {
    p.lse[(static_cast<int64_t>(s) * p.heads_q + h) * p.q_len + t] =
        poisoned ? NAN : total > 0.f ? m_safe + logf(total) : -INFINITY;
  }
}

template <typename T, int D, int ROWS>
cudaError_t launch(const PagedDecodeParams& p, cudaStream_t stream) {
  const dim3 grid(p.num_seqs, p.heads_kv, p.num_splits);
  paged_decode_kernel<T, D, ROWS><<<grid, kThreads, 0, stream>>>(p);
  if (p.num_splits > 1) {
    reduce_splits_kernel<T><<<dim3(p.num_seqs * p.q_len, p.heads_q), kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

// Rows are rounded up to 1, 4, 8 or 16: registers and shared memory scale with ROWS, and
// these four cover MHA decode, GQA 4/8 and small speculative q_len.
template <typename T, int D>
cudaError_t dispatch_rows(const PagedDecodeParams& p, cudaStream_t stream) {
  const int rows = p.q_len * (p.heads_q / p.heads_kv);
  if (rows <= 1) return launch<T, D, 1>(p, stream);
  if (rows <= 4) return launch<T, D, 4>(p, stream);
  if (rows <= 8) return launch<T, D, 8>(p, stream);
  if (rows <= kMaxRows) return launch<T, D, 16>(p, stream);
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t dispatch_dim(const PagedDecodeParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64: return dispatch_rows<T, 64>(p, stream);
    case 128: return dispatch_rows<T, 128>(p, stream);
    case 256: return dispatch_rows<T, 256>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t paged_decode(const PagedDecodeParams& p, cudaStream_t stream) {
  if (p.num_seqs == 0 || p.heads_q == 0 || p.q_len == 0) return cudaSuccess;  // empty outputs
  if (p.heads_kv <= 0 || p.heads_q % p.heads_kv != 0 || p.num_splits < 1 || p.block_size < 1) {
    return cudaErrorInvalidValue;
  }
  if (p.num_splits > 1 && (p.part_out == nullptr || p.part_lse == nullptr)) return cudaErrorInvalidValue;
  return p.dtype == DType::kBFloat16 ? dispatch_dim<__nv_bfloat16>(p, stream) : dispatch_dim<__half>(p, stream);
}

}  // namespace pk::cuda
