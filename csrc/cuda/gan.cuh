#pragma once
// bias_act kernels; math in csrc/common/gan.h, launchers in csrc/cuda/gan.cu.
// No ATen: the nvcc build and the cuda_emu build (csrc/emu/) compile this same source.
#include <cstdint>

#include "common/gan.h"
#include "cuda/kernel.h"
#include "cuda/reduce.cuh"

namespace fastgen {
namespace {  // internal linkage, as before the split: only csrc/cuda/gan.cu includes this file

constexpr int kThreads = 256;

// Sum of v over the block; the result is valid in thread 0.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  return reduce::block_sum<kThreads>(v);  // csrc/cuda/reduce.cuh: the contract
}

template <Act A, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
bias_act_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ bias,
                        scalar_t* __restrict__ out, int64_t numel, int64_t channels, int64_t inner,
                        acc_t alpha, acc_t gain) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    acc_t y = static_cast<acc_t>(x[i]);
    if (bias != nullptr) y += static_cast<acc_t>(bias[(i / inner) % channels]);
    out[i] = static_cast<scalar_t>(act_forward<A>(y, alpha) * gain);
  }
}

// kPlanes (inner > 1): block (c, row block) walks its rows' `inner`-long planes of channel c.
// Otherwise (inner == 1): thread t of block (tile, row block) owns channel tile*kThreads + t
// and walks the rows, so neighbouring threads read neighbouring channels.
template <Act A, bool kPlanes, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
bias_act_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                         const scalar_t* __restrict__ bias, scalar_t* __restrict__ dx,
                         acc_t* __restrict__ partial, int64_t outer, int64_t channels, int64_t inner,
                         int64_t rows_per_block, acc_t alpha, acc_t gain) {
  const int64_t r0 = blockIdx.y * rows_per_block;
  const int64_t r1 = min(outer, r0 + rows_per_block);
  acc_t acc = 0;
  if constexpr (kPlanes) {
    const int64_t c = blockIdx.x;
    const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[c]) : acc_t(0);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t base = (r * channels + c) * inner;
      for (int64_t j = threadIdx.x; j < inner; j += kThreads) {
        const acc_t d = static_cast<acc_t>(grad[base + j]) *
                        act_slope<A>(static_cast<acc_t>(x[base + j]) + b, alpha) * gain;
        dx[base + j] = static_cast<scalar_t>(d);
        acc += d;
      }
    }
    acc = block_sum(acc);
    if (partial != nullptr && threadIdx.x == 0) partial[blockIdx.y * channels + c] = acc;
  } else {
    const int64_t c = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
    if (c >= channels) return;
    const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[c]) : acc_t(0);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = r * channels + c;
      const acc_t d = static_cast<acc_t>(grad[i]) * act_slope<A>(static_cast<acc_t>(x[i]) + b, alpha) * gain;
      dx[i] = static_cast<scalar_t>(d);
      acc += d;
    }
    if (partial != nullptr) partial[blockIdx.y * channels + c] = acc;
  }
}

}  // namespace
}  // namespace fastgen
