#pragma once
// The device guard every CUDA entry point runs under: the current device becomes its main
// input's, so allocations, the current stream and the launches go to that GPU even when the
// caller's current device is another one. Taken after the argument checks (which require every
// tensor argument on the main input's device): then the main input can only be a host tensor if
// the dispatcher chose the CUDA kernel for an argument the checks skip (an empty placeholder),
// and that is reported here by name instead of by the guard's internal assert.
#include <ATen/core/Tensor.h>

#include <string>

#include "common/checks.h"
#ifndef FASTGEN_CUDA_EMU
#include <c10/cuda/CUDAGuard.h>
#endif

namespace fastgen {

#ifdef FASTGEN_CUDA_EMU
// The CPU execution model (csrc/emu/): the kernels run on CPU tensors; nothing to guard.
struct EmuDeviceGuard {};
inline EmuDeviceGuard device_guard(const at::Tensor& main, const char* name) {
  TORCH_CHECK_VALUE(main.is_cpu(), std::string("fastgen: ") + name + " is on " + py_device(main.device()) +
                    " but the cuda_emu backend runs CPU tensors");
  return {};
}
#else

inline c10::cuda::CUDAGuard device_guard(const at::Tensor& main, const char* name) {
  TORCH_CHECK_VALUE(main.is_cuda(), std::string("fastgen: ") + name + " is on " + py_device(main.device()) +
                    " but another argument is on a CUDA device");
  return c10::cuda::CUDAGuard(main.device());
}
#endif

}  // namespace fastgen
