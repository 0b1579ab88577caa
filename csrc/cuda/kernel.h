#pragma once
// What a kernel file (csrc/cuda/<family>.cuh) may include besides csrc/common/'s math: CUDA's
// device types and intrinsics, or, under FASTGEN_CUDA_EMU, the CPU execution model's (csrc/emu/).
// No ATen: the kernels are the same source in the nvcc build and in the cuda_emu build.
//   FASTGEN_EXTERN_SHARED(T, name)   extern __shared__ T name[] (128-byte aligned)
#ifdef FASTGEN_CUDA_EMU
#include "emu/cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#define FASTGEN_EXTERN_SHARED(T, name) extern __shared__ __align__(128) T name[]
#endif

#include <cstdint>
