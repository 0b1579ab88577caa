// CUDA launchers for the diffusion sampler family: add_noise / get_velocity, the DDPM / DDIM steps
// and the flow-matching (rectified-flow) Euler / Heun steps, flow_*_step, which are sampler
// steps like DDIM's, not normalizing flows (those are csrc/*/flow.*). Kernels in
// csrc/cuda/diffusion.cuh, math in csrc/common/diffusion.h, checks in csrc/common/diffusion_host.h.
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
#include "cuda/diffusion.cuh"

namespace fastgen {
namespace {

using namespace diffusion;

// A one-value index tensor (checked by check_denoise / check_flow_step): by value from host
// memory (its value range-checked there, no device sync) or read by the kernel from the sample's device.
Index make_index(const at::Tensor& index, const std::optional<int64_t>& host_value, at::Tensor& keep) {
  if (host_value.has_value()) return {nullptr, *host_value};
  keep = index.scalar_type() == at::kLong ? index : index.to(at::kLong);
  return {keep.const_data_ptr<int64_t>(), 0};
}

// A Philox seed: any 64-bit value (int64 bit pattern), by value from the host or read on the
// device (the sample's: check_denoise).
Index make_seed(const at::Tensor& seed, at::Tensor& keep) {
  if (seed.device().is_cpu()) return {nullptr, seed.item<int64_t>()};
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

at::Tensor mix_cuda(const at::Tensor& first_in, const at::Tensor& noise_in, const at::Tensor& timesteps_in,
                    const at::Tensor& table_in, bool velocity) {
  const MixPlan plan = check_mix(first_in, noise_in, timesteps_in, table_in, velocity);
  const char* first_name = plan.first_name;
  const int64_t rows = first_in.size(0);
  const auto guard = device_guard(first_in, first_name);
  const auto first = first_in.contiguous(), noise = noise_in.contiguous();
  auto out = at::empty_like(first, at::MemoryFormat::Contiguous);
  const int64_t n = first.numel();
  if (n == 0) return out;
  // host timesteps (range-checked, int64) are copied to the device; device ones are not
  // range-checked (a sync): the kernel gives NaN for a timestep out of range
  const auto t = plan.host_timesteps.defined() ? plan.host_timesteps.to(first.device())
                                               : timesteps_in.to(at::kLong).contiguous();
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

std::tuple<at::Tensor, at::Tensor> denoise_cuda(bool ddpm, const at::Tensor& m_in, const at::Tensor& x_in,
                                                const at::Tensor& noise_in, const at::Tensor& timestep,
                                                const at::Tensor& table_in, const at::Tensor& prev_table_in,
                                                const at::Tensor& threshold_in, const at::Tensor& uncond_in,
                                                double guidance, double eta, c10::string_view prediction_type,
                                                c10::string_view variance_type, bool clip, double clip_range,
                                                bool use_clipped, const std::optional<at::Tensor>& seed_in,
                                                int64_t seed_offset) {
  const DenoisePlan plan = check_denoise(ddpm, m_in, x_in, noise_in, timestep, table_in, prev_table_in,
                                         threshold_in, uncond_in, guidance, eta, prediction_type, variance_type,
                                         clip_range, seed_in, seed_offset);
  const bool guided = plan.guided, thresholding = plan.thresholding, has_noise = plan.has_noise,
             gen_noise = plan.gen_noise;
  const int prediction = plan.prediction, variance = plan.variance;
  at::Tensor keep, keep_seed;
  const Index t = make_index(timestep, plan.timestep, keep);
  // a host seed is passed by value, a device one read by the kernel (no sync); any int64 value
  const Index seed = gen_noise ? make_seed(*seed_in, keep_seed) : Index{nullptr, 0};
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

at::Tensor flow_cuda(const at::Tensor& v_in, const at::Tensor* v2_in, const at::Tensor& x_in,
                     const at::Tensor* noise_in, const at::Tensor& step_index, const at::Tensor& sigmas_in,
                     const at::Tensor* uncond_in, double guidance) {
  const FlowPlan plan = check_flow_step(v_in, v2_in, x_in, noise_in, step_index, sigmas_in, uncond_in, guidance);
  const bool stochastic = plan.stochastic, guided = plan.guided;
  at::Tensor keep;
  const Index i = make_index(step_index, plan.step_index, keep);
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
