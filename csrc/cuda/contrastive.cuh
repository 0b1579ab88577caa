#pragma once
// info_nce_loss's tile epilogue kernels; the tile driver is csrc/common/contrastive.h, the
// launchers csrc/cuda/contrastive.cu.
// No ATen: the nvcc build and the cuda_emu build (csrc/emu/) compile this same source.
#include <cstdint>
#include <limits>

#include "common/macros.h"
#include "cuda/kernel.h"
#include "cuda/reduce.cuh"

namespace fastgen {
namespace {  // internal linkage: only csrc/cuda/contrastive.cu includes this file

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
info_nce_lse_kernel(const T* __restrict__ s, T* __restrict__ running, int64_t cols) {
  const T* row = s + blockIdx.x * cols;
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t j = threadIdx.x; j < cols; j += kThreads) mx = max(mx, row[j]);
  mx = reduce::broadcast_from_thread0(reduce::block_max<kThreads>(mx));
  const T hi = max(mx, running[blockIdx.x]);
  if (hi == -std::numeric_limits<T>::infinity()) return;
  T sum = 0;
  for (int64_t j = threadIdx.x; j < cols; j += kThreads) sum += fexp(row[j] - hi);
  sum = reduce::block_sum<kThreads>(sum);
  if (threadIdx.x == 0) running[blockIdx.x] = hi + ::log(sum + fexp(running[blockIdx.x] - hi));
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
info_nce_weights_kernel(const T* __restrict__ s, const T* __restrict__ lse_rows, const T* __restrict__ lse_cols,
                        T* __restrict__ p, int64_t cols) {
  const T l = lse_rows[blockIdx.x];
  const int64_t base = blockIdx.x * cols;
  for (int64_t j = threadIdx.x; j < cols; j += kThreads) {
    const T x = s[base + j];
    p[base + j] = fexp(x - l) + fexp(x - lse_cols[j]);
  }
}

}  // namespace
}  // namespace fastgen
