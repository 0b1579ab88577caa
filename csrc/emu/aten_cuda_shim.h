#pragma once
// The few pieces of the CUDA runtime and ATen's CUDA layer that fastgen's launchers call, for
// the host build against the execution model (csrc/emu/cuda_emu.h). The "device" is the model:
// compute capability 8.0 (so the sm_80 paths, WMMA included, run), 2 multiprocessors (so the
// launchers that size grids by the SM count get small grids and their grid-stride loops run).
#include <cstddef>

#include <c10/core/Device.h>

typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
template <typename K>
inline cudaError_t cudaFuncSetAttribute(K, cudaFuncAttribute, int) {
  return cudaSuccess;
}
struct cudaDeviceProp {
  int major = 8, minor = 0;
  int multiProcessorCount = 2;
  int warpSize = 32;
  int maxThreadsPerBlock = 1024;
  size_t sharedMemPerBlock = 48 * 1024;
  size_t sharedMemPerBlockOptin = 163 * 1024;
};
typedef int cudaStream_t;

#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
#define C10_CUDA_CHECK(expr) (void)(expr)

namespace at {
namespace cuda {
inline cudaStream_t getCurrentCUDAStream() { return 0; }
inline const cudaDeviceProp* getCurrentDeviceProperties() {
  static const cudaDeviceProp prop;
  return &prop;
}
}  // namespace cuda
}  // namespace at
