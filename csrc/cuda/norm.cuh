#pragma once
// group_norm_silu kernels; math in csrc/common/norm.h, launchers in csrc/cuda/norm.cu.
// No ATen: the nvcc build and the cuda_emu build (csrc/emu/) compile this same source.
#include <cstdint>

#include "common/norm.h"
#include "cuda/kernel.h"
#include "cuda/reduce.cuh"

namespace fastgen {
namespace {  // internal linkage: only csrc/cuda/norm.cu includes this file

constexpr int kThreads = 256;

template <bool kAct, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
group_norm_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                          const scalar_t* __restrict__ b, scalar_t* __restrict__ y, acc_t* __restrict__ mean,
                          acc_t* __restrict__ rstd, int64_t groups, int64_t cg, int64_t hw, acc_t eps) {
  const int64_t t = blockIdx.x;
  const int64_t g = t % groups;
  const int64_t m = cg * hw;
  const scalar_t* xs = x + t * m;
  acc_t s = 0;
  for (int64_t i = threadIdx.x; i < m; i += kThreads) s += static_cast<acc_t>(xs[i]);
  const acc_t mu = reduce::broadcast_from_thread0(reduce::block_sum<kThreads>(s) / static_cast<acc_t>(m));
  s = 0;
  for (int64_t i = threadIdx.x; i < m; i += kThreads) {
    const acc_t d = static_cast<acc_t>(xs[i]) - mu;
    s += d * d;
  }
  const acc_t rs = reduce::broadcast_from_thread0(
      acc_t(1) / ::sqrt(reduce::block_sum<kThreads>(s) / static_cast<acc_t>(m) + eps));
  if (threadIdx.x == 0) {
    mean[t] = mu;
    rstd[t] = rs;
  }
  for (int64_t i = threadIdx.x; i < m; i += kThreads) {
    const int64_t c = g * cg + i / hw;
    const acc_t scale = rs * (w != nullptr ? static_cast<acc_t>(w[c]) : acc_t(1));
    const acc_t shift = (b != nullptr ? static_cast<acc_t>(b[c]) : acc_t(0)) - mu * scale;
    acc_t o = static_cast<acc_t>(xs[i]) * scale + shift;
    if constexpr (kAct) o = act_forward<Act::kSilu>(o, acc_t(0));
    y[t * m + i] = static_cast<scalar_t>(o);
  }
}

template <bool kAct, typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t group_norm_gy(scalar_t g, acc_t y) {
  acc_t gy = static_cast<acc_t>(g);
  if constexpr (kAct) gy *= act_slope<Act::kSilu>(y, acc_t(0));
  return gy;
}

template <bool kAct, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
group_norm_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                           const scalar_t* __restrict__ w, const scalar_t* __restrict__ b,
                           const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                           scalar_t* __restrict__ dx, acc_t* __restrict__ sa, acc_t* __restrict__ sb,
                           int64_t groups, int64_t cg, int64_t hw) {
  const int64_t t = blockIdx.x;
  const int64_t g = t % groups;
  const int64_t m = cg * hw;
  const scalar_t* xs = x + t * m;
  const scalar_t* gs = grad + t * m;
  const acc_t mu = mean[t], rs = rstd[t];
  acc_t s1 = 0, s2 = 0;  // meaningful in thread 0
  for (int64_t cl = 0; cl < cg; ++cl) {
    const int64_t c = g * cg + cl;
    const acc_t wc = w != nullptr ? static_cast<acc_t>(w[c]) : acc_t(1);
    const acc_t scale = rs * wc, shift = (b != nullptr ? static_cast<acc_t>(b[c]) : acc_t(0)) - mu * scale;
    acc_t a = 0, bs = 0;
    for (int64_t i = cl * hw + threadIdx.x; i < (cl + 1) * hw; i += kThreads) {
      const acc_t xv = static_cast<acc_t>(xs[i]);
      const acc_t gy = group_norm_gy<kAct, scalar_t, acc_t>(gs[i], xv * scale + shift);
      a += gy * (xv - mu);
      bs += gy;
    }
    a = reduce::block_sum<kThreads>(a);
    bs = reduce::block_sum<kThreads>(bs);
    if (threadIdx.x == 0) {
      sa[t * cg + cl] = a;
      sb[t * cg + cl] = bs;
      s1 += wc * bs;
      s2 += wc * rs * a;
    }
  }
  acc_t k1, k2;
  group_norm_dx_coefs<acc_t>(rs, s1, s2, static_cast<acc_t>(m), &k1, &k2);
  k1 = reduce::broadcast_from_thread0(k1);
  k2 = reduce::broadcast_from_thread0(k2);
  for (int64_t i = threadIdx.x; i < m; i += kThreads) {
    const int64_t c = g * cg + i / hw;
    const acc_t wc = w != nullptr ? static_cast<acc_t>(w[c]) : acc_t(1);
    const acc_t scale = rs * wc, shift = (b != nullptr ? static_cast<acc_t>(b[c]) : acc_t(0)) - mu * scale;
    const acc_t xv = static_cast<acc_t>(xs[i]);
    const acc_t gy = group_norm_gy<kAct, scalar_t, acc_t>(gs[i], xv * scale + shift);
    dx[t * m + i] = static_cast<scalar_t>(scale * gy + k1 * (xv - mu) + k2);
  }
}

}  // namespace
}  // namespace fastgen
