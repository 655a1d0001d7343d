// Per-thread scratch memory for the CPU kernels (torch-free).
#pragma once
#include <cstddef>
#include <cstdlib>
#include <new>

namespace pk::cpu {

// Grow-only, 64-byte aligned. Kernels keep one per thread (thread_local) and reuse it across
// calls, so large GEMMs do not pay page faults on freshly mapped memory every time. It is
// never shrunk: the high-water mark of a thread stays allocated until the thread exits.
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
};

}  // namespace pk::cpu
