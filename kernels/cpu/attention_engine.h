// The blocked flash-attention engine shared by every CPU ISA path (torch-free).
//
// Included by each ISA translation unit (attention.cpp, attention_avx2.cpp, ...) AFTER its
// headers, its `#pragma GCC target(...)` and its definitions of `Vec` types and `Ops`
// (the two GEMM micro-kernels and the K/V packing). Everything here lives in an anonymous
// namespace: each TU gets its own copy compiled for its ISA, and no function compiled with
// AVX-512 can be merged by the linker into a path that must run on a plain x86-64 CPU.
//
// One call of attend() processes a set of up to kMaxRows query rows (the query heads that
// share one KV head x a block of positions) against one contiguous range of keys, in key
// blocks of Ops::BN: pack the K/V block once (dtype conversion, any strides, paged gather),
// S = Q K^T, online softmax in fp32 (running max m, denominator l), O = O * alpha + P V.
//
// Few rows per KV head (decode) take attend_direct instead, where the Vec type opts in: no
// packing, K and V rows read where they lie (see "pack-free path" below).
//
// Vec interface (fp32 SIMD of W lanes): reg, W, zero, load, store, set1, fmadd(a, b, c) =
// a * b + c, mul, sub, max, reduce_max, reduce_add, exp (exp(-inf) = 0 exactly).
// Ops interface: BN, q/k/v/p buffer sizes, load_q, pack, gemm_qk, write_p, zero_p, gemm_pv.

namespace pk::cpu::attn {
namespace {

constexpr int kR = 4;          // query rows per register tile
constexpr int kMaxRows = 64;   // query rows per work item
constexpr int kPrefetchBlocks = 1;  // software prefetch distance, in key blocks
constexpr float kNegInf = -__builtin_inff();

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

inline int elem_bytes(int kind) { return kind == kF32 ? 4 : (kind == kFP8E4M3 ? 1 : 2); }

// One element of any kind as fp32 (fp8 through the exact lookup table).
inline float load_elem(const char* p, int kind, const float* fp8_lut) {
  switch (kind) {
    case kF32: return *reinterpret_cast<const float*>(p);
    case kBF16: return bf16_to_float(*reinterpret_cast<const uint16_t*>(p));
    case kF16: return fp16_to_float(*reinterpret_cast<const uint16_t*>(p));
    default: return fp8_lut[*reinterpret_cast<const uint8_t*>(p)];
  }
}

// Keys of one (sequence, KV head) stored densely: row j at base + j * token stride.
struct DenseSrc {
  const char* k; const char* v;
  int64_t k_ts, v_ts, k_ds, v_ds;   // bytes
  int kind;
  const float* fp8_lut;
  const char* krow(int64_t j) const { return k + j * k_ts; }
  const char* vrow(int64_t j) const { return v + j * v_ts; }
  void rows(int64_t j0, int n, const char** kr, const char** vr) const {
    for (int c = 0; c < n; ++c) { kr[c] = krow(j0 + c); vr[c] = vrow(j0 + c); }
  }
};

// Keys of one (sequence, KV head) in a paged cache, found through the block table.
struct PagedSrc {
  const char* k; const char* v;     // cache base + KV head offset
  const int32_t* bt; int64_t bt_s;  // the sequence's block-table row and its stride
  int64_t block_size;
  int64_t kb_s, ko_s, vb_s, vo_s, k_ds, v_ds;  // bytes: block, offset, dim
  int kind;
  const float* fp8_lut;
  const char* krow(int64_t j) const {
    return k + static_cast<int64_t>(bt[(j / block_size) * bt_s]) * kb_s + (j % block_size) * ko_s;
  }
  const char* vrow(int64_t j) const {
    return v + static_cast<int64_t>(bt[(j / block_size) * bt_s]) * vb_s + (j % block_size) * vo_s;
  }
  // The K and V rows of keys [j0, j0 + n) with one division, not two per key (64-bit
  // divisions per row cost decode more than its loads); reads only the table entries of
  // blocks that hold one of these keys.
  void rows(int64_t j0, int n, const char** kr, const char** vr) const {
    int64_t blk = j0 / block_size, off = j0 % block_size;
    for (int c = 0; c < n;) {
      const int64_t id = bt[blk * bt_s];
      const char* kb = k + id * kb_s;
      const char* vb = v + id * vb_s;
      for (; off < block_size && c < n; ++off, ++c) { kr[c] = kb + off * ko_s; vr[c] = vb + off * vo_s; }
      off = 0;
      ++blk;
    }
  }
};

// Software prefetch of rows [j, j + n) of K and V (each row_bytes long when the head dim is
// contiguous). Decode (4 query rows per KV head) waits on memory more than it computes:
// bench shape (8 x 4k ctx, 8 KV heads, D128 bf16), one core, 16.5 ms of CPU time per call
// from DRAM vs 7.3 ms with the blocks cache-resident; perf puts the hot spots on the first
// loads of each K/V row. Prefetching one block ahead measured ~10% less CPU time (a noisy,
// shared machine: 2 or 4 blocks ahead were no better).
template <class Src>
inline void prefetch_rows(const Src& src, int64_t j, int n, int64_t row_bytes) {
  for (int c = 0; c < n; ++c) {
    const char* kr = src.krow(j + c);
    const char* vr = src.vrow(j + c);
    for (int64_t off = 0; off < row_bytes; off += 64) {
      __builtin_prefetch(kr + off);
      __builtin_prefetch(vr + off);
    }
  }
}

struct RowSet {
  int n = 0;                         // real rows (<= kMaxRows)
  const char* q[kMaxRows];           // query row start
  int64_t q_ds;                      // query dim stride, bytes
  int q_kind;
  int64_t pos[kMaxRows];             // position in key coordinates: d = pos - j
  int64_t lo[kMaxRows], hi[kMaxRows];  // visible keys [lo, hi)
  float slope[kMaxRows];
  // KV heads the rows span (pack-free path only): rows [h * n / heads, (h + 1) * n / heads)
  // read KV head h, at byte offsets h * k_hs / h * v_hs from the source's rows
  int heads = 1;
  int64_t k_hs = 0, v_hs = 0;
};

// Visible key range of a query at key-coordinate position `pos` among Sk keys.
inline void visible_range(int64_t pos, int64_t sk, bool causal, int64_t left, int64_t right,
                          int64_t* lo, int64_t* hi) {
  const int64_t r = causal ? 0 : right;
  int64_t a = left >= 0 ? imax(0, pos - left) : 0;
  int64_t b = r >= 0 ? imin(sk, pos + r + 1) : sk;
  if (b < a) b = a;
  *lo = a;
  *hi = b;
}

struct Workspace {
  void* q; void* k; void* v; void* p;
  float* s; float* o; float* m; float* l; float* alpha;
  int64_t dp;   // padded head dim (row stride of O, V)
  void* base;
};

template <class Ops>
Workspace alloc_workspace(int64_t head_dim) {
  Workspace w{};
  w.dp = round_up(head_dim, 16);
  const int64_t sizes[9] = {Ops::q_bytes(w.dp), Ops::k_bytes(w.dp), Ops::v_bytes(w.dp), Ops::p_bytes(),
                            int64_t(4) * kMaxRows * Ops::BN, int64_t(4) * kMaxRows * w.dp,
                            4 * kMaxRows, 4 * kMaxRows, 4 * kMaxRows};
  int64_t total = 0;
  for (int64_t s : sizes) total += round_up(s, 64);
  char* base = static_cast<char*>(std::aligned_alloc(64, static_cast<size_t>(total)));
  if (base == nullptr) return w;
  w.base = base;
  char* cur = base;
  void* ptrs[9];
  for (int i = 0; i < 9; ++i) { ptrs[i] = cur; cur += round_up(sizes[i], 64); }
  w.q = ptrs[0]; w.k = ptrs[1]; w.v = ptrs[2]; w.p = ptrs[3];
  w.s = static_cast<float*>(ptrs[4]); w.o = static_cast<float*>(ptrs[5]);
  w.m = static_cast<float*>(ptrs[6]); w.l = static_cast<float*>(ptrs[7]);
  w.alpha = static_cast<float*>(ptrs[8]);
  return w;
}

// Online-softmax step for row r of the block [j0, j0 + n): masks, softcap, ALiBi, running
// max/denominator; leaves P (fp32) in the S row and the rescale factor of O in alpha[r].
template <class V, class Ops>
inline void softmax_row(const RowSet& rs, int r, int64_t j0, int n, float softcap, bool alibi,
                        Workspace& w) {
  constexpr int BN = Ops::BN;
  float* s = w.s + r * BN;
  const int64_t lo = r < rs.n ? imax(rs.lo[r], j0) : 0;
  const int64_t hi = r < rs.n ? imin(rs.hi[r], j0 + n) : 0;
  if (lo >= hi) {  // nothing visible in this block: P = 0, O unchanged
    for (int c = 0; c < BN; ++c) s[c] = 0.f;
    w.alpha[r] = 1.f;
    Ops::write_p(s, w.p, r);
    return;
  }
  const int c0 = static_cast<int>(lo - j0), c1 = static_cast<int>(hi - j0);
  if (softcap > 0.f) {
    const float inv = 1.f / softcap;
    for (int c = c0; c < c1; ++c) s[c] = softcap * std::tanh(s[c] * inv);
  }
  if (alibi) {
    const float slope = rs.slope[r];
    const int64_t pos = rs.pos[r];
    for (int c = c0; c < c1; ++c) {
      const int64_t d = pos - (j0 + c);
      s[c] -= slope * static_cast<float>(d < 0 ? -d : d);
    }
  }
  for (int c = 0; c < c0; ++c) s[c] = kNegInf;
  for (int c = c1; c < BN; ++c) s[c] = kNegInf;
  typename V::reg vmax = V::load(s);
  for (int c = V::W; c < BN; c += V::W) vmax = V::max(vmax, V::load(s + c));
  const float bmax = V::reduce_max(vmax);
  const float m_old = w.m[r];
  const float m_new = m_old > bmax ? m_old : bmax;
  const float alpha = m_old == kNegInf ? 0.f : std::exp(m_old - m_new);
  const typename V::reg mv = V::set1(m_new);
  typename V::reg vsum = V::zero();
  for (int c = 0; c < BN; c += V::W) {
    const typename V::reg e = V::exp(V::sub(V::load(s + c), mv));
    V::store(s + c, e);
    vsum = V::add(vsum, e);
  }
  w.l[r] = w.l[r] * alpha + V::reduce_add(vsum);
  w.m[r] = m_new;
  w.alpha[r] = alpha;
  Ops::write_p(s, w.p, r);
}

// ---- masked keys must not contribute at all ----
// A row's masked columns of a key block have P = 0, and the PV product would still add
// 0 * V there: NaN or inf in a V row the row cannot see (a causal mask's future, a padded or
// uninitialised cache row) would reach its output. The drivers check each (sequence, KV head)'s
// V once (a bit test per element, ~1% of the attention's time); where it holds a non-finite
// value, blocks in which some row sees only part of the keys take a PV that sums each row over
// its visible columns only.
inline bool block_partly_masked(const RowSet& rs, int64_t j0, int n) {
  for (int r = 0; r < rs.n; ++r)
    if (rs.lo[r] > j0 || rs.hi[r] < j0 + n) return true;
  return false;
}

// Whether a row of D elements of `kind` (element stride ds bytes) holds NaN or inf: a test of
// the exponent bits (all ones), which the compiler vectorises for unit strides.
template <class T>
inline bool any_exponent_ones(const char* row, int64_t D, int64_t ds, T mask) {
  int bad = 0;
  if (ds == static_cast<int64_t>(sizeof(T))) {
    const T* x = reinterpret_cast<const T*>(row);
    for (int64_t d = 0; d < D; ++d) bad |= (x[d] & mask) == mask;
  } else {
    for (int64_t d = 0; d < D; ++d) {
      T x;
      std::memcpy(&x, row + d * ds, sizeof(T));
      bad |= (x & mask) == mask;
    }
  }
  return bad != 0;
}

inline bool row_nonfinite(const char* row, int64_t D, int64_t ds, int kind) {
  switch (kind) {
    case kF32: return any_exponent_ones<uint32_t>(row, D, ds, 0x7f800000u);
    case kBF16: return any_exponent_ones<uint16_t>(row, D, ds, 0x7f80);
    case kF16: return any_exponent_ones<uint16_t>(row, D, ds, 0x7c00);
    default: return any_exponent_ones<uint8_t>(row, D, ds, 0x7f);  // fp8 e4m3fn: NaN only
  }
}

template <class Src>
bool v_rows_nonfinite(const Src& src, int64_t j0, int64_t n, int64_t D) {
  for (int64_t j = j0; j < j0 + n; ++j)
    if (row_nonfinite(src.vrow(j), D, src.v_ds, src.kind)) return true;
  return false;
}

// O = alpha * O + P V over each row's visible columns of [j0, j0 + n) (P: fp32 S rows).
template <class Src>
void pv_visible_only(const RowSet& rs, const Src& src, int64_t j0, int n, int bn, int64_t D, int nr,
                     Workspace& w) {
  for (int r = 0; r < nr; ++r) {
    float* o = w.o + r * w.dp;
    const float a = w.alpha[r];
    for (int64_t d = 0; d < w.dp; ++d) o[d] *= a;
    if (r >= rs.n) continue;
    const float* p = w.s + r * bn;
    for (int64_t j = imax(rs.lo[r], j0); j < imin(rs.hi[r], j0 + n); ++j) {
      const float pj = p[j - j0];
      const char* vr = src.vrow(j);
      for (int64_t d = 0; d < D; ++d) o[d] += pj * load_elem(vr + d * src.v_ds, src.kind, src.fp8_lut);
    }
  }
}

// ---- pack-free path for few query rows (decode) ----
// With a handful of query rows per KV head (decode: the query heads sharing it), packing a
// key block (K transposed and both widened into fp32 buffers) cost more than the products
// themselves. This path reads each K and V row where it lies and widens it in registers:
// S = Q K^T as dot products along D (8 accumulators per tile: R rows x 8/R keys, summed with
// one reduce8), O = alpha O + P V along D. Used for Vec types that opt in (kDirect: widening
// loads and reduce8, 8 lanes), contiguous head dims that are a multiple of the vector width,
// and fp32 / bf16 / fp16 / fp8 e4m3 caches (fp8 codes widened exactly; their scales apply to
// the scores and the output, as in the packed path); other layouts take the packed path.

template <class V>
constexpr auto has_direct(int) -> decltype(V::kDirect, bool()) { return V::kDirect && V::W == 8; }
template <class V>
constexpr bool has_direct(long) { return false; }

// Row loaders: a vector of fp32 from W elements of the cache kind at p.
struct LoadF32 { template <class V> static typename V::reg load(const char* p) { return V::load(reinterpret_cast<const float*>(p)); } static constexpr int kBytes = 4; };
struct LoadBF16 { template <class V> static typename V::reg load(const char* p) { return V::load_bf16(p); } static constexpr int kBytes = 2; };
struct LoadF16 { template <class V> static typename V::reg load(const char* p) { return V::load_f16(p); } static constexpr int kBytes = 2; };
struct LoadFP8 { template <class V> static typename V::reg load(const char* p) { return V::load_fp8(p); } static constexpr int kBytes = 1; };

// Scores of rows [0, R) (fp32 Q rows, stride dp) against keys krows[0, 8 / R): out[r * 8/R + k].
template <class V, class L, int R>
inline void qk_direct_tile(const float* q, int64_t dp, const char* const* krows, int64_t koff, int64_t D,
                           float* out) {
  constexpr int NK = 8 / R;
  typename V::reg acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = V::zero();
  for (int64_t d = 0; d < D; d += V::W) {
    typename V::reg kv[NK];
    for (int k = 0; k < NK; ++k) kv[k] = L::template load<V>(krows[k] + koff + d * L::kBytes);
    for (int r = 0; r < R; ++r) {
      const typename V::reg qv = V::load(q + r * dp + d);
      for (int k = 0; k < NK; ++k) acc[r * NK + k] = V::fmadd(qv, kv[k], acc[r * NK + k]);
    }
  }
  V::store(out, V::reduce8(acc));
}

// S rows [r0, r0 + R) x keys [0, n) of the block (the last tile repeats a valid key row and
// drops its extra scores, so nothing past the block is read).
template <class V, class L, int R>
inline void qk_direct_rows(const float* q, int64_t dp, const char* const* krows, int64_t koff, int n, int64_t D,
                           float* S, int bn) {
  constexpr int NK = 8 / R;
  float out[8];
  const char* ks[NK];
  for (int c0 = 0; c0 < n; c0 += NK) {
    for (int k = 0; k < NK; ++k) ks[k] = krows[c0 + k < n ? c0 + k : n - 1];
    qk_direct_tile<V, L, R>(q, dp, ks, koff, D, out);
    for (int r = 0; r < R; ++r)
      for (int k = 0; k < NK && c0 + k < n; ++k) S[r * bn + c0 + k] = out[r * NK + k];
  }
}

// O rows [0, R), dims [d0, d0 + CC * W): O = alpha O + sum_j P[r][j] V[j] over the block.
template <class V, class L, int R, int CC>
inline void pv_direct_tile(const float* S, int bn, const char* const* vrows, int64_t voff, int n, float* O,
                           int64_t dp, const float* alpha, int64_t d0) {
  typename V::reg acc[R][CC];
  for (int r = 0; r < R; ++r) {
    const typename V::reg a = V::set1(alpha[r]);
    for (int c = 0; c < CC; ++c) acc[r][c] = V::mul(V::load(O + r * dp + d0 + c * V::W), a);
  }
  for (int j = 0; j < n; ++j) {
    typename V::reg vv[CC];
    for (int c = 0; c < CC; ++c) vv[c] = L::template load<V>(vrows[j] + voff + (d0 + c * V::W) * L::kBytes);
    for (int r = 0; r < R; ++r) {
      const typename V::reg pb = V::set1(S[r * bn + j]);
      for (int c = 0; c < CC; ++c) acc[r][c] = V::fmadd(pb, vv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < CC; ++c) V::store(O + r * dp + d0 + c * V::W, acc[r][c]);
}

// 16 accumulator-and-operand registers: R rows x CC vectors of O.
template <class V, class L, int R>
inline void pv_direct_rows(const float* S, int bn, const char* const* vrows, int64_t voff, int n, float* O,
                           int64_t dp, const float* alpha, int64_t D) {
  constexpr int CC = 8 / R;
  int64_t d0 = 0;
  for (; d0 + CC * V::W <= D; d0 += CC * V::W) pv_direct_tile<V, L, R, CC>(S, bn, vrows, voff, n, O, dp, alpha, d0);
  for (; d0 < D; d0 += V::W) pv_direct_tile<V, L, R, 1>(S, bn, vrows, voff, n, O, dp, alpha, d0);
}

// All rows [0, nr) in tiles of 4, then 2, then 1 rows.
template <class V, class L>
inline void qk_direct(const float* Q, int64_t dp, const char* const* krows, int64_t koff, int n, int64_t D,
                      float* S, int bn, int nr) {
  int r0 = 0;
  for (; r0 + 4 <= nr; r0 += 4) qk_direct_rows<V, L, 4>(Q + r0 * dp, dp, krows, koff, n, D, S + r0 * bn, bn);
  for (; r0 + 2 <= nr; r0 += 2) qk_direct_rows<V, L, 2>(Q + r0 * dp, dp, krows, koff, n, D, S + r0 * bn, bn);
  for (; r0 < nr; ++r0) qk_direct_rows<V, L, 1>(Q + r0 * dp, dp, krows, koff, n, D, S + r0 * bn, bn);
}

template <class V, class L>
inline void pv_direct(const float* S, int bn, const char* const* vrows, int64_t voff, int n, float* O, int64_t dp,
                      const float* alpha, int64_t D, int nr) {
  int r0 = 0;
  for (; r0 + 4 <= nr; r0 += 4)
    pv_direct_rows<V, L, 4>(S + r0 * bn, bn, vrows, voff, n, O + r0 * dp, dp, alpha + r0, D);
  for (; r0 + 2 <= nr; r0 += 2)
    pv_direct_rows<V, L, 2>(S + r0 * bn, bn, vrows, voff, n, O + r0 * dp, dp, alpha + r0, D);
  for (; r0 < nr; ++r0) pv_direct_rows<V, L, 1>(S + r0 * bn, bn, vrows, voff, n, O + r0 * dp, dp, alpha + r0, D);
}

// Rows of rs.heads KV heads at once (decode plans all KV heads of a sequence into one item,
// so each paged block is read front to back, not one head's slice at a time).
template <class V, class Ops, class L, class Src>
void attend_direct(const RowSet& rs, const Src& src, int64_t D, int64_t kbeg, int64_t kend, float softcap,
                   bool alibi, bool v_nonfinite, int es, Workspace& w) {
  constexpr int BN = Ops::BN;
  const char* rows_a[2][BN];  // K and V rows of this block, then of the next
  const char* rows_b[2][BN];
  const char* (*cur)[BN] = rows_a;
  const char* (*nxt)[BN] = rows_b;
  const float* Q = static_cast<const float*>(w.q);
  const int nr = rs.n, g = rs.n / rs.heads;
  if (kbeg < kend) src.rows(kbeg, static_cast<int>(imin(BN, kend - kbeg)), cur[0], cur[1]);
  for (int64_t j0 = kbeg; j0 < kend; j0 += BN) {
    const int n = static_cast<int>(imin(BN, kend - j0));
    if (j0 + BN < kend) {  // the next block's rows, prefetched: they arrive while this one computes
      const int nn = static_cast<int>(imin(BN, kend - j0 - BN));
      src.rows(j0 + BN, nn, nxt[0], nxt[1]);
      for (int c = 0; c < nn; ++c)
        for (int h = 0; h < rs.heads; ++h)
          for (int64_t off = 0; off < D * es; off += 64) {
            __builtin_prefetch(nxt[0][c] + h * rs.k_hs + off);
            __builtin_prefetch(nxt[1][c] + h * rs.v_hs + off);
          }
    }
    const char* const* krows = cur[0];
    const char* const* vrows = cur[1];
    for (int h = 0; h < rs.heads; ++h)
      qk_direct<V, L>(Q + h * g * w.dp, w.dp, krows, h * rs.k_hs, n, D, w.s + h * g * BN, BN, g);
    for (int r = 0; r < nr; ++r) softmax_row<V, Ops>(rs, r, j0, n, softcap, alibi, w);
    // (several heads only where every row sees the same keys: no block is partly masked)
    if (v_nonfinite && rs.heads == 1 && block_partly_masked(rs, j0, n) && v_rows_nonfinite(src, j0, n, D))
      pv_visible_only(rs, src, j0, n, BN, D, nr, w);
    else
      for (int h = 0; h < rs.heads; ++h)
        pv_direct<V, L>(w.s + h * g * BN, BN, vrows, h * rs.v_hs, n, w.o + h * g * w.dp, w.dp, w.alpha + h * g, D, g);
    const char* (*t)[BN] = cur;
    cur = nxt;
    nxt = t;
  }
}

// Attention of the rows of `rs` over keys [kbeg, kend) of `src` (each row further limited
// to its own [lo, hi)). Leaves un-normalised O, m, l for rows [0, rs.n) in the workspace.
template <class V, class Ops, class Src>
void attend(const RowSet& rs, const Src& src, int64_t D, float qk_scale, float softcap, bool alibi,
            bool v_nonfinite, Workspace& w) {
  const int nr = static_cast<int>(round_up(rs.n, kR));
  for (int r = 0; r < nr; ++r) {
    Ops::load_q(w.q, r, r < rs.n ? rs.q[r] : nullptr, rs.q_ds, rs.q_kind, D, w.dp, qk_scale);
    w.m[r] = kNegInf;
    w.l[r] = 0.f;
    float* o = w.o + r * w.dp;
    for (int64_t d = 0; d < w.dp; ++d) o[d] = 0.f;
  }
  int64_t kbeg = INT64_MAX, kend = 0;
  for (int r = 0; r < rs.n; ++r) {
    if (rs.lo[r] >= rs.hi[r]) continue;
    kbeg = imin(kbeg, rs.lo[r]);
    kend = imax(kend, rs.hi[r]);
  }
  const int es = elem_bytes(src.kind);
  const bool contiguous = src.k_ds == es && src.v_ds == es;
  if constexpr (has_direct<V>(0)) {
    if (contiguous && rs.n / rs.heads <= kDirectMaxRows && D % V::W == 0) {
      switch (src.kind) {
        case kF32: return attend_direct<V, Ops, LoadF32>(rs, src, D, kbeg, kend, softcap, alibi, v_nonfinite, es, w);
        case kBF16: return attend_direct<V, Ops, LoadBF16>(rs, src, D, kbeg, kend, softcap, alibi, v_nonfinite, es, w);
        case kF16: return attend_direct<V, Ops, LoadF16>(rs, src, D, kbeg, kend, softcap, alibi, v_nonfinite, es, w);
        default: return attend_direct<V, Ops, LoadFP8>(rs, src, D, kbeg, kend, softcap, alibi, v_nonfinite, es, w);
      }
    }
  }
  for (int64_t j0 = kbeg; j0 < kend; j0 += Ops::BN) {
    const int n = static_cast<int>(imin(Ops::BN, kend - j0));
    if (contiguous && j0 + kPrefetchBlocks * Ops::BN < kend)  // arrives while earlier blocks compute
      prefetch_rows(src, j0 + kPrefetchBlocks * Ops::BN,
                    static_cast<int>(imin(Ops::BN, kend - j0 - kPrefetchBlocks * Ops::BN)), D * es);
    Ops::pack(src, j0, n, D, w.dp, w.k, w.v);
    Ops::gemm_qk(w.q, w.k, w.s, nr, D, w.dp, qk_scale);
    for (int r = 0; r < nr; ++r) softmax_row<V, Ops>(rs, r, j0, n, softcap, alibi, w);
    if (v_nonfinite && block_partly_masked(rs, j0, n) && v_rows_nonfinite(src, j0, n, D))
      pv_visible_only(rs, src, j0, n, Ops::BN, D, nr, w);
    else
      Ops::gemm_pv(w.s, w.p, w.v, w.o, w.alpha, nr, n, w.dp);
  }
}

// Normalised output row r (times out_mul) into dst of `kind`, and its lse.
inline void finalize_row(const Workspace& w, int r, int64_t D, float out_mul, char* dst, int64_t ds_elems,
                         int kind, float* lse, float sink = kNegInf) {
  float l = w.l[r], m = w.m[r], inv = 0.f;
  if (sink != kNegInf) {
    // the sink is one more term of the denominator: rescale both to max(m, sink)
    const float mx = l > 0.f && m > sink ? m : sink;
    const float a = l > 0.f ? std::exp(m - mx) : 0.f;
    l = l * a + std::exp(sink - mx);
    inv = out_mul * a / l;
    m = mx;
  } else {
    inv = l > 0.f ? out_mul / l : 0.f;
  }
  const float* o = w.o + r * w.dp;
  for (int64_t d = 0; d < D; ++d) store_from_float(dst, d * ds_elems, o[d] * inv, kind);
  if (lse != nullptr) *lse = l > 0.f ? m + std::log(l) : kNegInf;
}

// ---- generic fp32 Ops: any element kind converted to fp32 while packing ----
// Q rows [kMaxRows][dp] (pre-multiplied by the score scale), K^T [D][BN], V [BN][dp].
template <class V, int BN_>
struct OpsF32 {
  static constexpr int BN = BN_;
  static constexpr int C = BN / V::W;
  static_assert(BN % V::W == 0, "BN must be a multiple of the vector width");
  static int64_t q_bytes(int64_t dp) { return 4 * kMaxRows * dp; }
  static int64_t k_bytes(int64_t dp) { return 4 * dp * BN; }
  static int64_t v_bytes(int64_t dp) { return 4 * dp * BN; }
  static int64_t p_bytes() { return 0; }

  static void load_q(void* qbuf, int r, const char* src, int64_t ds, int kind, int64_t D, int64_t dp,
                     float mul) {
    float* dst = static_cast<float*>(qbuf) + r * dp;
    int64_t d = 0;
    if (src != nullptr)
      for (; d < D; ++d) dst[d] = load_elem(src + d * ds, kind, nullptr) * mul;
    for (; d < dp; ++d) dst[d] = 0.f;
  }

  // One row of D elements of the source's kind (element stride ds bytes) widened to fp32 at
  // dst[d * step]: contiguous 16-bit rows with no per-element kind switch (vectorised for
  // step 1; decode on the AVX2 path once spent most of its time in that switch).
  template <class Src>
  static void widen_row(const Src& src, const char* row, int64_t ds, float* dst, int64_t step, int64_t D) {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(row);
    if (src.kind == kF32 && ds == 4) {
      const float* f = reinterpret_cast<const float*>(row);
      for (int64_t d = 0; d < D; ++d) dst[d * step] = f[d];
    } else if (src.kind == kBF16 && ds == 2) {
      for (int64_t d = 0; d < D; ++d) dst[d * step] = bf16_to_float(h[d]);
    } else if (src.kind == kF16 && ds == 2) {
      for (int64_t d = 0; d < D; ++d) dst[d * step] = fp16_to_float(h[d]);
    } else {
      for (int64_t d = 0; d < D; ++d) dst[d * step] = load_elem(row + d * ds, src.kind, src.fp8_lut);
    }
  }

  // K^T columns [c0, c0 + 8) from 8 key rows of kind L, 8 x 8 blocks widened in registers
  // and transposed (column by column it was one scalar store per element: ~15% of prefill).
  template <class L>
  static void pack_k8(const char* const* kr, float* kt, int64_t D) {
    for (int64_t d = 0; d < D; d += V::W) {
      typename V::reg r[8];
      for (int i = 0; i < 8; ++i) r[i] = L::template load<V>(kr[i] + d * L::kBytes);
      V::transpose8(r);
      for (int j = 0; j < 8; ++j) V::store(kt + (d + j) * BN, r[j]);
    }
  }

  template <class Src>
  static void pack(const Src& src, int64_t j0, int n, int64_t D, int64_t dp, void* kb, void* vb) {
    float* kt = static_cast<float*>(kb);
    float* vv = static_cast<float*>(vb);
    const char* kr[BN];
    const char* vr[BN];
    src.rows(j0, n, kr, vr);
    int c = 0;  // keys whose K column is packed
    if constexpr (has_direct<V>(0)) {  // groups of 8 keys: K transposed in registers
      if (src.k_ds == elem_bytes(src.kind) && D % V::W == 0) {
        for (; c + 8 <= n && src.kind == kF32; c += 8) pack_k8<LoadF32>(kr + c, kt + c, D);
        for (; c + 8 <= n && src.kind == kBF16; c += 8) pack_k8<LoadBF16>(kr + c, kt + c, D);
        for (; c + 8 <= n && src.kind == kF16; c += 8) pack_k8<LoadF16>(kr + c, kt + c, D);
      }
    }
    for (; c < n; ++c) widen_row(src, kr[c], src.k_ds, kt + c, BN, D);
    for (int j = 0; j < n; ++j) {
      widen_row(src, vr[j], src.v_ds, vv + j * dp, 1, D);
      for (int64_t d = D; d < dp; ++d) vv[j * dp + d] = 0.f;
    }
    for (int j = n; j < BN; ++j) {
      for (int64_t d = 0; d < D; ++d) kt[d * BN + j] = 0.f;
      for (int64_t d = 0; d < dp; ++d) vv[j * dp + d] = 0.f;
    }
  }

  static void gemm_qk(const void* qbuf, const void* kb, float* S, int nr, int64_t D, int64_t dp, float) {
    const float* Q = static_cast<const float*>(qbuf);
    const float* K = static_cast<const float*>(kb);
    for (int r0 = 0; r0 < nr; r0 += kR) {
      typename V::reg acc[kR][C];
      for (int r = 0; r < kR; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = V::zero();
      const float* q0 = Q + r0 * dp;
      for (int64_t d = 0; d < D; ++d) {
        typename V::reg kv[C];
        for (int c = 0; c < C; ++c) kv[c] = V::load(K + d * BN + c * V::W);
        for (int r = 0; r < kR; ++r) {
          const typename V::reg qb = V::set1(q0[r * dp + d]);
          for (int c = 0; c < C; ++c) acc[r][c] = V::fmadd(qb, kv[c], acc[r][c]);
        }
      }
      for (int r = 0; r < kR; ++r)
        for (int c = 0; c < C; ++c) V::store(S + (r0 + r) * BN + c * V::W, acc[r][c]);
    }
  }

  static void write_p(float*, void*, int) {}

  template <int CC>
  static void pv_tile(const float* P, const float* Vv, float* O, const float* alpha, int r0, int n,
                      int64_t dp, int64_t d0) {
    typename V::reg acc[kR][CC];
    for (int r = 0; r < kR; ++r) {
      const typename V::reg a = V::set1(alpha[r0 + r]);
      for (int c = 0; c < CC; ++c) acc[r][c] = V::mul(V::load(O + (r0 + r) * dp + d0 + c * V::W), a);
    }
    for (int j = 0; j < n; ++j) {
      typename V::reg vv[CC];
      for (int c = 0; c < CC; ++c) vv[c] = V::load(Vv + j * dp + d0 + c * V::W);
      for (int r = 0; r < kR; ++r) {
        const typename V::reg pb = V::set1(P[(r0 + r) * BN + j]);
        for (int c = 0; c < CC; ++c) acc[r][c] = V::fmadd(pb, vv[c], acc[r][c]);
      }
    }
    for (int r = 0; r < kR; ++r)
      for (int c = 0; c < CC; ++c) V::store(O + (r0 + r) * dp + d0 + c * V::W, acc[r][c]);
  }

  static void gemm_pv(const float* S, const void*, const void* vb, float* O, const float* alpha, int nr,
                      int n, int64_t dp) {
    const float* Vv = static_cast<const float*>(vb);
    for (int r0 = 0; r0 < nr; r0 += kR) {
      int64_t d0 = 0;
      for (; d0 + C * V::W <= dp; d0 += C * V::W) pv_tile<C>(S, Vv, O, alpha, r0, n, dp, d0);
      for (; d0 < dp; d0 += V::W) pv_tile<1>(S, Vv, O, alpha, r0, n, dp, d0);
    }
  }
};

// ---- drivers over work items (planned by the ISA-neutral code) ----

template <class V, class Ops>
void run_dense_items(const AttnParams& p, const DenseItem* items, int64_t n_items) {
  const int64_t D = p.head_dim;
  const int64_t group = p.heads_q / p.heads_kv;
  const int es = elem_bytes(p.kind);
  const bool alibi = p.alibi != nullptr;
  // one pass over V per (sequence, KV head): does it hold NaN / inf (see attend)? Not for a
  // sequence with one query (decode over a dense cache): its rows share one visible range,
  // so no key block is partly masked.
  // (malloc, not std::vector: a template instantiated here would be compiled for this TU's
  // ISA and could be the copy the linker keeps for every TU)
  uint8_t* v_bad = static_cast<uint8_t*>(std::calloc(static_cast<size_t>(p.batch * p.heads_kv) + 1, 1));
#pragma omp parallel for schedule(dynamic, 1) if (v_bad != nullptr)
  for (int64_t bh = 0; bh < (v_bad != nullptr ? p.batch * p.heads_kv : 0); ++bh) {
    const int64_t b = bh / p.heads_kv, hk = bh % p.heads_kv;
    if ((p.cu_q ? p.cu_q[b + 1] - p.cu_q[b] : p.seqlen_q) <= 1) continue;
    const int64_t kt0 = p.cu_k ? p.cu_k[b] : 0, sk = p.cu_k ? p.cu_k[b + 1] - kt0 : p.seqlen_k;
    DenseSrc src;
    src.v = static_cast<const char*>(p.v) + (b * p.v_s[0] + kt0 * p.v_s[1] + hk * p.v_s[2]) * es;
    src.v_ts = p.v_s[1] * es; src.v_ds = p.v_s[3] * es; src.kind = p.kind;
    v_bad[bh] = v_rows_nonfinite(src, 0, sk, D);
  }
#pragma omp parallel
  {
    Workspace w = alloc_workspace<Ops>(D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < n_items; ++it) {
      const DenseItem& item = items[it];
      const int64_t b = item.b;
      const int64_t qt0 = p.cu_q ? p.cu_q[b] : 0, kt0 = p.cu_k ? p.cu_k[b] : 0;
      const int64_t sq = p.cu_q ? p.cu_q[b + 1] - qt0 : p.seqlen_q;
      const int64_t sk = p.cu_k ? p.cu_k[b + 1] - kt0 : p.seqlen_k;
      RowSet rs;
      rs.q_ds = p.q_s[3] * es;
      rs.q_kind = p.kind;
      for (int64_t t = 0; t < item.nt; ++t)
        for (int64_t g = 0; g < item.ng; ++g) {
          const int r = rs.n++;
          const int64_t tok = qt0 + item.t0 + t, h = item.hk * group + item.g0 + g;
          rs.q[r] = static_cast<const char*>(p.q) + (b * p.q_s[0] + tok * p.q_s[1] + h * p.q_s[2]) * es;
          rs.pos[r] = item.t0 + t + sk - sq;
          rs.slope[r] = alibi ? p.alibi[b * p.alibi_bs + h * p.alibi_hs] : 0.f;
          visible_range(rs.pos[r], sk, p.causal, p.window_left, p.window_right, &rs.lo[r], &rs.hi[r]);
        }
      DenseSrc src;
      src.k = static_cast<const char*>(p.k) + (b * p.k_s[0] + kt0 * p.k_s[1] + item.hk * p.k_s[2]) * es;
      src.v = static_cast<const char*>(p.v) + (b * p.v_s[0] + kt0 * p.v_s[1] + item.hk * p.v_s[2]) * es;
      src.k_ts = p.k_s[1] * es; src.v_ts = p.v_s[1] * es;
      src.k_ds = p.k_s[3] * es; src.v_ds = p.v_s[3] * es;
      src.kind = p.kind;
      src.fp8_lut = nullptr;
      attend<V, Ops>(rs, src, D, p.scale, p.softcap, alibi,
                     v_bad == nullptr || v_bad[b * p.heads_kv + item.hk] != 0, w);
      int r = 0;
      for (int64_t t = 0; t < item.nt; ++t)
        for (int64_t g = 0; g < item.ng; ++g, ++r) {
          const int64_t tok = qt0 + item.t0 + t, h = item.hk * group + item.g0 + g;
          char* dst = static_cast<char*>(p.out) + (b * p.o_s[0] + tok * p.o_s[1] + h * p.o_s[2]) * es;
          float* lse = p.lse + b * p.lse_s[0] + h * p.lse_s[1] + tok * p.lse_s[2];
          finalize_row(w, r, D, 1.f, dst, p.o_s[3], p.kind, lse, p.sinks != nullptr ? p.sinks[h] : kNegInf);
        }
    }
    std::free(w.base);
  }
  std::free(v_bad);
}

// Paged items: with one split the result goes straight to out/lse; with several, each split
// writes its normalised partial output and lse to part_o [split][token][head][D] (tokens in
// PagedParams::row_base order) and part_lse (same order, no D), merged afterwards.
template <class V, class Ops>
void run_paged_items(const PagedParams& p, const PagedItem* items, int64_t n_items, int64_t n_splits,
                     float* part_o, float* part_lse, const float* fp8_lut) {
  const int64_t D = p.head_dim;
  const int64_t group = p.heads_q / p.heads_kv;
  const int qs = elem_bytes(p.q_kind), cs = elem_bytes(p.cache_kind);
  const bool alibi = p.alibi != nullptr;
  // fp8 values are dequantised exactly; their scales (per tensor, times per KV head when
  // given) are applied to scores and output.
  const bool fp8 = p.cache_kind == kFP8E4M3;
  auto head_scale = [&](int row, int64_t hk) {
    return p.kv_scales != nullptr ? p.kv_scales[row * p.kvs_s[0] + hk * p.kvs_s[1]] : 1.f;
  };
  // one pass over each sequence's V per KV head: does it hold NaN / inf (see attend)? Not for
  // a sequence with one query: all rows of its items share one visible range, so no key
  // block is partly masked (decode would read V twice for nothing).
  uint8_t* v_bad = static_cast<uint8_t*>(std::calloc(static_cast<size_t>(p.num_seqs * p.heads_kv) + 1, 1));
#pragma omp parallel for schedule(dynamic, 1) if (v_bad != nullptr)
  for (int64_t sh = 0; sh < (v_bad != nullptr ? p.num_seqs * p.heads_kv : 0); ++sh) {
    const int64_t s = sh / p.heads_kv, hk = sh % p.heads_kv;
    if (p.q_count(s) <= 1) continue;
    PagedSrc src;
    src.v = static_cast<const char*>(p.v_cache) + hk * p.vc_s[2] * cs;
    src.bt = p.block_table + s * p.bt_s[0];
    src.bt_s = p.bt_s[1];
    src.block_size = p.block_size;
    src.vb_s = p.vc_s[0] * cs; src.vo_s = p.vc_s[1] * cs; src.v_ds = p.vc_s[3] * cs;
    src.kind = p.cache_kind;
    v_bad[sh] = v_rows_nonfinite(src, 0, p.seq_lens[s], D);
  }
#pragma omp parallel
  {
    Workspace w = alloc_workspace<Ops>(D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < n_items; ++it) {
      const PagedItem& item = items[it];
      const int64_t s = item.seq;
      const float qk_scale = p.scale * (fp8 ? p.k_scale * head_scale(0, item.hk) : 1.f);
      const float out_mul = fp8 ? p.v_scale * head_scale(1, item.hk) : 1.f;
      const int64_t sk = p.seq_lens[s], sq = p.q_count(s), qt0 = p.q_begin(s);
      RowSet rs;
      rs.q_ds = p.q_s[3] * qs;
      rs.q_kind = p.q_kind;
      int64_t kbeg = INT64_MAX, kend = 0;
      rs.heads = static_cast<int>(item.nh);
      rs.k_hs = p.kc_s[2] * cs;
      rs.v_hs = p.vc_s[2] * cs;
      for (int64_t hh = 0; hh < item.nh; ++hh)
        for (int64_t t = 0; t < item.nt; ++t)
          for (int64_t g = 0; g < item.ng; ++g) {
            const int r = rs.n++;
            const int64_t tok = item.t0 + t, h = (item.hk + hh) * group + item.g0 + g;
            rs.q[r] = static_cast<const char*>(p.q) + (s * p.q_s[0] + (qt0 + tok) * p.q_s[1] + h * p.q_s[2]) * qs;
            rs.pos[r] = tok + sk - sq;  // negative for a padded slot (seq_len 0): nothing visible
            rs.slope[r] = alibi ? p.alibi[s * p.alibi_bs + h * p.alibi_hs] : 0.f;
            visible_range(rs.pos[r], sk, true, p.window_left, p.window_right, &rs.lo[r], &rs.hi[r]);
            if (rs.lo[r] < rs.hi[r]) { kbeg = imin(kbeg, rs.lo[r]); kend = imax(kend, rs.hi[r]); }
          }
      if (n_splits > 1) {  // this split's share of the item's key range, in whole blocks
        const int64_t len = kend > kbeg ? kend - kbeg : 0;
        const int64_t chunk = round_up((len + n_splits - 1) / n_splits, Ops::BN);
        const int64_t a = kbeg + item.split * chunk, b = imin(kend, a + chunk);
        for (int r = 0; r < rs.n; ++r) {
          rs.lo[r] = imax(rs.lo[r], a);
          rs.hi[r] = imin(rs.hi[r], b);
          if (rs.hi[r] < rs.lo[r]) rs.hi[r] = rs.lo[r];
        }
      }
      PagedSrc src;
      src.k = static_cast<const char*>(p.k_cache) + item.hk * p.kc_s[2] * cs;
      src.v = static_cast<const char*>(p.v_cache) + item.hk * p.vc_s[2] * cs;
      src.bt = p.block_table + s * p.bt_s[0];
      src.bt_s = p.bt_s[1];
      src.block_size = p.block_size;
      src.kb_s = p.kc_s[0] * cs; src.ko_s = p.kc_s[1] * cs; src.k_ds = p.kc_s[3] * cs;
      src.vb_s = p.vc_s[0] * cs; src.vo_s = p.vc_s[1] * cs; src.v_ds = p.vc_s[3] * cs;
      src.kind = p.cache_kind;
      src.fp8_lut = fp8_lut;
      attend<V, Ops>(rs, src, D, qk_scale, p.softcap, alibi,
                     v_bad == nullptr || v_bad[s * p.heads_kv + item.hk] != 0, w);
      int r = 0;
      for (int64_t hh = 0; hh < item.nh; ++hh)
        for (int64_t t = 0; t < item.nt; ++t)
          for (int64_t g = 0; g < item.ng; ++g, ++r) {
            const int64_t tok = item.t0 + t, h = (item.hk + hh) * group + item.g0 + g;
            if (n_splits == 1) {
              char* dst = static_cast<char*>(p.out) + (s * p.o_s[0] + (qt0 + tok) * p.o_s[1] + h * p.o_s[2]) * qs;
              finalize_row(w, r, D, out_mul, dst, p.o_s[3], p.q_kind,
                           p.lse + s * p.lse_s[0] + h * p.lse_s[1] + (qt0 + tok) * p.lse_s[2],
                           p.sinks != nullptr ? p.sinks[h] : kNegInf);
            } else {
              // partials exclude the sink; the merge adds it once
              const int64_t idx = (item.split * p.total_tokens() + p.row_base(s) + tok) * p.heads_q + h;
              finalize_row(w, r, D, out_mul, reinterpret_cast<char*>(part_o + idx * D), 1, kF32, part_lse + idx);
            }
          }
    }
    std::free(w.base);
  }
  std::free(v_bad);
}

}  // namespace
}  // namespace pk::cpu::attn
