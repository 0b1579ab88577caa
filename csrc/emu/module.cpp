// fastgen._C_emu: the module and the kernel schemas (csrc/fastgen.cpp, compiled with
// FASTGEN_CUDA_EMU, so in the `fastgen_emu` namespace) of the CUDA kernels built against the
// CPU execution model. The kernels: csrc/emu/<family>.cpp, one per csrc/cuda/<family>.cu.
#include "fastgen.cpp"

#include <sstream>

#include "emu/cuda_emu.h"

namespace {
// "name launches\n" per kernel the model has run in this process (tests check coverage with it).
std::string emu_kernel_launches() {
  std::lock_guard<std::mutex> lock(fastgen_emu::launch_mutex());
  std::ostringstream out;
  for (const auto& [name, n] : fastgen_emu::stats().per_kernel) out << name << ' ' << n << '\n';
  return out.str();
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(fastgen_emu, m) {
  m.def("emu_kernel_launches() -> str", &emu_kernel_launches);
}
