#pragma once
// Host-side pieces of the diffusion sampler ops (add_noise / get_velocity, DDPM / DDIM steps and
// the flow-matching Euler / Heun steps, flow_*_step: a rectified-flow sampler step, not a
// normalizing flow, which is csrc/*/flow.*), shared by the CPU and CUDA entry points: the argument
// checks and the parsing of the string options. The math is common/diffusion.h.
// The checks mirror fastgen/ops/diffusion.py's (_check_mix, _check_common_step, _check_ddim,
// _check_ddpm, _check_flow_euler, _check_flow_heun) check for check, in the same order, with the
// same exception type and the same words (issue 18): a direct torch.ops.fastgen.*_native caller,
// and the cpu backend of the ops registered with native_checks=True, gets the Python error.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>

#include "common/checks.h"
#include "common/diffusion.h"

namespace fastgen {
namespace diffusion {

// The string options: -1 for an unknown one (reported by check_denoise, in the Python check's order).
inline int parse_prediction(c10::string_view s) {
  if (s == "epsilon") return kEpsilon;
  if (s == "sample") return kSample;
  if (s == "v_prediction") return kVPrediction;
  return -1;
}

inline int parse_variance(c10::string_view s) {
  if (s == "fixed_small") return kFixedSmall;
  if (s == "fixed_small_log") return kFixedSmallLog;
  if (s == "fixed_large") return kFixedLarge;
  if (s == "fixed_large_log") return kFixedLargeLog;
  return -1;
}

// _checks.float_tensor + _checks.batched
inline void check_batched_float(const at::Tensor& t, const char* name) {
  check_float_tensor(t, name);
  TORCH_CHECK_VALUE(t.dim() >= 1, std::string("fastgen: ") + name + " must have a leading batch dim, got a 0-d tensor");
}

// _check_table: a schedule table (alphas_cumprod, sigmas, ...), 1-D float32/float64 on the sample's device.
inline void check_table(const at::Tensor& table, const at::Tensor& sample, const char* name, int64_t min_len) {
  TORCH_CHECK_TYPE(table.scalar_type() == at::kFloat || table.scalar_type() == at::kDouble,
                   std::string("fastgen: ") + name + " must be float32 or float64, got " +
                   py_dtype(table.scalar_type()));
  TORCH_CHECK_VALUE(table.dim() == 1 && table.size(0) >= min_len,
                    std::string("fastgen: ") + name + " must be a 1-D table with at least " + py_int(min_len) +
                    " entries, got shape " + py_shape(table.sizes()));
  check_same_device(sample, "sample", table, name);
}

// _check_optional_like: an optional tensor argument passed as an empty 1-D tensor when absent;
// present: like the sample.
inline bool optional_like(const at::Tensor& t, const at::Tensor& sample, const char* name) {
  if (t.numel() == 0 && t.dim() == 1) return false;
  check_same_float_tensor(sample, "sample", t, name);
  return true;
}

// The dtype, size and device checks of a one-value integer tensor (a timestep, a step index, a
// seed): on the host or on the sample's device.
inline void check_one_value(const at::Tensor& index, const at::Tensor& sample, const char* name) {
  TORCH_CHECK_TYPE(is_index_dtype(index.scalar_type()), std::string("fastgen: ") + name +
                   " must be an integer tensor (or a Python int), got " + py_dtype(index.scalar_type()));
  TORCH_CHECK_VALUE(index.numel() == 1, std::string("fastgen: ") + name + " must hold one value, got shape " +
                    py_shape(index.sizes()));
  TORCH_CHECK_VALUE(index.device() == sample.device() || index.device().is_cpu(),
                    std::string("fastgen: ") + name + " is on " + py_device(index.device()) +
                    "; expected the host or " + py_device(sample.device()));
}

// _check_index: as check_one_value; a host index's value (read without a device sync) must lie in
// [0, upper) and is returned; a device index (read by the CUDA kernel) gives nullopt.
inline std::optional<int64_t> check_index(const at::Tensor& index, const at::Tensor& sample, const char* name,
                                          int64_t upper) {
  check_one_value(index, sample, name);
  if (!index.device().is_cpu()) return std::nullopt;
  const int64_t v = index.item<int64_t>();
  TORCH_CHECK_VALUE(v >= 0 && v < upper, std::string("fastgen: ") + name + " must be in [0, " + py_int(upper) +
                    "), got " + py_int(v));
  return v;
}

// add_noise (velocity false) / get_velocity, checked as _check_mix: the name of the first
// argument, and host timesteps as int64 (range-checked; undefined for device timesteps, which
// are not range-checked: a sync; the CUDA kernel gives NaN for a timestep out of range).
struct MixPlan {
  const char* first_name;
  at::Tensor host_timesteps;
};

inline MixPlan check_mix(const at::Tensor& first, const at::Tensor& noise, const at::Tensor& timesteps,
                         const at::Tensor& table, bool velocity) {
  MixPlan plan{velocity ? "sample" : "original_samples", at::Tensor()};
  const char* first_name = plan.first_name;
  check_batched_float(first, first_name);
  check_same_float_tensor(first, first_name, noise, "noise");
  TORCH_CHECK_TYPE(is_index_dtype(timesteps.scalar_type()),
                   std::string("fastgen: timesteps must be an integer tensor, got ") +
                   py_dtype(timesteps.scalar_type()));
  const int64_t rows = first.size(0);
  TORCH_CHECK_VALUE(timesteps.dim() <= 1 && (timesteps.numel() == rows || timesteps.numel() == 1),
                    "fastgen: timesteps must have shape (" + py_int(rows) + ",) or hold one value, got " +
                    py_shape(timesteps.sizes()));
  check_same_device(first, first_name, timesteps, "timesteps");
  check_table(table, first, "alphas_cumprod", 1);
  if (timesteps.device().is_cpu()) {  // _checks.in_range: the lowest value if below 0, else the highest
    plan.host_timesteps = timesteps.to(at::kLong).contiguous();
    const int64_t n = plan.host_timesteps.numel();
    if (n) {
      const int64_t* p = plan.host_timesteps.const_data_ptr<int64_t>();
      int64_t lo = p[0], hi = p[0];
      for (int64_t i = 1; i < n; ++i) {
        lo = p[i] < lo ? p[i] : lo;
        hi = p[i] > hi ? p[i] : hi;
      }
      const int64_t upper = table.size(0);
      TORCH_CHECK_VALUE(lo >= 0 && hi < upper, "fastgen: timesteps must be in [0, " + py_int(upper) + "), got " +
                        py_int(lo < 0 ? lo : hi));
    }
  }
  return plan;
}

// What a DDPM / DDIM call asked for, once its arguments are checked.
struct DenoisePlan {
  bool guided;        // model_output_uncond given: classifier-free guidance
  bool thresholding;  // per-sample dynamic threshold given
  bool has_noise;     // the step adds noise (DDPM, or DDIM with eta > 0)
  bool gen_noise;     // ... and it is drawn in the kernel from the seed (Philox)
  int prediction;     // Prediction
  int variance;       // Variance (kFixedSmall for DDIM)
  std::optional<int64_t> timestep;  // a host timestep's value; nullopt: read by the CUDA kernel
};

// Every check of the DDPM / DDIM entry points, as _check_ddpm / _check_ddim.
inline DenoisePlan check_denoise(bool ddpm, const at::Tensor& m, const at::Tensor& x, const at::Tensor& noise,
                                 const at::Tensor& timestep, const at::Tensor& table, const at::Tensor& prev_table,
                                 const at::Tensor& threshold, const at::Tensor& uncond, double guidance,
                                 double eta, c10::string_view prediction_type, c10::string_view variance_type,
                                 double clip_range, const std::optional<at::Tensor>& seed, int64_t seed_offset) {
  DenoisePlan plan{};
  // _check_sample
  check_batched_float(x, "sample");
  check_same_float_tensor(x, "sample", m, "model_output");
  // _check_guidance
  plan.guided = optional_like(uncond, x, "model_output_uncond");
  TORCH_CHECK_VALUE(std::isfinite(guidance), "fastgen: guidance_scale must be finite, got " + py_float(guidance));
  bool noise_given = optional_like(noise, x, "noise");
  const bool seeded = seed.has_value();
  if (seeded) {  // _check_seed; in-kernel noise: element i gets philox::randn(seed, seed_offset + i) (common/philox.h)
    check_one_value(*seed, x, "seed");
    TORCH_CHECK_VALUE(seed_offset >= 0 && seed_offset < (int64_t(1) << 62),
                      "fastgen: seed_offset must be in [0, 2**62), got " + py_int(seed_offset));
    TORCH_CHECK_VALUE(!noise_given, "fastgen: pass either noise or seed (in-kernel noise), not both");
    noise_given = true;
  }
  check_table(table, x, "alphas_cumprod", 1);
  check_table(prev_table, x, "alphas_cumprod_prev", 1);
  TORCH_CHECK_VALUE(prev_table.sizes() == table.sizes(), "fastgen: alphas_cumprod_prev has shape " +
                    py_shape(prev_table.sizes()) + " but alphas_cumprod has " + py_shape(table.sizes()));
  plan.timestep = check_index(timestep, x, "timestep", table.size(0));
  if (threshold.numel() || threshold.dim() != 1) check_per_sample(x, "sample", threshold, "threshold");
  plan.thresholding = threshold.numel() > 0;
  plan.prediction = parse_prediction(prediction_type);
  TORCH_CHECK_VALUE(plan.prediction >= 0,
                    "fastgen: prediction_type must be one of ('epsilon', 'sample', 'v_prediction'), got " +
                    py_str(prediction_type));
  TORCH_CHECK_VALUE(clip_range > 0, "fastgen: clip_sample_range must be > 0, got " + py_float(clip_range));
  if (ddpm) {
    plan.variance = parse_variance(variance_type);
    TORCH_CHECK_VALUE(plan.variance >= 0, "fastgen: variance_type must be one of ('fixed_small', "
                      "'fixed_small_log', 'fixed_large', 'fixed_large_log'), got " + py_str(variance_type));
  } else {
    plan.variance = kFixedSmall;
    TORCH_CHECK_VALUE(eta >= 0, "fastgen: eta must be >= 0, got " + py_float(eta));
    TORCH_CHECK_VALUE(eta == 0 || noise_given, "fastgen: noise (like sample) or a seed / generator for in-kernel "
                      "noise is required when eta > 0");
  }
  plan.has_noise = noise_given && (ddpm || eta > 0);
  plan.gen_noise = seeded && plan.has_noise;
  return plan;
}

// What a flow-matching step call asked for, once its arguments are checked.
struct FlowPlan {
  bool stochastic;  // noise given (Euler)
  bool guided;      // model_output_uncond given (Euler)
  std::optional<int64_t> step_index;  // a host step index's value; nullopt: read by the CUDA kernel
};

// Every check of flow_euler_step (v2 nullptr) / flow_heun_step (noise and uncond nullptr), as
// _check_flow_euler / _check_flow_heun.
inline FlowPlan check_flow_step(const at::Tensor& v, const at::Tensor* v2, const at::Tensor& x,
                                const at::Tensor* noise, const at::Tensor& step_index, const at::Tensor& sigmas,
                                const at::Tensor* uncond, double guidance) {
  FlowPlan plan{};
  check_batched_float(x, "sample");
  check_same_float_tensor(x, "sample", v, "model_output");
  if (v2) check_same_float_tensor(x, "sample", *v2, "model_output_next");
  if (uncond) {
    plan.guided = optional_like(*uncond, x, "model_output_uncond");
    TORCH_CHECK_VALUE(std::isfinite(guidance), "fastgen: guidance_scale must be finite, got " + py_float(guidance));
  }
  plan.stochastic = noise && optional_like(*noise, x, "noise");
  check_table(sigmas, x, "sigmas", 2);
  plan.step_index = check_index(step_index, x, "step_index", sigmas.size(0) - 1);
  return plan;
}

// The op entry points over one backend's implementation (CPU or CUDA): the schemas' argument
// lists, spelled once. mix: add_noise (velocity false) / get_velocity.
using MixFn = at::Tensor (*)(const at::Tensor& first, const at::Tensor& noise, const at::Tensor& timesteps,
                             const at::Tensor& alphas_cumprod, bool velocity);

template <MixFn Mix>
at::Tensor add_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps,
                     const at::Tensor& alphas_cumprod) {
  return Mix(x0, noise, timesteps, alphas_cumprod, false);
}

template <MixFn Mix>
at::Tensor get_velocity(const at::Tensor& sample, const at::Tensor& noise, const at::Tensor& timesteps,
                        const at::Tensor& alphas_cumprod) {
  return Mix(sample, noise, timesteps, alphas_cumprod, true);
}

// DDPM (ddpm true) / DDIM step: prediction and variance parsed by check_denoise, in the Python
// check's order (DDIM passes "fixed_small", unchecked).
using DenoiseFn = std::tuple<at::Tensor, at::Tensor> (*)(
    bool ddpm, const at::Tensor& model_output, const at::Tensor& sample, const at::Tensor& noise,
    const at::Tensor& timestep, const at::Tensor& alphas_cumprod, const at::Tensor& alphas_cumprod_prev,
    const at::Tensor& threshold, const at::Tensor& uncond, double guidance, double eta,
    c10::string_view prediction_type, c10::string_view variance_type, bool clip, double clip_range,
    bool use_clipped, const std::optional<at::Tensor>& seed, int64_t seed_offset);

template <DenoiseFn Denoise>
std::tuple<at::Tensor, at::Tensor> ddim_step(const at::Tensor& model_output, const at::Tensor& sample,
                                             const at::Tensor& noise, const at::Tensor& timestep,
                                             const at::Tensor& alphas_cumprod, const at::Tensor& alphas_cumprod_prev,
                                             const at::Tensor& threshold, const at::Tensor& uncond,
                                             double guidance_scale, double eta, c10::string_view prediction_type,
                                             bool clip_sample, double clip_sample_range, bool use_clipped_model_output,
                                             const std::optional<at::Tensor>& seed, int64_t seed_offset) {
  return Denoise(false, model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev, threshold, uncond,
                 guidance_scale, eta, prediction_type, "fixed_small", clip_sample, clip_sample_range,
                 use_clipped_model_output, seed, seed_offset);
}

template <DenoiseFn Denoise>
std::tuple<at::Tensor, at::Tensor> ddpm_step(const at::Tensor& model_output, const at::Tensor& sample,
                                             const at::Tensor& noise, const at::Tensor& timestep,
                                             const at::Tensor& alphas_cumprod, const at::Tensor& alphas_cumprod_prev,
                                             const at::Tensor& threshold, const at::Tensor& uncond,
                                             double guidance_scale, c10::string_view prediction_type,
                                             c10::string_view variance_type, bool clip_sample,
                                             double clip_sample_range, const std::optional<at::Tensor>& seed,
                                             int64_t seed_offset) {
  return Denoise(true, model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev, threshold, uncond,
                 guidance_scale, 0.0, prediction_type, variance_type, clip_sample,
                 clip_sample_range, false, seed, seed_offset);
}

// Flow-matching step: Euler (v2 nullptr; noise and uncond may be empty) or Heun (v2 given).
using FlowStepFn = at::Tensor (*)(const at::Tensor& v, const at::Tensor* v2, const at::Tensor& x,
                                  const at::Tensor* noise, const at::Tensor& step_index, const at::Tensor& sigmas,
                                  const at::Tensor* uncond, double guidance);

template <FlowStepFn Flow>
at::Tensor flow_euler_step(const at::Tensor& model_output, const at::Tensor& sample, const at::Tensor& noise,
                           const at::Tensor& step_index, const at::Tensor& sigmas,
                           const at::Tensor& model_output_uncond, double guidance_scale) {
  return Flow(model_output, nullptr, sample, &noise, step_index, sigmas, &model_output_uncond, guidance_scale);
}

template <FlowStepFn Flow>
at::Tensor flow_heun_step(const at::Tensor& model_output, const at::Tensor& model_output_next,
                          const at::Tensor& sample, const at::Tensor& step_index, const at::Tensor& sigmas) {
  return Flow(model_output, &model_output_next, sample, nullptr, step_index, sigmas, nullptr, 1.0);
}

}  // namespace diffusion
}  // namespace fastgen
