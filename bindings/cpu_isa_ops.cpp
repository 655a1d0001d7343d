// Python-visible control of the CPU ISA path: torch.ops.polykernels_C.cpu_isa() and
// set_cpu_isa(name) (tests force each path; returns the path actually set), the best path
// the CPU supports and the one taken by default (cpu_isa.h: default_isa).
#include <stdexcept>

#include "checks.h"
#include "cpu/cpu_isa.h"

namespace {

std::string cpu_isa() { return pk::cpu::isa_name(pk::cpu::active_isa()); }

std::string set_cpu_isa(const std::string& name) {
  pk::cpu::Isa requested;
  try {
    requested = pk::cpu::parse_isa(name);
  } catch (const std::invalid_argument& e) {
    PK_CHECK_ARG(false, "name", e.what());
  }
  return pk::cpu::isa_name(pk::cpu::set_active_isa(requested));
}

std::string detected_cpu_isa() { return pk::cpu::isa_name(pk::cpu::detected_isa()); }

std::string default_cpu_isa() { return pk::cpu::isa_name(pk::cpu::default_isa()); }

// The default-path rule on a given CPU kind (tests: the vendor rule on any machine).
std::string default_cpu_isa_for(const std::string& detected, bool intel) {
  pk::cpu::Isa isa;
  try {
    isa = pk::cpu::parse_isa(detected);
  } catch (const std::invalid_argument& e) {
    PK_CHECK_ARG(false, "detected", e.what());
  }
  return pk::cpu::isa_name(pk::cpu::default_isa_for(isa, intel));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(polykernels_C, m) {
  m.def("cpu_isa() -> str", &cpu_isa);
  m.def("set_cpu_isa(str name) -> str", &set_cpu_isa);
  m.def("detected_cpu_isa() -> str", &detected_cpu_isa);
  m.def("default_cpu_isa() -> str", &default_cpu_isa);
  m.def("default_cpu_isa_for(str detected, bool intel) -> str", &default_cpu_isa_for);
}
