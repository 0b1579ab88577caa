#pragma once
// GAN / SimCLR family kernels (bias_act, group_norm_silu, the info_nce_loss tile epilogues); math
// in csrc/common/gan.h, launchers in csrc/cuda/gan.cu.
// No ATen: the nvcc build and the cuda_emu build (csrc/emu/) compile this same source.
#include <cstdint>
#include <limits>

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

template <typename acc_t>
__device__ __forceinline__ acc_t broadcast_from_thread0(acc_t v) {
  __shared__ acc_t slot;
  if (threadIdx.x == 0) slot = v;
  __syncthreads();
  v = slot;
  __syncthreads();
  return v;
}

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
  const acc_t mu = broadcast_from_thread0(block_sum(s) / static_cast<acc_t>(m));
  s = 0;
  for (int64_t i = threadIdx.x; i < m; i += kThreads) {
    const acc_t d = static_cast<acc_t>(xs[i]) - mu;
    s += d * d;
  }
  const acc_t rs = broadcast_from_thread0(acc_t(1) / ::sqrt(block_sum(s) / static_cast<acc_t>(m) + eps));
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
    a = block_sum(a);
    bs = block_sum(bs);
    if (threadIdx.x == 0) {
      sa[t * cg + cl] = a;
      sb[t * cg + cl] = bs;
      s1 += wc * bs;
      s2 += wc * rs * a;
    }
  }
  acc_t k1, k2;
  group_norm_dx_coefs<acc_t>(rs, s1, s2, static_cast<acc_t>(m), &k1, &k2);
  k1 = broadcast_from_thread0(k1);
  k2 = broadcast_from_thread0(k2);
  for (int64_t i = threadIdx.x; i < m; i += kThreads) {
    const int64_t c = g * cg + i / hw;
    const acc_t wc = w != nullptr ? static_cast<acc_t>(w[c]) : acc_t(1);
    const acc_t scale = rs * wc, shift = (b != nullptr ? static_cast<acc_t>(b[c]) : acc_t(0)) - mu * scale;
    const acc_t xv = static_cast<acc_t>(xs[i]);
    const acc_t gy = group_norm_gy<kAct, scalar_t, acc_t>(gs[i], xv * scale + shift);
    dx[t * m + i] = static_cast<scalar_t>(scale * gy + k1 * (xv - mu) + k2);
  }
}

template <typename T>
__device__ __forceinline__ T block_max(T v) {
  return reduce::block_max<kThreads>(v);  // csrc/cuda/reduce.cuh: the contract
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
info_nce_lse_kernel(const T* __restrict__ s, T* __restrict__ running, int64_t cols) {
  const T* row = s + blockIdx.x * cols;
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t j = threadIdx.x; j < cols; j += kThreads) mx = max(mx, row[j]);
  mx = broadcast_from_thread0(block_max(mx));
  const T hi = max(mx, running[blockIdx.x]);
  if (hi == -std::numeric_limits<T>::infinity()) return;
  T sum = 0;
  for (int64_t j = threadIdx.x; j < cols; j += kThreads) sum += fexp(row[j] - hi);
  sum = block_sum(sum);
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
