// CUDA launcher for the paged decode kernel (kernels/cuda/paged_decode.cu): validates the
// arguments (naming them), allocates the outputs and split partials, fills the torch-free
// parameter block and launches on the current stream. Compiled only in CUDA builds (the name
// starts with cuda_). Uses c10/cuda headers only: ATen/cuda/CUDAContext.h pulls in cusparse.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "checks.h"
#include "cuda/paged_decode.h"

namespace {

void check_rows_aligned(const at::Tensor& t, const char* name) {
  PK_CHECK_ARG(t.stride(-1) == 1, name, "expected a unit stride on the head dim, got ", t.stride(-1));
  PK_CHECK_ARG(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name, "expected a 16-byte aligned pointer");
  for (int i = 0; i < t.dim() - 1; ++i) {
    PK_CHECK_ARG(t.stride(i) % 8 == 0 || t.size(i) == 1, name, "expected strides that are multiples of 8 elements, got ",
                 t.strides());
  }
}

std::tuple<at::Tensor, at::Tensor> cuda_paged_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                                        const at::Tensor& v_cache, const at::Tensor& block_table,
                                                        const at::Tensor& seq_lens, double softmax_scale,
                                                        int64_t window_left, double softcap,
                                                        const std::optional<at::Tensor>& alibi_slopes,
                                                        int64_t num_splits) {
  PK_CHECK_ARG(q.is_cuda(), "q", "expected a CUDA tensor");
  PK_CHECK_ARG(q.dim() == 4, "q", "expected [num_seqs, q_len, heads_q, head_dim]");
  PK_CHECK_ARG(k_cache.dim() == 4, "k_cache", "expected [num_blocks, block_size, heads_kv, head_dim]");
  PK_CHECK_ARG(v_cache.sizes() == k_cache.sizes(), "v_cache", "expected shape ", k_cache.sizes());
  PK_CHECK_ARG(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16, "q", "expected float16 or bfloat16");
  PK_CHECK_ARG(k_cache.scalar_type() == q.scalar_type(), "k_cache", "expected dtype ", q.scalar_type());
  PK_CHECK_ARG(v_cache.scalar_type() == q.scalar_type(), "v_cache", "expected dtype ", q.scalar_type());
  PK_CHECK_ARG(block_table.scalar_type() == at::kInt && block_table.dim() == 2, "block_table", "expected int32 [num_seqs, max_blocks]");
  PK_CHECK_ARG(block_table.stride(1) == 1, "block_table", "expected a unit column stride");
  PK_CHECK_ARG(seq_lens.scalar_type() == at::kInt && seq_lens.is_contiguous(), "seq_lens", "expected contiguous int32");
  const int64_t num_seqs = q.size(0), q_len = q.size(1), heads_q = q.size(2), dim = q.size(3);
  const int64_t heads_kv = k_cache.size(2);
  PK_CHECK_ARG(k_cache.size(3) == dim, "k_cache", "expected head_dim ", dim);
  PK_CHECK_ARG(heads_kv > 0 && heads_q % heads_kv == 0, "k_cache", "heads_q ", heads_q, " not a multiple of heads_kv ", heads_kv);
  PK_CHECK_ARG(dim == 64 || dim == 128 || dim == 256, "q", "head_dim must be 64, 128 or 256, got ", dim);
  PK_CHECK_ARG(q_len * (heads_q / heads_kv) <= pk::cuda::kMaxRows, "q", "q_len * heads_q / heads_kv must be <= ",
               pk::cuda::kMaxRows);
  PK_CHECK_ARG(block_table.size(0) == num_seqs && seq_lens.numel() == num_seqs, "block_table", "expected ", num_seqs, " rows");
  PK_CHECK_ARG(num_splits >= 1, "num_splits", "expected >= 1");
  check_rows_aligned(q, "q");
  check_rows_aligned(k_cache, "k_cache");
  check_rows_aligned(v_cache, "v_cache");
  for (const auto* t : {&k_cache, &v_cache, &block_table, &seq_lens}) {
    PK_CHECK_ARG(t->device() == q.device(), "k_cache/v_cache/block_table/seq_lens", "expected device ", q.device());
  }

  c10::cuda::CUDAGuard guard(q.device());
  auto out = at::empty({num_seqs, q_len, heads_q, dim}, q.options());
  auto lse = at::empty({num_seqs, heads_q, q_len}, q.options().dtype(at::kFloat));
  at::Tensor part_out, part_lse;
  if (num_splits > 1) {
    part_out = at::empty({num_seqs, num_splits, q_len, heads_q, dim}, q.options().dtype(at::kFloat));
    part_lse = at::empty({num_seqs, num_splits, heads_q, q_len}, q.options().dtype(at::kFloat));
  }

  pk::cuda::PagedDecodeParams p{};
  p.q = q.data_ptr();
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.block_table = block_table.data_ptr<int32_t>();
  p.seq_lens = seq_lens.data_ptr<int32_t>();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.part_out = num_splits > 1 ? part_out.data_ptr<float>() : nullptr;
  p.part_lse = num_splits > 1 ? part_lse.data_ptr<float>() : nullptr;
  p.num_seqs = static_cast<int>(num_seqs);
  p.q_len = static_cast<int>(q_len);
  p.heads_q = static_cast<int>(heads_q);
  p.heads_kv = static_cast<int>(heads_kv);
  p.head_dim = static_cast<int>(dim);
  p.block_size = static_cast<int>(k_cache.size(1));
  p.num_splits = static_cast<int>(num_splits);
  p.num_blocks = k_cache.size(0);      // the kernel range-checks block ids and seq_lens against
  p.max_blocks = block_table.size(1);  // these (issue 14); no host-side look at the values
  p.q_stride_s = q.stride(0); p.q_stride_t = q.stride(1); p.q_stride_h = q.stride(2);
  p.k_stride_b = k_cache.stride(0); p.k_stride_t = k_cache.stride(1); p.k_stride_h = k_cache.stride(2);
  p.v_stride_b = v_cache.stride(0); p.v_stride_t = v_cache.stride(1); p.v_stride_h = v_cache.stride(2);
  p.bt_stride = block_table.stride(0);
  if (alibi_slopes.has_value()) {
    const auto& a = *alibi_slopes;
    PK_CHECK_ARG(a.scalar_type() == at::kFloat && a.device() == q.device(), "alibi_slopes", "expected float32 on ", q.device());
    PK_CHECK_ARG((a.dim() == 1 && a.size(0) == heads_q) || (a.dim() == 2 && a.size(0) == num_seqs && a.size(1) == heads_q),
                 "alibi_slopes", "expected [heads_q] or [num_seqs, heads_q]");
    p.alibi = a.data_ptr<float>();
    p.alibi_stride_s = a.dim() == 2 ? a.stride(0) : 0;
    p.alibi_stride_h = a.stride(-1);
  }
  p.softmax_scale = static_cast<float>(softmax_scale);
  p.softcap = static_cast<float>(softcap);
  p.window_left = static_cast<int>(window_left);
  p.dtype = q.scalar_type() == at::kBFloat16 ? pk::cuda::DType::kBFloat16 : pk::cuda::DType::kFloat16;

  const cudaError_t err = pk::cuda::paged_decode(p, c10::cuda::getCurrentCUDAStream(q.device().index()).stream());
  TORCH_CHECK(err == cudaSuccess, "polykernels: cuda_paged_attention launch failed: ", cudaGetErrorString(err));
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(polykernels_C, CUDA, m) {
  m.impl("cuda_paged_attention", &cuda_paged_attention);
}
