// Run-time choice of the CPU instruction-set path (torch-free).
//
// Kernels are compiled once for x86-64 with ISA-specific functions marked
// __attribute__((target(...))); which one runs is decided here from the CPU's flags, never
// at build time. POLYKERNELS_CPU_ISA=scalar|avx2|avx512|avx512_bf16 (read once) or
// set_active_isa() forces a lower path so tests can cover each one on an AVX-512 machine;
// a request above what the CPU has is capped at the best available path.
#pragma once
#include <string>

namespace pk::cpu {

enum class Isa : int { Scalar = 0, AVX2 = 1, AVX512 = 2, AVX512_BF16 = 3 };

Isa detected_isa();                   // best path this CPU supports (AVX2 also needs FMA and F16C)
Isa active_isa();                     // path kernels should take now
Isa set_active_isa(Isa requested);    // returns the path actually set (capped); thread-safe
Isa parse_isa(const std::string& name);  // throws std::invalid_argument naming valid values
const char* isa_name(Isa isa);

}  // namespace pk::cpu
