// CPU launcher for merge_attention_states: validates, allocates, calls the torch-free kernel.
#include "checks.h"
#include "cpu/merge_states.h"

namespace {

std::tuple<at::Tensor, at::Tensor> merge_attention_states_cpu(const at::Tensor& out_a, const at::Tensor& lse_a,
                                                              const at::Tensor& out_b, const at::Tensor& lse_b) {
  const int kind = pk::float_kind(out_a, "out_a");
  PK_CHECK_ARG(out_b.scalar_type() == out_a.scalar_type(), "out_b", "expected dtype ", out_a.scalar_type());
  PK_CHECK_ARG(lse_a.scalar_type() == at::kFloat, "lse_a", "expected float32");
  PK_CHECK_ARG(lse_b.scalar_type() == at::kFloat, "lse_b", "expected float32");
  PK_CHECK_ARG(out_a.dim() == 3 || out_a.dim() == 4, "out_a", "expected [seq, heads, dim] or [batch, seq, heads, dim]");
  PK_CHECK_ARG(out_b.sizes() == out_a.sizes(), "out_b", "expected shape ", out_a.sizes());
  PK_CHECK_ARG(lse_a.dim() == out_a.dim() - 1, "lse_a", "expected ", out_a.dim() - 1, " dims");
  PK_CHECK_ARG(lse_b.sizes() == lse_a.sizes(), "lse_b", "expected shape ", lse_a.sizes());

  auto out = at::empty(out_a.sizes(), out_a.options());
  auto lse = at::empty(lse_a.sizes(), lse_a.options());
  const bool batched = out_a.dim() == 4;
  const int off = batched ? 1 : 0;
  pk::cpu::MergeStatesArgs a{};
  a.out_a = out_a.data_ptr(); a.out_b = out_b.data_ptr(); a.out = out.data_ptr();
  a.lse_a = lse_a.data_ptr<float>(); a.lse_b = lse_b.data_ptr<float>(); a.lse = lse.data_ptr<float>();
  a.outer = batched ? out_a.size(0) : 1;
  a.rows = out_a.size(off); a.heads = out_a.size(off + 1); a.head_dim = out_a.size(off + 2);
  auto fill_out = [&](const at::Tensor& t, int64_t* s) {
    s[0] = batched ? t.stride(0) : 0;
    for (int i = 0; i < 3; ++i) s[i + 1] = t.stride(off + i);
  };
  auto fill_lse = [&](const at::Tensor& t, int64_t* s) {  // lse [outer?, heads, rows]
    s[0] = batched ? t.stride(0) : 0;
    s[1] = t.stride(off);
    s[2] = t.stride(off + 1);
  };
  fill_out(out_a, a.oa_s); fill_out(out_b, a.ob_s); fill_out(out, a.o_s);
  fill_lse(lse_a, a.la_s); fill_lse(lse_b, a.lb_s); fill_lse(lse, a.l_s);
  a.kind = kind;
  pk::cpu::merge_attention_states(a);
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(polykernels_C, CPU, m) {
  m.impl("merge_attention_states", &merge_attention_states_cpu);
}
