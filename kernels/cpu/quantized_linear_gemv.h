// (Deliberately no include guard: this body is included once per ISA; named .h so the
// package data and the JIT source hash pick it up.)
// GEMV body of the weight-only quantized linear, included once per ISA inside a
// `#pragma GCC target` region and a namespace that defines the vector type V:
//   V::T, V::W (fp32 lanes), zero(), set1(f), load(const float*), fma(a, b, c), add(a, b),
//   hsum(T), u8(const uint8_t* p) -> W codes from W bytes, u4(p, lo, hi) -> the
//   2W codes of W bytes (low nibbles = even k, high = odd k); RB (<= 4) rows per pass.
// Context struct `Gemv` (in quantized_linear.cpp): prepared fp32 activations and the weights.
//
// Each code is dequantised in registers as w = u * s + (-z * s) (one FMA) and accumulated
// straight into per-row accumulators that live across groups: no per-group reduction.
// (Measured on int4 g128: a per-group reduce + rescale cost ~40% of the loop, since a
// group is only 64 bytes.)

// Dot products of output column n with rows r0 .. r0+RB-1 of x.
template <int RB>
void gemv_rows(const Gemv& c, int64_t n, int64_t r0, float* res) {
  using T = typename V::T;
  constexpr int W = V::W;
  const uint8_t* q = c.q + n * c.sq_n;
  // Four independent accumulators per row so the FMA latency is hidden at RB = 1.
  T acc[RB][4];
  float sacc[RB];
  for (int r = 0; r < RB; ++r) { acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = V::zero(); sacc[r] = 0.f; }
  const int64_t gs = c.group_size, groups = c.K / gs;
  for (int64_t g = 0; g < groups; ++g) {
    const float s = c.scale(n, g), z = c.zero(n, g), zs = -z * s;
    const T vs = V::set1(s), vzs = V::set1(zs);
    if (c.bits == 8) {
      int64_t k = g * gs;
      const int64_t k1 = k + gs;
      for (; k + 2 * W <= k1; k += 2 * W) {
        const T w0 = V::fma(V::u8(q + k), vs, vzs), w1 = V::fma(V::u8(q + k + W), vs, vzs);
        for (int r = 0; r < RB; ++r) {
          const float* xr = c.x + (r0 + r) * c.ldx;
          acc[r][0] = V::fma(w0, V::load(xr + k), acc[r][0]);
          acc[r][1] = V::fma(w1, V::load(xr + k + W), acc[r][1]);
        }
      }
      if (k + W <= k1) {
        const T w0 = V::fma(V::u8(q + k), vs, vzs);
        for (int r = 0; r < RB; ++r) acc[r][2] = V::fma(w0, V::load(c.x + (r0 + r) * c.ldx + k), acc[r][2]);
        k += W;
      }
      for (; k < k1; ++k) {
        const float w = (static_cast<float>(q[k]) - z) * s;
        for (int r = 0; r < RB; ++r) sacc[r] += w * c.x[(r0 + r) * c.ldx + k];
      }
    } else {
      // int4: x is stored as [even k | odd k] halves of length K/2 (see run_gemv), so the
      // low nibbles of W bytes meet W contiguous even-k activations.
      int64_t h = g * gs / 2;
      const int64_t h1 = h + gs / 2, half = c.K / 2;
      for (; h + 2 * W <= h1; h += 2 * W) {
        T lo0, hi0, lo1, hi1;
        V::u4(q + h, lo0, hi0);
        V::u4(q + h + W, lo1, hi1);
        lo0 = V::fma(lo0, vs, vzs); hi0 = V::fma(hi0, vs, vzs);
        lo1 = V::fma(lo1, vs, vzs); hi1 = V::fma(hi1, vs, vzs);
        for (int r = 0; r < RB; ++r) {
          const float* xe = c.x + (r0 + r) * c.ldx + h;
          const float* xo = xe + half;
          acc[r][0] = V::fma(lo0, V::load(xe), acc[r][0]);
          acc[r][1] = V::fma(hi0, V::load(xo), acc[r][1]);
          acc[r][2] = V::fma(lo1, V::load(xe + W), acc[r][2]);
          acc[r][3] = V::fma(hi1, V::load(xo + W), acc[r][3]);
        }
      }
      if (h + W <= h1) {
        T lo0, hi0;
        V::u4(q + h, lo0, hi0);
        lo0 = V::fma(lo0, vs, vzs); hi0 = V::fma(hi0, vs, vzs);
        for (int r = 0; r < RB; ++r) {
          const float* xe = c.x + (r0 + r) * c.ldx + h;
          acc[r][0] = V::fma(lo0, V::load(xe), acc[r][0]);
          acc[r][1] = V::fma(hi0, V::load(xe + half), acc[r][1]);
        }
        h += W;
      }
      for (; h < h1; ++h) {
        const float lo = (static_cast<float>(q[h] & 15) - z) * s, hi = (static_cast<float>(q[h] >> 4) - z) * s;
        for (int r = 0; r < RB; ++r) {
          const float* xe = c.x + (r0 + r) * c.ldx;
          sacc[r] += lo * xe[h] + hi * xe[h + half];
        }
      }
    }
  }
  for (int r = 0; r < RB; ++r)
    res[r] = V::hsum(V::add(V::add(acc[r][0], acc[r][1]), V::add(acc[r][2], acc[r][3]))) + sacc[r];
}

// Output columns [n0, n1) for every row.
void gemv_range(const Gemv& c, int64_t n0, int64_t n1) {
  float res[4];
  for (int64_t n = n0; n < n1; ++n) {
    int64_t r = 0;
    for (; r + V::RB <= c.rows; r += V::RB) { gemv_rows<V::RB>(c, n, r, res); c.store(r, n, res, V::RB); }
    switch (c.rows - r) {
      case 3: gemv_rows<3>(c, n, r, res); c.store(r, n, res, 3); break;
      case 2: gemv_rows<2>(c, n, r, res); c.store(r, n, res, 2); break;
      case 1: gemv_rows<1>(c, n, r, res); c.store(r, n, res, 1); break;
      default: break;
    }
  }
}
