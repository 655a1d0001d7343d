// CPU launchers for attention forward (dense and varlen): validate, allocate (or fill the
// caller's `out` / `lse`, which tests poison with NaN), call the torch-free kernel.
#include <cmath>
#include <limits>

#include "cpu/attention.h"
#include "checks.h"

namespace {

using pk::cpu::attn::AttnParams;

void fill_alibi(AttnParams& a, const c10::optional<at::Tensor>& alibi, int64_t batch, int64_t hq) {
  a.alibi = nullptr;
  a.alibi_bs = a.alibi_hs = 0;
  if (!alibi.has_value()) return;
  const at::Tensor& s = *alibi;
  PK_CHECK_ARG(s.scalar_type() == at::kFloat, "alibi_slopes", "expected float32, got ", s.scalar_type());
  PK_CHECK_ARG((s.dim() == 1 && s.size(0) == hq) || (s.dim() == 2 && s.size(0) == batch && s.size(1) == hq),
               "alibi_slopes", "expected [", hq, "] or [", batch, ", ", hq, "], got ", s.sizes());
  a.alibi = s.data_ptr<float>();
  a.alibi_hs = s.stride(-1);
  a.alibi_bs = s.dim() == 2 ? s.stride(0) : 0;
}

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int dims) {
  pk::float_kind(q, "q");
  PK_CHECK_ARG(q.dim() == dims, "q", "expected ", dims, " dims, got ", q.sizes());
  PK_CHECK_ARG(k.dim() == dims, "k", "expected ", dims, " dims, got ", k.sizes());
  PK_CHECK_ARG(v.sizes() == k.sizes(), "v", "expected the shape of k ", k.sizes(), ", got ", v.sizes());
  PK_CHECK_ARG(k.scalar_type() == q.scalar_type(), "k", "expected dtype ", q.scalar_type());
  PK_CHECK_ARG(v.scalar_type() == q.scalar_type(), "v", "expected dtype ", q.scalar_type());
  PK_CHECK_ARG(k.size(-1) == q.size(-1), "k", "expected head_dim ", q.size(-1));
  PK_CHECK_ARG(q.size(-1) > 0, "q", "head_dim must be positive");
  PK_CHECK_ARG(k.size(-2) > 0 && q.size(-2) % k.size(-2) == 0, "k",
               "heads_q (", q.size(-2), ") must be a multiple of heads_kv (", k.size(-2), ")");
  for (const at::Tensor* t : {&q, &k, &v}) PK_CHECK_ARG(t->device().is_cpu(), "q/k/v", "expected CPU tensors");
}

at::Tensor take_out(const c10::optional<at::Tensor>& given, at::IntArrayRef sizes, const at::TensorOptions& opts,
                    const char* name) {
  if (!given.has_value()) return at::empty(sizes, opts);
  PK_CHECK_ARG(given->sizes() == sizes, name, "expected shape ", sizes, ", got ", given->sizes());
  PK_CHECK_ARG(given->scalar_type() == opts.dtype().toScalarType(), name, "expected dtype ",
               opts.dtype().toScalarType());
  return *given;
}

void common(AttnParams& a, bool causal, double scale, int64_t wl, int64_t wr, double softcap) {
  a.scale = static_cast<float>(scale);
  a.softcap = static_cast<float>(softcap);
  a.causal = causal;
  a.window_left = wl;
  a.window_right = wr;
}

std::tuple<at::Tensor, at::Tensor> cpu_attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     bool causal, double softmax_scale, int64_t window_left,
                                                     int64_t window_right, double softcap,
                                                     const c10::optional<at::Tensor>& alibi_slopes,
                                                     const c10::optional<at::Tensor>& out_,
                                                     const c10::optional<at::Tensor>& lse_,
                                                     const c10::optional<at::Tensor>& sinks) {
  check_qkv(q, k, v, 4);
  PK_CHECK_ARG(k.size(0) == q.size(0), "k", "expected batch ", q.size(0));
  const int64_t B = q.size(0), Sq = q.size(1), Hq = q.size(2), D = q.size(3);
  at::Tensor out = take_out(out_, q.sizes(), q.options(), "out");
  at::Tensor lse = take_out(lse_, {B, Hq, Sq}, q.options().dtype(at::kFloat), "lse");
  if (out.numel() == 0) return {out, lse};
  AttnParams a{};
  a.q = q.data_ptr(); a.k = k.data_ptr(); a.v = v.data_ptr(); a.out = out.data_ptr();
  a.lse = lse.data_ptr<float>();
  a.kind = pk::float_kind(q, "q");
  a.batch = B; a.heads_q = Hq; a.heads_kv = k.size(2); a.head_dim = D;
  a.seqlen_q = Sq; a.seqlen_k = k.size(1);
  a.cu_q = a.cu_k = nullptr;
  for (int i = 0; i < 4; ++i) {
    a.q_s[i] = q.stride(i); a.k_s[i] = k.stride(i); a.v_s[i] = v.stride(i); a.o_s[i] = out.stride(i);
  }
  for (int i = 0; i < 3; ++i) a.lse_s[i] = lse.stride(i);
  common(a, causal, softmax_scale, window_left, window_right, softcap);
  fill_alibi(a, alibi_slopes, B, Hq);
  a.sinks = pk::sinks_ptr(sinks, Hq);
  pk::cpu::attn::attention_fwd(a);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> cpu_varlen_attention_fwd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal, double softmax_scale,
    int64_t window_left, int64_t window_right, double softcap, const c10::optional<at::Tensor>& alibi_slopes,
    const c10::optional<at::Tensor>& out_, const c10::optional<at::Tensor>& lse_,
    const c10::optional<at::Tensor>& sinks) {
  check_qkv(q, k, v, 3);
  for (const auto& [t, name] : {std::pair{&cu_seqlens_q, "cu_seqlens_q"}, std::pair{&cu_seqlens_k, "cu_seqlens_k"}}) {
    PK_CHECK_ARG(t->scalar_type() == at::kInt && t->dim() == 1 && t->is_contiguous() && t->size(0) >= 1, name,
                 "expected a contiguous int32 vector [batch + 1]");
  }
  PK_CHECK_ARG(cu_seqlens_k.size(0) == cu_seqlens_q.size(0), "cu_seqlens_k", "expected ", cu_seqlens_q.size(0),
               " entries");
  const int64_t B = cu_seqlens_q.size(0) - 1, T = q.size(0), Hq = q.size(1);
  const int32_t* cq = cu_seqlens_q.data_ptr<int32_t>();
  const int32_t* ck = cu_seqlens_k.data_ptr<int32_t>();
  // The kernel trusts these offsets for addressing: check them (cheap, on the host).
  for (int64_t b = 0; b < B; ++b) {
    PK_CHECK_ARG(0 <= cq[b] && cq[b] <= cq[b + 1] && cq[b + 1] <= T, "cu_seqlens_q",
                 "must be non-decreasing within [0, ", T, "]");
    PK_CHECK_ARG(0 <= ck[b] && ck[b] <= ck[b + 1] && ck[b + 1] <= k.size(0), "cu_seqlens_k",
                 "must be non-decreasing within [0, ", k.size(0), "]");
  }
  at::Tensor out = take_out(out_, q.sizes(), q.options(), "out");
  at::Tensor lse = take_out(lse_, {Hq, T}, q.options().dtype(at::kFloat), "lse");
  if (out.numel() == 0) return {out, lse};
  // Tokens outside every sequence (cu_seqlens_q[-1] < total_q) are not attention rows: 0 / -inf.
  if (cq[B] < T || cq[0] > 0) {
    out.zero_();
    lse.fill_(-std::numeric_limits<float>::infinity());
  }
  AttnParams a{};
  a.q = q.data_ptr(); a.k = k.data_ptr(); a.v = v.data_ptr(); a.out = out.data_ptr();
  a.lse = lse.data_ptr<float>();
  a.kind = pk::float_kind(q, "q");
  a.batch = B; a.heads_q = Hq; a.heads_kv = k.size(1); a.head_dim = q.size(2);
  a.seqlen_q = max_seqlen_q; a.seqlen_k = max_seqlen_k;
  a.cu_q = cq; a.cu_k = ck;
  a.q_s[0] = a.k_s[0] = a.v_s[0] = a.o_s[0] = 0;
  for (int i = 0; i < 3; ++i) {
    a.q_s[i + 1] = q.stride(i); a.k_s[i + 1] = k.stride(i); a.v_s[i + 1] = v.stride(i);
    a.o_s[i + 1] = out.stride(i);
  }
  a.lse_s[0] = 0; a.lse_s[1] = lse.stride(0); a.lse_s[2] = lse.stride(1);
  common(a, causal, softmax_scale, window_left, window_right, softcap);
  fill_alibi(a, alibi_slopes, B, Hq);
  a.sinks = pk::sinks_ptr(sinks, Hq);
  pk::cpu::attn::attention_fwd(a);
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(polykernels_C, CPU, m) {
  m.impl("cpu_attention_fwd", &cpu_attention_fwd);
  m.impl("cpu_varlen_attention_fwd", &cpu_varlen_attention_fwd);
}
