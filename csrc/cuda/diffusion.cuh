#pragma once
// Diffusion sampler kernels (add_noise / get_velocity, DDPM / DDIM, the flow-matching Euler /
// Heun steps); math in csrc/common/diffusion.h, launchers in csrc/cuda/diffusion.cu.
// No ATen: the nvcc build and the cuda_emu build (csrc/emu/) compile this same source.
#include <cstdint>

#include "common/diffusion.h"
#include "common/philox.h"
#include "cuda/kernel.h"

namespace fastgen {
namespace {  // internal linkage, as before the split: only csrc/cuda/diffusion.cu includes this file

using namespace diffusion;

constexpr int kThreads = 256;

// A 0-d index: device pointer (nullptr when the value came from the host) or value.
struct Index {
  const int64_t* ptr;
  int64_t value;
  __device__ __forceinline__ int64_t get() const { return ptr ? *ptr : value; }
};

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
mix_kernel(const scalar_t* __restrict__ first, const scalar_t* __restrict__ noise,
           const int64_t* __restrict__ timesteps, int64_t t_stride, const acc_t* __restrict__ table,
           scalar_t* __restrict__ out, int64_t n, int64_t cols, int64_t table_len, bool velocity) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // device timesteps are not range-checked on the host (a sync): out of range reads nothing, gives NaN
    const int64_t ti = timesteps[(i / cols) * t_stride];
    const acc_t a = ti >= 0 && ti < table_len ? table[ti] : static_cast<acc_t>(NAN);
    const acc_t sa = dsqrt(a), sb = dsqrt(acc_t(1) - a);
    const acc_t f = static_cast<acc_t>(first[i]), z = static_cast<acc_t>(noise[i]);
    out[i] = static_cast<scalar_t>(velocity ? sa * z - sb * f : sa * f + sb * z);
  }
}

struct DenoiseConfig {
  bool ddpm, clip, use_clipped;
  int prediction, variance;
};

// kNoise: 0 none, 1 passed (z), 2 in-kernel Philox randn(seed, seed_offset + i) (common/philox.h)
template <typename scalar_t, typename acc_t, bool kThreshold, int kNoise>
__global__ void __launch_bounds__(kThreads)
denoise_kernel(const scalar_t* __restrict__ m, const scalar_t* __restrict__ u, acc_t guidance,
               const scalar_t* __restrict__ x,
               const scalar_t* __restrict__ z, Index seed, int64_t seed_offset, Index timestep,
               const acc_t* __restrict__ table,
               const acc_t* __restrict__ prev_table, const acc_t* __restrict__ threshold,
               scalar_t* __restrict__ prev, scalar_t* __restrict__ x0_out, int64_t n, int64_t cols,
               double inv_cols, acc_t eta, acc_t clip_range, DenoiseConfig cfg) {
  const int64_t t = timestep.get();
  const StepCoeffs<acc_t> c = denoise_coeffs<acc_t>(cfg.ddpm, cfg.prediction, cfg.variance, table[t],
                                                    prev_table[t], t, eta, cfg.use_clipped);
  const uint64_t key = kNoise == 2 ? static_cast<uint64_t>(seed.get()) : 0;
  // Not unrolled: the unrolled loop's trip count is a 64-bit division whose result ptxas kept
  // in the stack frame across the division's call (sm_80, thresholded fp32); the loop is
  // memory-bound and the grid holds enough threads to keep loads in flight.
#pragma unroll 1
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t vm = static_cast<acc_t>(m[i]);
    if (u != nullptr) {  // classifier-free guidance: u + g (c - u)
      const acc_t vu = static_cast<acc_t>(u[i]);
      vm = vu + guidance * (vm - vu);
    }
    const acc_t vx = static_cast<acc_t>(x[i]);
    acc_t x0 = (c.X * vx + c.M * vm) * c.S;
    if (kThreshold) {
      // the sample's row without a 64-bit division: that is a call, and the values ptxas keeps
      // across it went to a stack frame (sm_80/90). i * (1 / cols) in double is within one of
      // i / cols for i < 2^53; the integer compares correct it.
      int64_t row = static_cast<int64_t>(static_cast<double>(i) * inv_cols);
      if (row * cols > i) --row; else if ((row + 1) * cols <= i) ++row;
      const acc_t s = threshold[row];
      x0 = clamp_range(x0, -s, s) / s;
    } else if (cfg.clip) {
      x0 = clamp_range(x0, -clip_range, clip_range);
    }
    acc_t out = c.A * x0 + c.B * vx;
    // c.uses_m, spelled from the kernel's parameters: a value computed in the kernel would live
    // across fp64's division call above and cost a stack frame
    if (!cfg.ddpm && !cfg.use_clipped) out += c.C * vm;
    if (kNoise == 1) out += c.D * static_cast<acc_t>(z[i]);
    if (kNoise == 2) out += c.D * static_cast<acc_t>(philox::randn(key, static_cast<uint64_t>(seed_offset + i)));
    prev[i] = static_cast<scalar_t>(out);
    x0_out[i] = static_cast<scalar_t>(x0);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
flow_kernel(const scalar_t* __restrict__ v, const scalar_t* __restrict__ w, const scalar_t* __restrict__ x,
            const scalar_t* __restrict__ uncond, acc_t guidance, Index step, const acc_t* __restrict__ sigmas,
            scalar_t* __restrict__ out, int64_t n, bool heun, bool stochastic) {
  const int64_t i0 = step.get();
  const FlowCoeffs<acc_t> c = flow_coeffs<acc_t>(sigmas[i0], sigmas[i0 + 1], heun, stochastic);
  const acc_t cw = heun ? c.Q2 : c.R;
  const bool use_w = heun || stochastic;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t vi = static_cast<acc_t>(v[i]);
    if (uncond != nullptr) {  // classifier-free guidance on the velocity
      const acc_t ui = static_cast<acc_t>(uncond[i]);
      vi = ui + guidance * (vi - ui);
    }
    acc_t r = c.P * static_cast<acc_t>(x[i]) + c.Q * vi;
    if (use_w) r += cw * static_cast<acc_t>(w[i]);
    out[i] = static_cast<scalar_t>(r);
  }
}

}  // namespace
}  // namespace fastgen
