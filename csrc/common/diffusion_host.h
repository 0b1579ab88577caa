#pragma once
// Host-side pieces of the diffusion sampler ops (add_noise / get_velocity, DDPM / DDIM steps and
// the flow-matching Euler / Heun steps, flow_*_step: a rectified-flow sampler step, not a
// normalizing flow, which is csrc/*/flow.*), shared by the CPU and CUDA entry points: the argument
// checks (direct torch.ops.fastgen.*_native callers get an error naming the argument) and the
// parsing of the string options. The math is common/diffusion.h.
#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <string>
#include <tuple>

#include "common/checks.h"
#include "common/diffusion.h"

namespace fastgen {
namespace diffusion {

inline int parse_prediction(c10::string_view s) {
  if (s == "epsilon") return kEpsilon;
  if (s == "sample") return kSample;
  if (s == "v_prediction") return kVPrediction;
  TORCH_CHECK_VALUE(false, "fastgen: prediction_type must be one of epsilon, sample, v_prediction, got '",
                    std::string(s), "'");
  return -1;
}

inline int parse_variance(c10::string_view s) {
  if (s == "fixed_small") return kFixedSmall;
  if (s == "fixed_small_log") return kFixedSmallLog;
  if (s == "fixed_large") return kFixedLarge;
  if (s == "fixed_large_log") return kFixedLargeLog;
  TORCH_CHECK_VALUE(false, "fastgen: variance_type must be one of fixed_small, fixed_small_log, "
                    "fixed_large, fixed_large_log, got '", std::string(s), "'");
  return -1;
}

// A schedule table (alphas_cumprod, sigmas, ...): 1-D float32/float64 on the sample's device.
inline void check_table(const at::Tensor& table, const at::Tensor& sample, const char* name, int64_t min_len) {
  TORCH_CHECK_TYPE(table.scalar_type() == at::kFloat || table.scalar_type() == at::kDouble,
                   "fastgen: ", name, " must be float32 or float64, got ", table.scalar_type());
  TORCH_CHECK_VALUE(table.dim() == 1 && table.size(0) >= min_len, "fastgen: ", name,
                    " must be a 1-D table with at least ", min_len, " entries, got ", table.sizes());
  check_same_device(sample, "sample", table, name);
}

// An optional tensor argument passed as an empty 1-D tensor when absent; present: like the sample.
inline bool optional_like(const at::Tensor& t, const at::Tensor& sample, const char* name) {
  if (t.numel() == 0 && t.dim() == 1) return false;
  check_same_float_tensor(sample, "sample", t, name);
  return true;
}

// A one-value integer tensor (a timestep, a step index, a seed).
inline void check_scalar_index(const at::Tensor& index, const char* name) {
  TORCH_CHECK_TYPE(at::isIntegralType(index.scalar_type(), /*includeBool=*/false), "fastgen: ", name,
                   " must be an integer tensor, got ", index.scalar_type());
  TORCH_CHECK_VALUE(index.numel() == 1, "fastgen: ", name, " must hold one value, got shape ", index.sizes());
}

// The value of a host-memory index tensor (no device sync), checked to lie in [0, upper).
inline int64_t host_index_value(const at::Tensor& index, int64_t upper, const char* name) {
  const int64_t v = index.item<int64_t>();
  TORCH_CHECK_VALUE(v >= 0 && v < upper, "fastgen: ", name, " must be in [0, ", upper, "), got ", v);
  return v;
}

// add_noise (velocity false) / get_velocity: returns the name of the first argument.
inline const char* check_mix(const at::Tensor& first, const at::Tensor& noise, const at::Tensor& timesteps,
                             const at::Tensor& table, bool velocity) {
  const char* first_name = velocity ? "sample" : "original_samples";
  TORCH_CHECK_VALUE(first.dim() >= 1, "fastgen: ", first_name, " must have a leading batch dim");
  check_same_float_tensor(first, first_name, noise, "noise");
  check_table(table, first, "alphas_cumprod", 1);
  const int64_t rows = first.size(0);
  TORCH_CHECK_TYPE(at::isIntegralType(timesteps.scalar_type(), false),
                   "fastgen: timesteps must be an integer tensor, got ", timesteps.scalar_type());
  TORCH_CHECK_VALUE(timesteps.dim() <= 1 && (timesteps.numel() == rows || timesteps.numel() == 1),
                    "fastgen: timesteps must have shape (", rows, ",) or hold one value, got ",
                    timesteps.sizes());
  check_same_device(first, first_name, timesteps, "timesteps");
  return first_name;
}

// What a DDPM / DDIM call asked for, once its arguments are checked.
struct DenoisePlan {
  bool guided;        // model_output_uncond given: classifier-free guidance
  bool thresholding;  // per-sample dynamic threshold given
  bool has_noise;     // the step adds noise (DDPM, or DDIM with eta > 0)
  bool gen_noise;     // ... and it is drawn in the kernel from the seed (Philox)
};

// Every check of the DDPM / DDIM entry points but the timestep's value (read by value on the
// host, or from device memory by the CUDA kernel) and the seed's device (a CUDA call takes a
// host seed by value).
inline DenoisePlan check_denoise(bool ddpm, const at::Tensor& m, const at::Tensor& x, const at::Tensor& noise,
                                 const at::Tensor& timestep, const at::Tensor& table, const at::Tensor& prev_table,
                                 const at::Tensor& threshold, const at::Tensor& uncond, double guidance,
                                 double eta, double clip_range, const std::optional<at::Tensor>& seed,
                                 int64_t seed_offset) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "fastgen: sample must have a leading batch dim");
  check_same_float_tensor(x, "sample", m, "model_output");
  bool noise_given = optional_like(noise, x, "noise");
  const bool seeded = seed.has_value();
  if (seeded) {  // in-kernel noise: element i gets philox::randn(seed, seed_offset + i) (common/philox.h)
    TORCH_CHECK_VALUE(!noise_given, "fastgen: pass either noise or seed (in-kernel noise), not both");
    check_scalar_index(*seed, "seed");
    TORCH_CHECK_VALUE(seed_offset >= 0, "fastgen: seed_offset must be >= 0, got ", seed_offset);
    noise_given = true;
  }
  DenoisePlan plan{};
  plan.guided = optional_like(uncond, x, "model_output_uncond");
  check_table(table, x, "alphas_cumprod", 1);
  check_table(prev_table, x, "alphas_cumprod_prev", 1);
  TORCH_CHECK_VALUE(prev_table.size(0) == table.size(0),
                    "fastgen: alphas_cumprod_prev and alphas_cumprod differ in length");
  check_scalar_index(timestep, "timestep");
  plan.thresholding = threshold.numel() > 0;
  if (plan.thresholding) {
    TORCH_CHECK_VALUE(threshold.dim() == 1 && threshold.size(0) == x.size(0),
                      "fastgen: threshold must have shape (", x.size(0), ",), got ", threshold.sizes());
    check_same_device(x, "sample", threshold, "threshold");
  }
  TORCH_CHECK_VALUE(clip_range > 0, "fastgen: clip_sample_range must be > 0");
  TORCH_CHECK_VALUE(std::isfinite(guidance), "fastgen: guidance_scale must be finite, got ", guidance);
  TORCH_CHECK_VALUE(eta >= 0, "fastgen: eta must be >= 0");
  TORCH_CHECK_VALUE(ddpm || eta == 0 || noise_given,
                    "fastgen: noise is required when eta > 0 (or a seed for in-kernel noise)");
  plan.has_noise = noise_given && (ddpm || eta > 0);
  plan.gen_noise = seeded && plan.has_noise;
  return plan;
}

// What a flow-matching step call asked for, once its arguments are checked.
struct FlowPlan {
  bool stochastic;  // noise given (Euler)
  bool guided;      // model_output_uncond given (Euler)
};

// Every check of flow_euler_step (v2 nullptr) / flow_heun_step (noise and uncond nullptr) but the
// step index's value.
inline FlowPlan check_flow_step(const at::Tensor& v, const at::Tensor* v2, const at::Tensor& x,
                                const at::Tensor* noise, const at::Tensor& step_index, const at::Tensor& sigmas,
                                const at::Tensor* uncond, double guidance) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "fastgen: sample must have a leading batch dim");
  check_same_float_tensor(x, "sample", v, "model_output");
  if (v2) check_same_float_tensor(x, "sample", *v2, "model_output_next");
  FlowPlan plan{};
  plan.stochastic = noise && optional_like(*noise, x, "noise");
  plan.guided = uncond && optional_like(*uncond, x, "model_output_uncond");
  TORCH_CHECK_VALUE(std::isfinite(guidance), "fastgen: guidance_scale must be finite, got ", guidance);
  check_table(sigmas, x, "sigmas", 2);
  check_scalar_index(step_index, "step_index");
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

// DDPM (ddpm true) / DDIM step: prediction and variance parsed (Prediction, Variance).
using DenoiseFn = std::tuple<at::Tensor, at::Tensor> (*)(
    bool ddpm, const at::Tensor& model_output, const at::Tensor& sample, const at::Tensor& noise,
    const at::Tensor& timestep, const at::Tensor& alphas_cumprod, const at::Tensor& alphas_cumprod_prev,
    const at::Tensor& threshold, const at::Tensor& uncond, double guidance, double eta, int prediction, int variance,
    bool clip, double clip_range, bool use_clipped, const std::optional<at::Tensor>& seed, int64_t seed_offset);

template <DenoiseFn Denoise>
std::tuple<at::Tensor, at::Tensor> ddim_step(const at::Tensor& model_output, const at::Tensor& sample,
                                             const at::Tensor& noise, const at::Tensor& timestep,
                                             const at::Tensor& alphas_cumprod, const at::Tensor& alphas_cumprod_prev,
                                             const at::Tensor& threshold, const at::Tensor& uncond,
                                             double guidance_scale, double eta, c10::string_view prediction_type,
                                             bool clip_sample, double clip_sample_range, bool use_clipped_model_output,
                                             const std::optional<at::Tensor>& seed, int64_t seed_offset) {
  return Denoise(false, model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev, threshold, uncond,
                 guidance_scale, eta, parse_prediction(prediction_type), kFixedSmall, clip_sample, clip_sample_range,
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
                 guidance_scale, 0.0, parse_prediction(prediction_type), parse_variance(variance_type), clip_sample,
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
