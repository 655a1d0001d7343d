// Run-time choice of the CPU instruction-set path (torch-free).
//
// Kernels are compiled once for x86-64 with ISA-specific functions marked
// __attribute__((target(...))); which one runs is decided here from the CPU's flags, never
// at build time. POLYKERNELS_CPU_ISA=scalar|avx2|avx512|avx512_bf16 (read once) or
// set_active_isa() forces a path so tests can cover each one on an AVX-512 machine; a
// request above what the CPU has is capped at the best available path.
#pragma once
#include <string>

namespace pk::cpu {

enum class Isa : int { Scalar = 0, AVX2 = 1, AVX512 = 2, AVX512_BF16 = 3 };

Isa detected_isa();                   // best path this CPU supports (AVX2 also needs FMA and F16C)
// The path taken when nothing forces one: detected_isa(), except that an Intel CPU gets the
// fp32-FMA AVX-512 path instead of the AVX512-BF16 one. vdpbf16ps runs at half the fp32 FMA
// rate on Intel cores (~111 vs ~221 GFLOP/s per core, measured on a Xeon with AMX, issue 11),
// and there the bf16 attention path reached 0.17-0.25x torch SDPA against 0.62-0.92x for the
// fp32 one; AMD Zen 4 runs it at the full rate. (No AMX kernels exist yet.)
Isa default_isa();
Isa default_isa_for(Isa detected, bool intel);  // the rule itself (tests)
Isa active_isa();                     // path kernels should take now
Isa set_active_isa(Isa requested);    // returns the path actually set (capped); thread-safe
Isa parse_isa(const std::string& name);  // throws std::invalid_argument naming valid values
const char* isa_name(Isa isa);

}  // namespace pk::cpu
