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
#include "common/diffusion.h"
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

Index make_index(const at::Tensor& index, const at::Tensor& sample, int64_t upper, const char* name,
                 at::Tensor& keep) {
  TORCH_CHECK_TYPE(at::isIntegralType(index.scalar_type(), false), "fastgen: ", name,
                   " must be an integer tensor, got ", index.scalar_type());
  TORCH_CHECK_VALUE(index.numel() == 1, "fastgen: ", name, " must hold one value, got shape ", index.sizes());
  if (index.device().is_cpu()) {
    const int64_t v = index.item<int64_t>();  // host memory: no device sync
    TORCH_CHECK_VALUE(v >= 0 && v < upper, "fastgen: ", name, " must be in [0, ", upper, "), got ", v);
    return {nullptr, v};
  }
  check_same_device(sample, "sample", index, name);
  keep = index.scalar_type() == at::kLong ? index : index.to(at::kLong);
  return {keep.const_data_ptr<int64_t>(), 0};
}

// A Philox seed: any 64-bit value (int64 bit pattern), by value from the host or read on the device.
Index make_seed(const at::Tensor& seed, const at::Tensor& sample, at::Tensor& keep) {
  TORCH_CHECK_TYPE(at::isIntegralType(seed.scalar_type(), false), "fastgen: seed must be an integer tensor, got ",
                   seed.scalar_type());
  TORCH_CHECK_VALUE(seed.numel() == 1, "fastgen: seed must hold one value, got shape ", seed.sizes());
  if (seed.device().is_cpu()) return {nullptr, seed.item<int64_t>()};
  check_same_device(sample, "sample", seed, "seed");
  keep = seed.scalar_type() == at::kLong ? seed.reshape({}) : seed.reshape({}).to(at::kLong);
  return {keep.const_data_ptr<int64_t>(), 0};
}

void check_table(const at::Tensor& table, const at::Tensor& sample, const char* name, int64_t min_len) {
  TORCH_CHECK_TYPE(table.scalar_type() == at::kFloat || table.scalar_type() == at::kDouble,
                   "fastgen: ", name, " must be float32 or float64, got ", table.scalar_type());
  TORCH_CHECK_VALUE(table.dim() == 1 && table.size(0) >= min_len, "fastgen: ", name,
                    " must be a 1-D table with at least ", min_len, " entries, got ", table.sizes());
  check_same_device(sample, "sample", table, name);
}

// Tables are read in the math type; a table of another float type is converted (a tiny copy,
// only for unusual dtype pairs such as fp64 samples with the usual fp32 schedule).
at::Tensor table_as(const at::Tensor& table, at::ScalarType t) {
  return table.scalar_type() == t ? table.contiguous() : table.to(t).contiguous();
}

bool optional_like(const at::Tensor& t, const at::Tensor& sample, const char* name) {
  if (t.numel() == 0 && t.dim() == 1) return false;
  check_same_float_tensor(sample, "sample", t, name);
  return true;
}

int parse_prediction(const std::string& s) {
  if (s == "epsilon") return kEpsilon;
  if (s == "sample") return kSample;
  if (s == "v_prediction") return kVPrediction;
  TORCH_CHECK_VALUE(false, "fastgen: prediction_type must be one of epsilon, sample, v_prediction, got '", s, "'");
  return -1;
}

int parse_variance(const std::string& s) {
  if (s == "fixed_small") return kFixedSmall;
  if (s == "fixed_small_log") return kFixedSmallLog;
  if (s == "fixed_large") return kFixedLarge;
  if (s == "fixed_large_log") return kFixedLargeLog;
  TORCH_CHECK_VALUE(false, "fastgen: variance_type must be one of fixed_small, fixed_small_log, "
                    "fixed_large, fixed_large_log, got '", s, "'");
  return -1;
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
  const char* first_name = velocity ? "sample" : "original_samples";
  TORCH_CHECK_VALUE(first_in.dim() >= 1, "fastgen: ", first_name, " must have a leading batch dim");
  check_same_float_tensor(first_in, first_name, noise_in, "noise");
  check_table(table_in, first_in, "alphas_cumprod", 1);
  const int64_t rows = first_in.size(0);
  TORCH_CHECK_TYPE(at::isIntegralType(timesteps_in.scalar_type(), false),
                   "fastgen: timesteps must be an integer tensor, got ", timesteps_in.scalar_type());
  TORCH_CHECK_VALUE(timesteps_in.dim() <= 1 && (timesteps_in.numel() == rows || timesteps_in.numel() == 1),
                    "fastgen: timesteps must have shape (", rows, ",) or hold one value, got ",
                    timesteps_in.sizes());
  check_same_device(first_in, first_name, timesteps_in, "timesteps");
  const auto guard = device_guard(first_in, first_name);
  const auto first = first_in.contiguous(), noise = noise_in.contiguous();
  auto out = at::empty_like(first, at::MemoryFormat::Contiguous);
  const int64_t n = first.numel();
  if (n == 0) return out;
  const auto t = timesteps_in.to(at::kLong).contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "mix_cuda", [&] {
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

at::Tensor add_noise_cuda(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps,
                          const at::Tensor& alphas_cumprod) {
  return mix_cuda(x0, noise, timesteps, alphas_cumprod, false);
}

at::Tensor get_velocity_cuda(const at::Tensor& sample, const at::Tensor& noise, const at::Tensor& timesteps,
                             const at::Tensor& alphas_cumprod) {
  return mix_cuda(sample, noise, timesteps, alphas_cumprod, true);
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
  TORCH_CHECK_VALUE(x_in.dim() >= 1, "fastgen: sample must have a leading batch dim");
  check_same_float_tensor(x_in, "sample", m_in, "model_output");
  bool noise_given = optional_like(noise_in, x_in, "noise");
  const bool seeded = seed_in.has_value();
  if (seeded) {
    TORCH_CHECK_VALUE(!noise_given, "fastgen: pass either noise or seed (in-kernel noise), not both");
    TORCH_CHECK_VALUE(seed_offset >= 0, "fastgen: seed_offset must be >= 0, got ", seed_offset);
    noise_given = true;
  }
  const bool guided = optional_like(uncond_in, x_in, "model_output_uncond");
  check_table(table_in, x_in, "alphas_cumprod", 1);
  check_table(prev_table_in, x_in, "alphas_cumprod_prev", 1);
  TORCH_CHECK_VALUE(prev_table_in.size(0) == table_in.size(0),
                    "fastgen: alphas_cumprod_prev and alphas_cumprod differ in length");
  const bool thresholding = threshold_in.numel() > 0;
  if (thresholding) {
    TORCH_CHECK_VALUE(threshold_in.dim() == 1 && threshold_in.size(0) == x_in.size(0),
                      "fastgen: threshold must have shape (", x_in.size(0), ",), got ", threshold_in.sizes());
    check_same_device(x_in, "sample", threshold_in, "threshold");
  }
  TORCH_CHECK_VALUE(clip_range > 0, "fastgen: clip_sample_range must be > 0");
  TORCH_CHECK_VALUE(std::isfinite(guidance), "fastgen: guidance_scale must be finite, got ", guidance);
  TORCH_CHECK_VALUE(eta >= 0, "fastgen: eta must be >= 0");
  TORCH_CHECK_VALUE(ddpm || eta == 0 || noise_given, "fastgen: noise is required when eta > 0 (or a seed for in-kernel noise)");
  const bool has_noise = noise_given && (ddpm || eta > 0);
  const bool gen_noise = seeded && has_noise;
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "denoise_cuda", [&] {
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

std::tuple<at::Tensor, at::Tensor> ddim_step_cuda(const at::Tensor& model_output, const at::Tensor& sample,
                                                  const at::Tensor& noise, const at::Tensor& timestep,
                                                  const at::Tensor& alphas_cumprod,
                                                  const at::Tensor& alphas_cumprod_prev,
                                                  const at::Tensor& threshold, const at::Tensor& uncond,
                                                  double guidance_scale, double eta,
                                                  c10::string_view prediction_type, bool clip_sample,
                                                  double clip_sample_range, bool use_clipped_model_output,
                                                  const std::optional<at::Tensor>& seed, int64_t seed_offset) {
  return denoise_cuda(false, model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev,
                      threshold, uncond, guidance_scale, eta, parse_prediction(std::string(prediction_type)), kFixedSmall,
                      clip_sample, clip_sample_range, use_clipped_model_output, seed, seed_offset);
}

std::tuple<at::Tensor, at::Tensor> ddpm_step_cuda(const at::Tensor& model_output, const at::Tensor& sample,
                                                  const at::Tensor& noise, const at::Tensor& timestep,
                                                  const at::Tensor& alphas_cumprod,
                                                  const at::Tensor& alphas_cumprod_prev,
                                                  const at::Tensor& threshold, const at::Tensor& uncond,
                                                  double guidance_scale, c10::string_view prediction_type,
                                                  c10::string_view variance_type, bool clip_sample,
                                                  double clip_sample_range, const std::optional<at::Tensor>& seed,
                                                  int64_t seed_offset) {
  return denoise_cuda(true, model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev,
                      threshold, uncond, guidance_scale, 0.0, parse_prediction(std::string(prediction_type)),
                      parse_variance(std::string(variance_type)), clip_sample, clip_sample_range, false, seed,
                      seed_offset);
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
                     const at::Tensor* uncond_in = nullptr, double guidance = 1.0) {
  TORCH_CHECK_VALUE(x_in.dim() >= 1, "fastgen: sample must have a leading batch dim");
  check_same_float_tensor(x_in, "sample", v_in, "model_output");
  if (v2_in) check_same_float_tensor(x_in, "sample", *v2_in, "model_output_next");
  const bool stochastic = noise_in && optional_like(*noise_in, x_in, "noise");
  const bool guided = uncond_in && optional_like(*uncond_in, x_in, "model_output_uncond");
  TORCH_CHECK_VALUE(std::isfinite(guidance), "fastgen: guidance_scale must be finite, got ", guidance);
  check_table(sigmas_in, x_in, "sigmas", 2);
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "flow_cuda", [&] {
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

at::Tensor flow_euler_step_cuda(const at::Tensor& model_output, const at::Tensor& sample,
                                const at::Tensor& noise, const at::Tensor& step_index, const at::Tensor& sigmas,
                                const at::Tensor& model_output_uncond, double guidance_scale) {
  return flow_cuda(model_output, nullptr, sample, &noise, step_index, sigmas, &model_output_uncond,
                   guidance_scale);
}

at::Tensor flow_heun_step_cuda(const at::Tensor& model_output, const at::Tensor& model_output_next,
                               const at::Tensor& sample, const at::Tensor& step_index, const at::Tensor& sigmas) {
  return flow_cuda(model_output, &model_output_next, sample, nullptr, step_index, sigmas);
}

}  // namespace

FASTGEN_CUDA_LIBRARY_IMPL(m) {
  m.impl("add_noise_native", &add_noise_cuda);
  m.impl("get_velocity_native", &get_velocity_cuda);
  m.impl("ddim_step_native", &ddim_step_cuda);
  m.impl("ddpm_step_native", &ddpm_step_cuda);
  m.impl("flow_euler_step_native", &flow_euler_step_cuda);
  m.impl("flow_heun_step_native", &flow_heun_step_cuda);
}

}  // namespace fastgen
