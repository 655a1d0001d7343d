// Per-thread scratch memory for the CPU kernels (torch-free).
#pragma once
#include <cstddef>
#include <cstdlib>
#include <new>

namespace pk::cpu {

// 64-byte aligned. Kernels keep one per thread (thread_local) and reuse it across calls, so
// GEMMs do not pay page faults on freshly mapped memory every time. Bounded: a call that needed
// more than kKeepBytes gives it back at its end (release_above), so one huge GEMM does not
// leave its packed copy resident in every thread that ever called one (a 4096^2 fp32 A is
// 64 MB; torch keeps ~8 MB). Re-mapping that much costs a few ms against a GEMM of seconds.
constexpr size_t kKeepBytes = size_t(16) << 20;

struct ScratchBuffer {
  void* p = nullptr;
  size_t cap = 0;
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() { std::free(p); }
  void* get(size_t bytes) {
    if (bytes > cap) {
      std::free(p);
      cap = (bytes + 4095) & ~size_t(4095);
      p = std::aligned_alloc(64, cap);
      if (p == nullptr) {
        cap = 0;
        throw std::bad_alloc();
      }
    }
    return p;
  }
  void release_above(size_t keep = kKeepBytes) {
    if (cap > keep) {
      std::free(p);
      p = nullptr;
      cap = 0;
    }
  }
};

}  // namespace pk::cpu
