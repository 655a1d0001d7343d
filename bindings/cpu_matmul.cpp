// CPU launchers for matmul / linear / quantized_linear: validate, view, allocate, call the
// torch-free kernels (kernels/cpu/gemm.h, quantized_linear.h). Weights are never copied
// (any strides); activations are reshaped to [rows, K] / [batch, M, K], which copies only
// when their leading dims cannot be viewed that way.
#include <ATen/Parallel.h>

#include <optional>
#include <string>

#include "checks.h"
#include "cpu/gemm.h"
#include "cpu/quantized_linear.h"

namespace {

using pk::cpu::gemm::Act;

// Product of all but the last `tail` dims (explicit: reshape(-1, ...) is ambiguous when K = 0).
int64_t lead(const at::Tensor& t, int64_t tail) {
  int64_t p = 1;
  for (int64_t i = 0; i < t.dim() - tail; ++i) p *= t.size(i);
  return p;
}

Act parse_act(const std::optional<c10::string_view>& activation) {
  if (!activation.has_value()) return Act::None;
  const std::string s(activation->data(), activation->size());
  if (s == "relu") return Act::Relu;
  if (s == "gelu") return Act::Gelu;
  if (s == "gelu_tanh") return Act::GeluTanh;
  if (s == "silu") return Act::Silu;
  PK_CHECK_ARG(false, "activation", "expected None, 'relu', 'gelu', 'gelu_tanh' or 'silu', got '", s, "'");
  return Act::None;
}

void set_bias(pk::cpu::gemm::GemmArgs& g, const std::optional<at::Tensor>& bias, int64_t n) {
  if (!bias.has_value()) return;
  PK_CHECK_ARG(bias->dim() == 1 && bias->size(0) == n, "bias", "expected shape [", n, "], got ", bias->sizes());
  g.bias = bias->data_ptr();
  g.bias_kind = pk::float_kind(*bias, "bias");
  g.s_bias = bias->stride(0);
}

// Output rows as a [rows, N] view with unit column stride (its row stride may exceed N).
at::Tensor out_rows(const at::Tensor& out, at::IntArrayRef expected, at::ScalarType dtype) {
  PK_CHECK_ARG(out.sizes() == expected, "out", "expected shape ", expected, ", got ", out.sizes());
  PK_CHECK_ARG(out.scalar_type() == dtype, "out", "expected dtype ", dtype, ", got ", out.scalar_type());
  const int64_t n = expected.back();
  if (out.numel() == 0) return out;
  at::Tensor o2 = out.view({-1, n});  // errors if the rows cannot be addressed with one stride
  PK_CHECK_ARG(n <= 1 || o2.stride(1) == 1, "out", "expected unit stride along the last dim");
  return o2;
}

// out [rows, N] (unit column stride); A given as [batch, M, K] view.
void run_gemm(const at::Tensor& a3, int64_t n, const void* b, int b_kind, int64_t sb_k, int64_t sb_n,
              const std::optional<at::Tensor>& bias, Act act, const at::Tensor& out) {
  pk::cpu::gemm::GemmArgs g;
  g.a = a3.data_ptr();
  g.a_kind = pk::float_kind(a3, "a");
  g.batch = a3.size(0); g.M = a3.size(1); g.K = a3.size(2); g.N = n;
  g.sa_b = a3.stride(0); g.sa_m = a3.stride(1); g.sa_k = a3.stride(2);
  g.b = b; g.b_kind = b_kind; g.sb_k = sb_k; g.sb_n = sb_n;
  set_bias(g, bias, n);
  g.act = act;
  g.c = out.data_ptr();
  g.c_kind = pk::float_kind(out, "out_dtype");
  g.ldc = out.size(0) > 1 ? out.stride(0) : n;
  g.num_threads = at::get_num_threads();
  pk::cpu::gemm::gemm(g);
}

at::Tensor matmul_cpu(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias,
                      std::optional<c10::string_view> activation, std::optional<at::ScalarType> out_dtype) {
  PK_CHECK_ARG(a.dim() >= 2, "a", "expected [..., M, K], got ", a.sizes());
  PK_CHECK_ARG(b.dim() == 2 && b.size(0) == a.size(-1), "b", "expected [K=", a.size(-1), ", N], got ", b.sizes());
  const Act act = parse_act(activation);
  const int b_kind = pk::float_kind(b, "b");
  pk::float_kind(a, "a");
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(1);
  const at::Tensor a3 = a.reshape({lead(a, 2), m, k});  // a view unless the batch dims cannot be merged
  auto out_sizes = a.sizes().vec();
  out_sizes.back() = n;
  at::Tensor out = at::empty(out_sizes, a.options().dtype(out_dtype.value_or(a.scalar_type())));
  if (out.numel() == 0) return out;
  run_gemm(a3, n, b.data_ptr(), b_kind, b.stride(0), b.stride(1), bias, act, out.view({-1, n}));
  return out;
}

// Same, into a caller-provided `out` [..., M, N] (tests poison it; rows may be padded).
void matmul_out_cpu(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias,
                    std::optional<c10::string_view> activation, const at::Tensor& out) {
  PK_CHECK_ARG(a.dim() >= 2, "a", "expected [..., M, K], got ", a.sizes());
  PK_CHECK_ARG(b.dim() == 2 && b.size(0) == a.size(-1), "b", "expected [K=", a.size(-1), ", N], got ", b.sizes());
  pk::float_kind(a, "a");
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(1);
  auto sizes = a.sizes().vec();
  sizes.back() = n;
  const at::Tensor o2 = out_rows(out, sizes, out.scalar_type());
  if (out.numel() == 0) return;
  run_gemm(a.reshape({lead(a, 2), m, k}), n, b.data_ptr(), pk::float_kind(b, "b"), b.stride(0), b.stride(1), bias,
           parse_act(activation), o2);
}

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      std::optional<c10::string_view> activation) {
  PK_CHECK_ARG(x.dim() >= 1, "x", "expected [..., K]");
  PK_CHECK_ARG(weight.dim() == 2 && weight.size(1) == x.size(-1), "weight", "expected [N, K=", x.size(-1),
               "], got ", weight.sizes());
  const Act act = parse_act(activation);
  const int w_kind = pk::float_kind(weight, "weight");
  pk::float_kind(x, "x");
  const int64_t k = x.size(-1), n = weight.size(0);
  const at::Tensor a3 = x.reshape({1, lead(x, 1), k});
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = n;
  at::Tensor out = at::empty(out_sizes, x.options());
  if (out.numel() == 0) return out;
  run_gemm(a3, n, weight.data_ptr(), w_kind, weight.stride(1), weight.stride(0), bias, act, out.view({-1, n}));
  return out;
}

void linear_out_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                    std::optional<c10::string_view> activation, const at::Tensor& out) {
  PK_CHECK_ARG(x.dim() >= 1, "x", "expected [..., K]");
  PK_CHECK_ARG(weight.dim() == 2 && weight.size(1) == x.size(-1), "weight", "expected [N, K=", x.size(-1),
               "], got ", weight.sizes());
  pk::float_kind(x, "x");
  const int64_t k = x.size(-1), n = weight.size(0);
  auto sizes = x.sizes().vec();
  sizes.back() = n;
  const at::Tensor o2 = out_rows(out, sizes, x.scalar_type());
  if (out.numel() == 0) return;
  run_gemm(x.reshape({1, lead(x, 1), k}), n, weight.data_ptr(), pk::float_kind(weight, "weight"), weight.stride(1),
           weight.stride(0), bias, parse_act(activation), o2);
}

std::string gemm_kernel_name(const at::Tensor& a, const at::Tensor& b) {
  return pk::cpu::gemm::kernel_name(pk::float_kind(a, "a"), pk::float_kind(b, "b"));
}


void quantized_linear_into(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                           const std::optional<at::Tensor>& zeros, int64_t bits, int64_t group_size,
                           const std::optional<at::Tensor>& bias, const at::Tensor* out_given, at::Tensor* out_new) {
  PK_CHECK_ARG(bits == 4 || bits == 8, "bits", "expected 4 or 8, got ", bits);
  PK_CHECK_ARG(x.dim() >= 1, "x", "expected [..., K]");
  const int64_t k = x.size(-1);
  PK_CHECK_ARG(qweight.dim() == 2 && qweight.scalar_type() == at::kByte, "qweight", "expected uint8 [N, K",
               bits == 4 ? "/2" : "", "], got ", qweight.scalar_type(), " ", qweight.sizes());
  PK_CHECK_ARG(qweight.size(1) * (bits == 4 ? 2 : 1) == k, "qweight", "expected ", bits == 4 ? k / 2 : k,
               " bytes per row for K=", k, ", got ", qweight.size(1));
  PK_CHECK_ARG(qweight.size(1) <= 1 || qweight.stride(1) == 1, "qweight", "expected contiguous rows (stride(1) == 1)");
  const int64_t n = qweight.size(0);
  const int64_t gs = group_size == -1 ? k : group_size;
  PK_CHECK_ARG(gs > 0 && k % gs == 0, "group_size", "expected a positive divisor of K=", k, " or -1, got ", group_size);
  PK_CHECK_ARG(bits == 8 || gs % 2 == 0, "group_size", "int4 needs an even group size, got ", gs);
  const int64_t groups = k / gs;
  PK_CHECK_ARG(scales.dim() == 2 && scales.size(0) == n && scales.size(1) == groups, "scales", "expected [", n, ", ",
               groups, "], got ", scales.sizes());
  pk::cpu::qlinear::QLinearArgs q;
  const at::Tensor x2 = x.reshape({lead(x, 1), k});
  q.x = x2.data_ptr(); q.x_kind = pk::float_kind(x, "x");
  q.rows = x2.size(0); q.K = k; q.N = n; q.sx_r = x2.stride(0); q.sx_k = x2.stride(1);
  q.q = qweight.data_ptr<uint8_t>(); q.sq_n = qweight.stride(0);
  q.bits = static_cast<int>(bits); q.group_size = gs;
  q.scales = scales.data_ptr(); q.s_kind = pk::float_kind(scales, "scales");
  q.ss_n = scales.stride(0); q.ss_g = scales.stride(1);
  if (zeros.has_value()) {
    PK_CHECK_ARG(zeros->sizes() == scales.sizes(), "zeros", "expected shape ", scales.sizes(), ", got ", zeros->sizes());
    q.zeros = zeros->data_ptr(); q.z_kind = pk::float_kind(*zeros, "zeros");
    q.sz_n = zeros->stride(0); q.sz_g = zeros->stride(1);
  }
  if (bias.has_value()) {
    PK_CHECK_ARG(bias->dim() == 1 && bias->size(0) == n, "bias", "expected shape [", n, "], got ", bias->sizes());
    q.bias = bias->data_ptr(); q.bias_kind = pk::float_kind(*bias, "bias"); q.s_bias = bias->stride(0);
  }
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = n;
  at::Tensor o2;
  if (out_given != nullptr) {
    o2 = out_rows(*out_given, out_sizes, x.scalar_type());
  } else {
    *out_new = at::empty(out_sizes, x.options());
    if (out_new->numel() == 0) return;
    o2 = out_new->view({-1, n});
  }
  if (o2.numel() == 0) return;
  q.out = o2.data_ptr(); q.out_kind = q.x_kind; q.ldo = o2.size(0) > 1 ? o2.stride(0) : n;
  q.num_threads = at::get_num_threads();
  pk::cpu::qlinear::quantized_linear(q);
}

at::Tensor quantized_linear_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                                const std::optional<at::Tensor>& zeros, int64_t bits, int64_t group_size,
                                const std::optional<at::Tensor>& bias) {
  at::Tensor out;
  quantized_linear_into(x, qweight, scales, zeros, bits, group_size, bias, nullptr, &out);
  return out;
}

void quantized_linear_out_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                              const std::optional<at::Tensor>& zeros, int64_t bits, int64_t group_size,
                              const std::optional<at::Tensor>& bias, const at::Tensor& out) {
  quantized_linear_into(x, qweight, scales, zeros, bits, group_size, bias, &out, nullptr);
}

std::string quantized_linear_path(int64_t rows, int64_t bits, at::ScalarType x_dtype, int64_t group_size) {
  const int kind = x_dtype == at::kFloat ? 0 : x_dtype == at::kBFloat16 ? 1 : 2;
  return pk::cpu::qlinear::path_name(rows, static_cast<int>(bits), kind, group_size);
}

}  // namespace

TORCH_LIBRARY_IMPL(polykernels_C, CPU, m) {
  m.impl("matmul", &matmul_cpu);
  m.impl("linear", &linear_cpu);
  m.impl("quantized_linear", &quantized_linear_cpu);
  m.impl("matmul_out", &matmul_out_cpu);
  m.impl("linear_out", &linear_out_cpu);
  m.impl("quantized_linear_out", &quantized_linear_out_cpu);
}

TORCH_LIBRARY_IMPL(polykernels_C, CompositeExplicitAutograd, m) {
  m.impl("gemm_kernel_name", &gemm_kernel_name);
}

// Not tensor ops: plain functions registered as catch-all kernels.
TORCH_LIBRARY_FRAGMENT(polykernels_C, m) {
  m.def("quantized_linear_path(int rows, int bits, ScalarType x_dtype, int group_size) -> str", &quantized_linear_path);
}
