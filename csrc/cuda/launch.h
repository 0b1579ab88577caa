#pragma once
// What a CUDA launcher (csrc/cuda/<family>.cu) needs from the CUDA runtime and ATen's CUDA layer,
// in one place, so the same launcher source also compiles as host C++ against the CPU execution
// model (csrc/emu/, the `cuda_emu` backend, built with FASTGEN_CUDA_EMU). The kernels themselves
// are in csrc/cuda/<family>.cuh (no ATen; their base header is cuda/kernel.h).
//   FASTGEN_LAUNCH(grid, block, smem, stream, kernel)(args...)   kernel<<<grid, block, smem, stream>>>(args...)
//   FASTGEN_CUDA_LIBRARY_IMPL(m)                                   TORCH_LIBRARY_IMPL(fastgen, CUDA, m)
// Under the model the kernels register for CPU tensors in the `fastgen_emu` namespace
// (schemas from csrc/fastgen.cpp), which fastgen/ops/_registry.py calls for backend "cuda_emu".
#include "cuda/kernel.h"

#ifdef FASTGEN_CUDA_EMU
#include "emu/aten_cuda_shim.h"
#define FASTGEN_LAUNCH(grid, block, smem, stream, ...) ::fastgen_emu::launch(grid, block, smem, #__VA_ARGS__, __VA_ARGS__)
#define FASTGEN_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(fastgen_emu, CPU, m)
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#define FASTGEN_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define FASTGEN_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(fastgen, CUDA, m)
#endif
