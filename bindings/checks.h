// Argument checks for the torch-facing launchers: each names the argument and what was expected.
#pragma once
#include <torch/library.h>
// Narrow ATen headers, not <ATen/ATen.h> (which declares every op): each binding file then
// preprocesses ~222k instead of ~322k lines (torch 2.13), the bulk of its compile time.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#define PK_CHECK_ARG(cond, name, ...) TORCH_CHECK(cond, "polykernels: argument '", name, "': ", __VA_ARGS__)

namespace pk {

// 0 fp32, 1 bf16, 2 fp16 (the `kind` the torch-free CPU kernels take)
inline int float_kind(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return 0;
    case at::kBFloat16: return 1;
    case at::kHalf: return 2;
    default: PK_CHECK_ARG(false, name, "expected float32, bfloat16 or float16, got ", t.scalar_type());
  }
  return -1;
}

// Optional attention sinks: a contiguous fp32 [heads_q] on the CPU, or nullptr.
inline const float* sinks_ptr(const c10::optional<at::Tensor>& sinks, int64_t heads_q) {
  if (!sinks.has_value()) return nullptr;
  const at::Tensor& t = *sinks;
  PK_CHECK_ARG(t.scalar_type() == at::kFloat && t.dim() == 1 && t.size(0) == heads_q && t.is_contiguous() &&
                   t.device().is_cpu(), "sinks", "expected a contiguous CPU float32 [", heads_q, "]");
  return t.data_ptr<float>();
}

}  // namespace pk
