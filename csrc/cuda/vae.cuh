#pragma once
// gaussian_reparam_kl kernels; math in csrc/common/vae.h, launchers in csrc/cuda/vae.cu.
// No ATen: the nvcc build and the cuda_emu build (csrc/emu/) compile this same source.
#include <cstdint>

#include "common/vae.h"
#include "cuda/kernel.h"
#include "cuda/reduce.cuh"

namespace fastgen {
namespace {  // internal linkage, as before the split: only csrc/cuda/vae.cu includes this file

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  return reduce::block_sum<kThreads>(v);  // csrc/cuda/reduce.cuh: the contract
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
reparam_kl_forward_kernel(const scalar_t* __restrict__ mu, const scalar_t* __restrict__ lv,
                          const scalar_t* __restrict__ eps, scalar_t* __restrict__ z,
                          acc_t* __restrict__ partial, int64_t cols, int64_t chunk) {
  const int64_t row = blockIdx.x;
  const int64_t start = blockIdx.y * chunk;
  const int64_t end = min(cols, start + chunk);
  const int64_t base = row * cols;
  acc_t acc = 0;
  for (int64_t i = base + start + threadIdx.x; i < base + end; i += kThreads) {
    acc_t term;
    z[i] = static_cast<scalar_t>(reparam_kl_forward<acc_t>(
        static_cast<acc_t>(mu[i]), static_cast<acc_t>(lv[i]), static_cast<acc_t>(eps[i]), &term));
    acc += term;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[row * gridDim.y + blockIdx.y] = acc_t(-0.5) * acc;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
reparam_kl_backward_kernel(const scalar_t* __restrict__ gz, const acc_t* __restrict__ gkl,
                           const scalar_t* __restrict__ mu, const scalar_t* __restrict__ lv,
                           const scalar_t* __restrict__ eps, scalar_t* __restrict__ dmu,
                           scalar_t* __restrict__ dlv, int64_t cols, int64_t chunk) {
  const int64_t row = blockIdx.x;
  const int64_t start = blockIdx.y * chunk;
  const int64_t end = min(cols, start + chunk);
  const int64_t base = row * cols;
  const acc_t g = gkl[row];
  for (int64_t i = base + start + threadIdx.x; i < base + end; i += kThreads) {
    acc_t a, b;
    reparam_kl_backward<acc_t>(static_cast<acc_t>(gz[i]), g, static_cast<acc_t>(mu[i]),
                               static_cast<acc_t>(lv[i]), static_cast<acc_t>(eps[i]), &a, &b);
    dmu[i] = static_cast<scalar_t>(a);
    dlv[i] = static_cast<scalar_t>(b);
  }
}

}  // namespace
}  // namespace fastgen
