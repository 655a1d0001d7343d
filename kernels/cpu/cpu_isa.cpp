#include "cpu_isa.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace pk::cpu {
namespace {

Isa detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl");
  if (avx512 && __builtin_cpu_supports("avx512bf16")) return Isa::AVX512_BF16;
  if (avx512) return Isa::AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return Isa::AVX2;
#endif
  return Isa::Scalar;
}

Isa cap(Isa requested) {
  const Isa best = detected_isa();
  return static_cast<int>(requested) > static_cast<int>(best) ? best : requested;
}

bool is_intel() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_is("intel");
#else
  return false;
#endif
}

Isa initial() {
  const char* env = std::getenv("POLYKERNELS_CPU_ISA");
  if (env == nullptr || *env == '\0') return default_isa();
  return cap(parse_isa(env));
}

std::atomic<int>& active() {
  static std::atomic<int> value{static_cast<int>(initial())};
  return value;
}

}  // namespace

Isa detected_isa() {
  static const Isa isa = detect();
  return isa;
}

Isa default_isa_for(Isa detected, bool intel) {
  return intel && detected == Isa::AVX512_BF16 ? Isa::AVX512 : detected;
}

Isa default_isa() {
  static const Isa isa = default_isa_for(detected_isa(), is_intel());
  return isa;
}

Isa active_isa() { return static_cast<Isa>(active().load(std::memory_order_relaxed)); }

Isa set_active_isa(Isa requested) {
  const Isa isa = cap(requested);
  active().store(static_cast<int>(isa));
  return isa;
}

Isa parse_isa(const std::string& name) {
  if (name == "scalar") return Isa::Scalar;
  if (name == "avx2") return Isa::AVX2;
  if (name == "avx512") return Isa::AVX512;
  if (name == "avx512_bf16") return Isa::AVX512_BF16;
  throw std::invalid_argument("POLYKERNELS_CPU_ISA: expected one of scalar, avx2, avx512, avx512_bf16, got '" +
                              name + "'");
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::AVX2: return "avx2";
    case Isa::AVX512: return "avx512";
    case Isa::AVX512_BF16: return "avx512_bf16";
  }
  return "unknown";
}

}  // namespace pk::cpu
