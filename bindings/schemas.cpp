// Schemas of the internal C++ kernels, defined once. The public ops
// (torch.ops.polykernels.*) are defined in Python (kernels/ops/) so they exist even when this
// extension could not be built; their C++ implementations are these polykernels_C ops,
// registered with the dispatcher in kernels/cpu/register_*.py and kernels/cuda/register.py.
// Each family keeps its definitions in its own block below.
#include <torch/library.h>

TORCH_LIBRARY(polykernels_C, m) {
  // --- merge_attention_states (foundation) ---
  m.def("merge_attention_states(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b) -> (Tensor, Tensor)");

  // --- CPU attention / paged decode (issue 5) ---
  // Forward only (backward runs on the reference). `out` / `lse`, when given, are filled in
  // place and returned (tests pass NaN-poisoned ones); otherwise they are allocated. `sinks`:
  // fp32 [heads_q] attention sinks (last, so positional out / lse keep their places).
  m.def("cpu_attention_fwd(Tensor q, Tensor k, Tensor v, bool causal, float softmax_scale, int window_left, "
        "int window_right, float softcap, Tensor? alibi_slopes, Tensor(a!)? out=None, Tensor(b!)? lse=None, "
        "Tensor? sinks=None) -> (Tensor, Tensor)");
  m.def("cpu_varlen_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, "
        "int max_seqlen_q, int max_seqlen_k, bool causal, float softmax_scale, int window_left, int window_right, "
        "float softcap, Tensor? alibi_slopes, Tensor(a!)? out=None, Tensor(b!)? lse=None, Tensor? sinks=None) "
        "-> (Tensor, Tensor)");
  m.def("cpu_paged_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, Tensor seq_lens, "
        "float softmax_scale, int window_left, int window_right, float softcap, Tensor? alibi_slopes, "
        "float k_scale, float v_scale, Tensor? kv_scales=None, Tensor(a!)? out=None, Tensor(b!)? lse=None, "
        "Tensor? sinks=None) -> (Tensor, Tensor)");
  m.def("cpu_varlen_paged_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, "
        "Tensor seq_lens, Tensor cu_seqlens_q, int max_seqlen_q, float softmax_scale, int window_left, "
        "int window_right, float softcap, Tensor? alibi_slopes, float k_scale, float v_scale, "
        "Tensor? kv_scales=None, Tensor(a!)? out=None, Tensor(b!)? lse=None, Tensor? sinks=None) "
        "-> (Tensor, Tensor)");
  m.def("cpu_write_kv_cache(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping, "
        "float k_scale, float v_scale, Tensor? kv_scales=None) -> ()");

  // --- CPU matmul / quantized linear (issue 5) ---
  m.def("matmul(Tensor a, Tensor b, Tensor? bias=None, str? activation=None, ScalarType? out_dtype=None) -> Tensor");
  m.def("linear(Tensor x, Tensor weight, Tensor? bias=None, str? activation=None) -> Tensor");
  m.def("quantized_linear(Tensor x, Tensor qweight, Tensor scales, Tensor? zeros, int bits, int group_size, Tensor? bias=None) -> Tensor");
  // *_out: same, written into a caller-provided out (rows may be padded); tests poison it
  m.def("matmul_out(Tensor a, Tensor b, Tensor? bias, str? activation, Tensor(a!) out) -> ()");
  m.def("linear_out(Tensor x, Tensor weight, Tensor? bias, str? activation, Tensor(a!) out) -> ()");
  m.def("quantized_linear_out(Tensor x, Tensor qweight, Tensor scales, Tensor? zeros, int bits, int group_size, Tensor? bias, Tensor(a!) out) -> ()");
  m.def("gemm_kernel_name(Tensor a, Tensor b) -> str");  // micro-kernel the CPU GEMM would use now (tests)

  // --- CUDA paged decode (issue 4) ---
  // Implemented for the CUDA key only (bindings/cuda_paged_attention.cpp, CUDA builds);
  // fp16/bf16, head_dim 64/128/256, q_len * heads_q / heads_kv <= 16. num_splits >= 1.
  m.def("cuda_paged_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, Tensor seq_lens, "
        "float softmax_scale, int window_left, float softcap, Tensor? alibi_slopes, int num_splits) "
        "-> (Tensor, Tensor)");
}
