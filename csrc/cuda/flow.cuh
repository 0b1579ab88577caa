#pragma once
// Normalizing-flow kernels (affine coupling, actnorm, the flow NLL prior terms); math in
// csrc/common/flow.h, launchers in csrc/cuda/flow.cu.
// No ATen: the nvcc build and the cuda_emu build (csrc/emu/) compile this same source.
#include <cstdint>

#include "common/flow.h"
#include "cuda/kernel.h"
#include "cuda/reduce.cuh"

namespace fastgen {
namespace {  // internal linkage, as before the split: only csrc/cuda/flow.cu includes this file

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  return reduce::block_sum<kThreads>(v);  // csrc/cuda/reduce.cuh: the contract
}

template <int FN, bool INVERSE, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
coupling_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ t,
                        const scalar_t* __restrict__ r, scalar_t* __restrict__ y,
                        acc_t* __restrict__ partial, int64_t cols, int64_t chunk, acc_t clamp) {
  const int64_t row = blockIdx.x;
  const int64_t start = blockIdx.y * chunk;
  const int64_t end = min(cols, start + chunk);
  const int64_t base = row * cols;
  const CouplingParams<acc_t> p(clamp);
  acc_t acc = 0;
  for (int64_t i = base + start + threadIdx.x; i < base + end; i += kThreads) {
    acc_t ls;
    y[i] = static_cast<scalar_t>(coupling_forward<FN, INVERSE, acc_t>(
        static_cast<acc_t>(x[i]), static_cast<acc_t>(t[i]), static_cast<acc_t>(r[i]), p, &ls));
    acc += ls;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[row * gridDim.y + blockIdx.y] = INVERSE ? -acc : acc;
}

template <int FN, bool INVERSE, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
coupling_backward_kernel(const scalar_t* __restrict__ gy, const acc_t* __restrict__ gl,
                         const scalar_t* __restrict__ x, const scalar_t* __restrict__ t,
                         const scalar_t* __restrict__ r, scalar_t* __restrict__ dx,
                         scalar_t* __restrict__ dr, int64_t cols, int64_t chunk, acc_t clamp) {
  const int64_t row = blockIdx.x;
  const int64_t start = blockIdx.y * chunk;
  const int64_t end = min(cols, start + chunk);
  const int64_t base = row * cols;
  const CouplingParams<acc_t> p(clamp);
  const acc_t g = gl[row];
  for (int64_t i = base + start + threadIdx.x; i < base + end; i += kThreads) {
    acc_t a, b;
    // the forward direction never reads shift
    const acc_t ti = INVERSE ? static_cast<acc_t>(t[i]) : acc_t(0);
    coupling_backward<FN, INVERSE, acc_t>(static_cast<acc_t>(gy[i]), g, static_cast<acc_t>(x[i]), ti,
                                          static_cast<acc_t>(r[i]), p, &a, &b);
    dx[i] = static_cast<scalar_t>(a);
    dr[i] = static_cast<scalar_t>(b);
  }
}

template <bool INVERSE, bool BACKWARD, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
actnorm_elementwise_kernel(const scalar_t* __restrict__ in, const acc_t* __restrict__ loc,
                           const acc_t* __restrict__ scale, scalar_t* __restrict__ out, int64_t numel,
                           int64_t c, int64_t s) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t ch = (i / s) % c;
    const acc_t v = static_cast<acc_t>(in[i]);
    out[i] = static_cast<scalar_t>(BACKWARD ? v * scale[ch] : actnorm_forward<INVERSE>(v, loc[ch], scale[ch]));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
actnorm_channel_sums_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                            acc_t* __restrict__ part_g, acc_t* __restrict__ part_gx, int64_t c, int64_t s,
                            int64_t per_channel, int64_t chunk) {
  const int64_t ch = blockIdx.x;
  const int64_t start = blockIdx.y * chunk;
  const int64_t end = min(per_channel, start + chunk);
  acc_t ag = 0, agx = 0;
  for (int64_t k = start + threadIdx.x; k < end; k += kThreads) {
    const int64_t i = ((k / s) * c + ch) * s + k % s;  // k = n * S + spatial
    const acc_t gv = static_cast<acc_t>(g[i]);
    ag += gv;
    agx += gv * static_cast<acc_t>(x[i]);
  }
  ag = block_sum(ag);
  agx = block_sum(agx);  // (block_sum begins with a barrier: no other needed between the two)
  if (threadIdx.x == 0) {
    part_g[blockIdx.y * c + ch] = ag;
    part_gx[blockIdx.y * c + ch] = agx;
  }
}

template <int PRIOR, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
prior_terms_kernel(const scalar_t* __restrict__ z, acc_t* __restrict__ partial, int64_t cols, int64_t chunk) {
  const int64_t row = blockIdx.x;
  const int64_t start = blockIdx.y * chunk;
  const int64_t end = min(cols, start + chunk);
  const int64_t base = row * cols;
  const PriorConsts<acc_t> k(acc_t(0));
  acc_t acc = 0;
  for (int64_t i = base + start + threadIdx.x; i < base + end; i += kThreads)
    acc += prior_term<PRIOR, acc_t>(static_cast<acc_t>(z[i]), k);
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[row * gridDim.y + blockIdx.y] = acc;
}

template <int PRIOR, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
prior_grad_kernel(const acc_t* __restrict__ g, const scalar_t* __restrict__ z, scalar_t* __restrict__ dz,
                  int64_t cols, int64_t chunk) {
  const int64_t row = blockIdx.x;
  const int64_t start = blockIdx.y * chunk;
  const int64_t end = min(cols, start + chunk);
  const int64_t base = row * cols;
  const PriorConsts<acc_t> k(acc_t(0));
  const acc_t gr = g[row];
  for (int64_t i = base + start + threadIdx.x; i < base + end; i += kThreads)
    dz[i] = static_cast<scalar_t>(gr * prior_term_grad<PRIOR, acc_t>(static_cast<acc_t>(z[i]), k));
}

}  // namespace
}  // namespace fastgen
