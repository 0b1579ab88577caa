// CUDA kernels for the diffusion family (math in csrc/common/diffusion.h).
// One grid-stride elementwise launch per call. The step's scalars are gathered by every thread
// from the schedule tables in device memory, indexed by a timestep read from a device pointer
// (graph-replayable) or passed by value from a host tensor: no host-device sync.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>

#include <optional>
#include <string>

#include "common/checks.h"
#include "common/dispatch.h"
#include "common/diffusion.h"
#include "common/diffusion_host.h"
#include "common/philox.h"
#include "cuda/device_guard.h"
#include "cuda/launch.h"

namespace fastgen {
namespace {

using namespace diffusion;

constexpr int kThreads = 256;

// A 0-d index: device pointer (nullptr when the value came from the host) or value.
struct Index {
  const int64_t* ptr;
  int64_t value;
  __device__ __forceinline__ int64_t get() const { return ptr ? *ptr : value; }
};

// A one-value index tensor (checked by check_denoise / check_flow_step): by value from host
// memory (range-checked, no device sync) or read by the kernel from the sample's device.
Index make_index(const at::Tensor& index, const at::Tensor& sample, int64_t upper, const char* name,
                 at::Tensor& keep) {
  if (index.device().is_cpu()) return {nullptr, host_index_value(index, upper, name)};
  check_same_device(sample, "sample", index, name);
  keep = index.scalar_type() == at::kLong ? index : index.to(at::kLong);
  return {keep.const_data_ptr<int64_t>(), 0};
}

// A Philox seed: any 64-bit value (int64 bit pattern), by value from the host or read on the device.
Index make_seed(const at::Tensor& seed, const at::Tensor& sample, at::Tensor& keep) {
  if (seed.device().is_cpu()) return {nullptr, seed.item<int64_t>()};
  check_same_device(sample, "sample", seed, "seed");
  keep = seed.scalar_type() == at::kLong ? seed.reshape({}) : seed.reshape({}).to(at::kLong);
  return {keep.const_data_ptr<int64_t>(), 0};
}

// Tables are read in the math type; a table of another float type is converted (a tiny copy,
// only for unusual dtype pairs such as fp64 samples with the usual fp32 schedule).
at::Tensor table_as(const at::Tensor& table, at::ScalarType t) {
  return table.scalar_type() == t ? table.contiguous() : table.to(t).contiguous();
}

unsigned blocks_for(int64_t n) {
  const int64_t max_blocks = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min((n + kThreads - 1) / kThreads, max_blocks)));
}

// -- add_noise / get_velocity -------------------------------------------------------------------

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

at::Tensor mix_cuda(const at::Tensor& first_in, const at::Tensor& noise_in, const at::Tensor& timesteps_in,
                    const at::Tensor& table_in, bool velocity) {
  const char* first_name = check_mix(first_in, noise_in, timesteps_in, table_in, velocity);
  const int64_t rows = first_in.size(0);
  const auto guard = device_guard(first_in, first_name);
  const auto first = first_in.contiguous(), noise = noise_in.contiguous();
  auto out = at::empty_like(first, at::MemoryFormat::Contiguous);
  const int64_t n = first.numel();
  if (n == 0) return out;
  const auto t = timesteps_in.to(at::kLong).contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTGEN_DISPATCH_FLOATS(first.scalar_type(), "mix_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto table = table_as(table_in, c10::CppTypeToScalarType<acc_t>::value);
    FASTGEN_LAUNCH(blocks_for(n), kThreads, 0, stream, mix_kernel<scalar_t, acc_t>)(
        first.const_data_ptr<scalar_t>(), noise.const_data_ptr<scalar_t>(), t.const_data_ptr<int64_t>(),
        t.numel() == 1 ? 0 : 1, table.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), n,
        n / rows, table.size(0), velocity);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// -- DDPM / DDIM ----------------------------------------------------------------------------------

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

std::tuple<at::Tensor, at::Tensor> denoise_cuda(bool ddpm, const at::Tensor& m_in, const at::Tensor& x_in,
                                                const at::Tensor& noise_in, const at::Tensor& timestep,
                                                const at::Tensor& table_in, const at::Tensor& prev_table_in,
                                                const at::Tensor& threshold_in, const at::Tensor& uncond_in,
                                                double guidance, double eta, int prediction,
                                                int variance, bool clip, double clip_range, bool use_clipped,
                                                const std::optional<at::Tensor>& seed_in, int64_t seed_offset) {
  const DenoisePlan plan = check_denoise(ddpm, m_in, x_in, noise_in, timestep, table_in, prev_table_in,
                                         threshold_in, uncond_in, guidance, eta, clip_range, seed_in, seed_offset);
  const bool guided = plan.guided, thresholding = plan.thresholding, has_noise = plan.has_noise,
             gen_noise = plan.gen_noise;
  at::Tensor keep, keep_seed;
  const Index t = make_index(timestep, x_in, table_in.size(0), "timestep", keep);
  // a host seed is passed by value, a device one read by the kernel (no sync); any int64 value
  const Index seed = gen_noise ? make_seed(*seed_in, x_in, keep_seed) : Index{nullptr, 0};
  const auto guard = device_guard(x_in, "sample");
  const auto m = m_in.contiguous(), x = x_in.contiguous();
  const auto z = has_noise && !gen_noise ? noise_in.contiguous() : x;
  const auto u = guided ? uncond_in.contiguous() : m;
  auto prev = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto x0 = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t n = x.numel();
  if (n == 0) return {prev, x0};
  const DenoiseConfig cfg{ddpm, clip, use_clipped, prediction, variance};
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "denoise_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    const auto table = table_as(table_in, acc), prev_table = table_as(prev_table_in, acc);
    const auto thr = thresholding ? table_as(threshold_in, acc) : table;
    const int64_t cols = n / x.size(0);
    auto launch = [&](auto thr_flag, auto noise_flag) {
      FASTGEN_LAUNCH(blocks_for(n), kThreads, 0, stream, denoise_kernel<scalar_t, acc_t, decltype(thr_flag)::value, decltype(noise_flag)::value>)(
              m.const_data_ptr<scalar_t>(), guided ? u.const_data_ptr<scalar_t>() : nullptr,
              static_cast<acc_t>(guidance), x.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), seed,
              seed_offset, t,
              table.const_data_ptr<acc_t>(), prev_table.const_data_ptr<acc_t>(), thr.const_data_ptr<acc_t>(),
              prev.mutable_data_ptr<scalar_t>(), x0.mutable_data_ptr<scalar_t>(), n, cols,
              1.0 / static_cast<double>(cols), static_cast<acc_t>(eta), static_cast<acc_t>(clip_range), cfg);
    };
    using None = std::integral_constant<int, 0>;
    using Passed = std::integral_constant<int, 1>;
    using Philox = std::integral_constant<int, 2>;
    auto with_noise = [&](auto thr_flag) {
      if (gen_noise) launch(thr_flag, Philox{});
      else if (has_noise) launch(thr_flag, Passed{});
      else launch(thr_flag, None{});
    };
    thresholding ? with_noise(std::true_type{}) : with_noise(std::false_type{});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {prev, x0};
}

// -- flow matching -----------------------------------------------------------------------------------

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

at::Tensor flow_cuda(const at::Tensor& v_in, const at::Tensor* v2_in, const at::Tensor& x_in,
                     const at::Tensor* noise_in, const at::Tensor& step_index, const at::Tensor& sigmas_in,
                     const at::Tensor* uncond_in, double guidance) {
  const FlowPlan plan = check_flow_step(v_in, v2_in, x_in, noise_in, step_index, sigmas_in, uncond_in, guidance);
  const bool stochastic = plan.stochastic, guided = plan.guided;
  at::Tensor keep;
  const Index i = make_index(step_index, x_in, sigmas_in.size(0) - 1, "step_index", keep);
  const auto guard = device_guard(x_in, "sample");
  const auto v = v_in.contiguous(), x = x_in.contiguous();
  const auto w = v2_in ? v2_in->contiguous() : (stochastic ? noise_in->contiguous() : x);
  const auto un = guided ? uncond_in->contiguous() : v;
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t n = x.numel();
  if (n == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "flow_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto sigmas = table_as(sigmas_in, c10::CppTypeToScalarType<acc_t>::value);
    FASTGEN_LAUNCH(blocks_for(n), kThreads, 0, stream, flow_kernel<scalar_t, acc_t>)(
        v.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        guided ? un.const_data_ptr<scalar_t>() : nullptr, static_cast<acc_t>(guidance), i,
        sigmas.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), n, v2_in != nullptr, stochastic);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

FASTGEN_CUDA_LIBRARY_IMPL(m) {
  m.impl("add_noise_native", &diffusion::add_noise<mix_cuda>);
  m.impl("get_velocity_native", &diffusion::get_velocity<mix_cuda>);
  m.impl("ddim_step_native", &diffusion::ddim_step<denoise_cuda>);
  m.impl("ddpm_step_native", &diffusion::ddpm_step<denoise_cuda>);
  m.impl("flow_euler_step_native", &diffusion::flow_euler_step<flow_cuda>);
  m.impl("flow_heun_step_native", &diffusion::flow_heun_step<flow_cuda>);
}

}  // namespace fastgen
