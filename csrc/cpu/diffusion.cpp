// CPU kernels for the diffusion family (math in csrc/common/diffusion.h).
// The step's scalars are read from the schedule tables on the host once per call; the
// elementwise pass is vectorized (at::vec) and split into chunks across threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <optional>
#include <vector>

#include "cpu/vec_lanes.h"
#include "common/checks.h"
#include "common/diffusion.h"
#include "cpu/philox_block.h"

namespace fastgen {
namespace {

using at::vec::Vectorized;
using namespace diffusion;

constexpr int64_t kChunk = 1 << 14;       // elements per task
// Smaller tensors run on one thread: waking the pool costs about what a second thread saves
// on a 64x64 latent step, and far more on a loaded machine.
constexpr int64_t kSerialBelow = 1 << 18;

// fp16/bf16 widen to two fp32 vectors (csrc/cpu/vec_lanes.h)
template <typename scalar_t>
using Lanes = VecLanes<scalar_t>;

// Runs f(row, start, length) over [0, rows) x [0, cols) in chunks, in parallel when large.
template <typename F>
void for_each_span(int64_t rows, int64_t cols, const F& f) {
  const int64_t chunks = std::max<int64_t>(1, (cols + kChunk - 1) / kChunk);
  const int64_t tasks = rows * chunks;
  const int64_t per_task = std::max<int64_t>(1, std::min(cols, kChunk));
  const int64_t grain = rows * cols < kSerialBelow ? tasks : std::max<int64_t>(1, kChunk / per_task);
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / chunks, start = (task % chunks) * kChunk;
      f(row, start, std::min(kChunk, cols - start));
    }
  });
}

int64_t host_index(const at::Tensor& index, const at::Tensor& sample, int64_t upper, const char* name) {
  TORCH_CHECK_TYPE(at::isIntegralType(index.scalar_type(), /*includeBool=*/false), "fastgen: ", name,
                   " must be an integer tensor, got ", index.scalar_type());
  TORCH_CHECK_VALUE(index.numel() == 1, "fastgen: ", name, " must hold one value, got shape ",
                    index.sizes());
  check_same_device(sample, "sample", index, name);
  const int64_t v = index.item<int64_t>();
  TORCH_CHECK_VALUE(v >= 0 && v < upper, "fastgen: ", name, " must be in [0, ", upper, "), got ", v);
  return v;
}

void check_table(const at::Tensor& table, const at::Tensor& sample, const char* name, int64_t min_len) {
  TORCH_CHECK_TYPE(table.scalar_type() == at::kFloat || table.scalar_type() == at::kDouble,
                   "fastgen: ", name, " must be float32 or float64, got ", table.scalar_type());
  TORCH_CHECK_VALUE(table.dim() == 1 && table.size(0) >= min_len, "fastgen: ", name,
                    " must be a 1-D table with at least ", min_len, " entries, got ", table.sizes());
  check_same_device(sample, "sample", table, name);
}

double table_at(const at::Tensor& table, int64_t i) {
  return table.scalar_type() == at::kDouble ? table.const_data_ptr<double>()[i * table.stride(0)]
                                            : table.const_data_ptr<float>()[i * table.stride(0)];
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

// -- add_noise / get_velocity ---------------------------------------------------------------------

at::Tensor mix_cpu(const at::Tensor& first_in, const at::Tensor& noise_in, const at::Tensor& timesteps,
                   const at::Tensor& table, bool velocity) {
  const char* first_name = velocity ? "sample" : "original_samples";
  TORCH_CHECK_VALUE(first_in.dim() >= 1, "fastgen: ", first_name, " must have a leading batch dim");
  check_same_float_tensor(first_in, first_name, noise_in, "noise");
  check_table(table, first_in, "alphas_cumprod", 1);
  const int64_t rows = first_in.size(0);
  TORCH_CHECK_TYPE(at::isIntegralType(timesteps.scalar_type(), false),
                   "fastgen: timesteps must be an integer tensor, got ", timesteps.scalar_type());
  TORCH_CHECK_VALUE(timesteps.dim() <= 1 && (timesteps.numel() == rows || timesteps.numel() == 1),
                    "fastgen: timesteps must have shape (", rows, ",) or hold one value, got ",
                    timesteps.sizes());
  check_same_device(first_in, first_name, timesteps, "timesteps");
  const auto first = first_in.contiguous(), noise = noise_in.contiguous();
  auto out = at::empty_like(first, at::MemoryFormat::Contiguous);
  if (first.numel() == 0) return out;
  const auto t = timesteps.to(at::kLong).contiguous();
  const int64_t* pt = t.const_data_ptr<int64_t>();
  const int64_t cols = first.numel() / rows;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "mix_cpu", [&] {
    using L = Lanes<scalar_t>;
    using opmath_t = typename L::opmath_t;
    using VecM = typename L::VecM;
    // per-sample coefficients, out = ca * first + cb * noise
    std::vector<opmath_t> ca(rows), cb(rows);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t ti = pt[t.numel() == 1 ? 0 : r];
      TORCH_CHECK_VALUE(ti >= 0 && ti < table.size(0), "fastgen: timesteps must be in [0, ",
                        table.size(0), "), got ", ti);
      const opmath_t a = static_cast<opmath_t>(table_at(table, ti));
      const opmath_t sa = dsqrt(a), sb = dsqrt(opmath_t(1) - a);
      ca[r] = velocity ? -sb : sa;
      cb[r] = velocity ? sa : sb;
    }
    const scalar_t* pf = first.const_data_ptr<scalar_t>();
    const scalar_t* pn = noise.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    for_each_span(rows, cols, [&](int64_t row, int64_t start, int64_t len) {
      const int64_t off = row * cols + start;
      const scalar_t *f = pf + off, *z = pn + off;
      scalar_t* o = po + off;
      const opmath_t a = ca[row], b = cb[row];
      const VecM va(a), vb(b);
      int64_t i = 0;
      for (; i + L::step <= len; i += L::step) {
        VecM x[L::parts], n[L::parts], r[L::parts];
        L::load(f + i, x);
        L::load(z + i, n);
        for (int p = 0; p < L::parts; ++p) r[p] = va * x[p] + vb * n[p];
        L::store(o + i, r);
      }
      for (; i < len; ++i)
        o[i] = static_cast<scalar_t>(a * static_cast<opmath_t>(f[i]) + b * static_cast<opmath_t>(z[i]));
    });
  });
  return out;
}

at::Tensor add_noise_cpu(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps,
                         const at::Tensor& alphas_cumprod) {
  return mix_cpu(x0, noise, timesteps, alphas_cumprod, false);
}

at::Tensor get_velocity_cpu(const at::Tensor& sample, const at::Tensor& noise, const at::Tensor& timesteps,
                            const at::Tensor& alphas_cumprod) {
  return mix_cpu(sample, noise, timesteps, alphas_cumprod, true);
}

// -- DDPM / DDIM ------------------------------------------------------------------------------------

enum Limit { kNone = 0, kClip = 1, kThreshold = 2 };

// noise_t: scalar_t for passed noise, opmath_t for a buffer of in-kernel (Philox) noise.
template <typename scalar_t, int kLimit, bool kNoise, bool kGuided, typename noise_t = scalar_t>
void denoise_span(const scalar_t* m, const scalar_t* u, const scalar_t* x, const noise_t* z, scalar_t* prev,
                  scalar_t* x0_out, int64_t n, const StepCoeffs<at::opmath_type<scalar_t>>& c,
                  at::opmath_type<scalar_t> bound, at::opmath_type<scalar_t> guidance) {
  using L = Lanes<scalar_t>;
  using opmath_t = typename L::opmath_t;
  using VecM = typename L::VecM;
  const VecM vX(c.X), vM(c.M), vS(c.S), vA(c.A), vB(c.B), vC(c.C), vD(c.D), hi(bound), lo(-bound);
  const VecM vg(guidance);
  int64_t i = 0;
  for (; i + L::step <= n; i += L::step) {
    VecM vm[L::parts], vx[L::parts], vz[L::parts], p0[L::parts], pp[L::parts];
    L::load(m + i, vm);
    if constexpr (kGuided) {  // classifier-free guidance: u + g (c - u)
      VecM vu[L::parts];
      L::load(u + i, vu);
      for (int p = 0; p < L::parts; ++p) vm[p] = vu[p] + vg * (vm[p] - vu[p]);
    }
    L::load(x + i, vx);
    if constexpr (kNoise) {
      if constexpr (std::is_same_v<noise_t, scalar_t>) {
        L::load(z + i, vz);
      } else {
        for (int p = 0; p < L::parts; ++p) vz[p] = VecM::loadu(z + i + p * VecM::size());
      }
    }
    for (int p = 0; p < L::parts; ++p) {
      VecM x0 = (vX * vx[p] + vM * vm[p]) * vS;
      if constexpr (kLimit == kClip) x0 = at::vec::clamp(x0, lo, hi);
      if constexpr (kLimit == kThreshold) x0 = at::vec::clamp(x0, lo, hi) / hi;
      VecM out = vA * x0 + vB * vx[p];
      if (c.uses_m) out = out + vC * vm[p];
      if constexpr (kNoise) out = out + vD * vz[p];
      p0[p] = x0;
      pp[p] = out;
    }
    L::store(prev + i, pp);
    L::store(x0_out + i, p0);
  }
  for (; i < n; ++i) {
    opmath_t xm = static_cast<opmath_t>(m[i]);
    if constexpr (kGuided) {
      const opmath_t xu = static_cast<opmath_t>(u[i]);
      xm = xu + guidance * (xm - xu);
    }
    const opmath_t xx = static_cast<opmath_t>(x[i]);
    opmath_t x0 = (c.X * xx + c.M * xm) * c.S;
    if constexpr (kLimit == kClip) x0 = clamp_range(x0, -bound, bound);
    if constexpr (kLimit == kThreshold) x0 = clamp_range(x0, -bound, bound) / bound;
    opmath_t out = c.A * x0 + c.B * xx;
    if (c.uses_m) out += c.C * xm;
    if constexpr (kNoise) out += c.D * static_cast<opmath_t>(z[i]);
    prev[i] = static_cast<scalar_t>(out);
    x0_out[i] = static_cast<scalar_t>(x0);
  }
}

std::tuple<at::Tensor, at::Tensor> denoise_cpu(bool ddpm, const at::Tensor& m_in, const at::Tensor& x_in,
                                               const at::Tensor& noise_in, const at::Tensor& timestep,
                                               const at::Tensor& table, const at::Tensor& prev_table,
                                               const at::Tensor& threshold_in, const at::Tensor& uncond_in,
                                               double guidance, double eta, int prediction,
                                               int variance, bool clip, double clip_range,
                                               bool use_clipped, const std::optional<at::Tensor>& seed_in,
                                               int64_t seed_offset) {
  TORCH_CHECK_VALUE(x_in.dim() >= 1, "fastgen: sample must have a leading batch dim");
  check_same_float_tensor(x_in, "sample", m_in, "model_output");
  bool noise_given = optional_like(noise_in, x_in, "noise");
  // In-kernel noise: element i gets philox::randn(seed, seed_offset + i) (common/philox.h).
  const bool seeded = seed_in.has_value();
  uint64_t seed = 0;
  if (seeded) {
    TORCH_CHECK_VALUE(!noise_given, "fastgen: pass either noise or seed (in-kernel noise), not both");
    TORCH_CHECK_TYPE(at::isIntegralType(seed_in->scalar_type(), false),
                     "fastgen: seed must be an integer tensor, got ", seed_in->scalar_type());
    TORCH_CHECK_VALUE(seed_in->numel() == 1, "fastgen: seed must hold one value, got shape ", seed_in->sizes());
    check_same_device(x_in, "sample", *seed_in, "seed");
    TORCH_CHECK_VALUE(seed_offset >= 0, "fastgen: seed_offset must be >= 0, got ", seed_offset);
    seed = static_cast<uint64_t>(seed_in->item<int64_t>());
    noise_given = true;
  }
  const bool guided = optional_like(uncond_in, x_in, "model_output_uncond");
  check_table(table, x_in, "alphas_cumprod", 1);
  check_table(prev_table, x_in, "alphas_cumprod_prev", 1);
  TORCH_CHECK_VALUE(prev_table.size(0) == table.size(0),
                    "fastgen: alphas_cumprod_prev and alphas_cumprod differ in length");
  const int64_t t = host_index(timestep, x_in, table.size(0), "timestep");
  const bool thresholding = threshold_in.numel() > 0;
  if (thresholding) {
    TORCH_CHECK_VALUE(threshold_in.dim() == 1 && threshold_in.size(0) == x_in.size(0),
                      "fastgen: threshold must have shape (", x_in.size(0), ",), got ", threshold_in.sizes());
    check_same_device(x_in, "sample", threshold_in, "threshold");
  }
  TORCH_CHECK_VALUE(clip_range > 0, "fastgen: clip_sample_range must be > 0");
  TORCH_CHECK_VALUE(std::isfinite(guidance), "fastgen: guidance_scale must be finite, got ", guidance);
  TORCH_CHECK_VALUE(eta >= 0, "fastgen: eta must be >= 0");
  const bool has_noise = noise_given && (ddpm || eta > 0);
  TORCH_CHECK_VALUE(ddpm || eta == 0 || noise_given, "fastgen: noise is required when eta > 0 (or a seed for in-kernel noise)");
  const bool gen_noise = seeded && has_noise;
  const auto m = m_in.contiguous(), x = x_in.contiguous();
  const auto z = has_noise && !gen_noise ? noise_in.contiguous() : x;
  const auto u = guided ? uncond_in.contiguous() : m;
  auto prev = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto x0 = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return {prev, x0};
  const auto thr = thresholding ? threshold_in.to(at::kDouble).contiguous() : threshold_in;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "denoise_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto c = denoise_coeffs<opmath_t>(ddpm, prediction, variance,
                                            static_cast<opmath_t>(table_at(table, t)),
                                            static_cast<opmath_t>(table_at(prev_table, t)), t,
                                            static_cast<opmath_t>(eta), use_clipped);
    const scalar_t* pm = m.const_data_ptr<scalar_t>();
    const scalar_t* pu = u.const_data_ptr<scalar_t>();
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pz = z.const_data_ptr<scalar_t>();
    scalar_t* pp = prev.mutable_data_ptr<scalar_t>();
    scalar_t* p0 = x0.mutable_data_ptr<scalar_t>();
    // Rows matter only for the per-sample threshold; otherwise one flat row splits best.
    const int64_t rows = thresholding ? x.size(0) : 1;
    const int64_t cols = x.numel() / rows;
    const double* ps = thresholding ? thr.const_data_ptr<double>() : nullptr;
    const opmath_t g = static_cast<opmath_t>(guidance);
    auto run_guided = [&](auto limit, auto noise, auto guide) {
      constexpr int kL = decltype(limit)::value;
      constexpr bool kN = decltype(noise)::value;
      constexpr bool kG = decltype(guide)::value;
      for_each_span(rows, cols, [&](int64_t row, int64_t start, int64_t len) {
        const int64_t off = row * cols + start;
        const opmath_t bound = kL == kThreshold ? static_cast<opmath_t>(ps[row])
                                                : static_cast<opmath_t>(clip_range);
        if (gen_noise) {
          // the span's noise first (a span is at most kChunk elements), then the fused pass
          std::vector<opmath_t> buf(len);
          const uint64_t base = static_cast<uint64_t>(seed_offset + off);
          philox::randn_run(seed, base, len, buf.data());
          denoise_span<scalar_t, kL, true, kG, opmath_t>(pm + off, pu + off, px + off, buf.data(), pp + off,
                                                         p0 + off, len, c, bound, g);
        } else {
          denoise_span<scalar_t, kL, kN, kG>(pm + off, pu + off, px + off, pz + off, pp + off, p0 + off, len,
                                             c, bound, g);
        }
      });
    };
    auto run = [&](auto limit, auto noise) {
      guided ? run_guided(limit, noise, std::true_type{}) : run_guided(limit, noise, std::false_type{});
    };
    using NoLimit = std::integral_constant<int, kNone>;
    using Clip = std::integral_constant<int, kClip>;
    using Thr = std::integral_constant<int, kThreshold>;
    using Yes = std::true_type;
    using No = std::false_type;
    if (thresholding) has_noise ? run(Thr{}, Yes{}) : run(Thr{}, No{});
    else if (clip) has_noise ? run(Clip{}, Yes{}) : run(Clip{}, No{});
    else has_noise ? run(NoLimit{}, Yes{}) : run(NoLimit{}, No{});
  });
  return {prev, x0};
}

std::tuple<at::Tensor, at::Tensor> ddim_step_cpu(const at::Tensor& model_output, const at::Tensor& sample,
                                                 const at::Tensor& noise, const at::Tensor& timestep,
                                                 const at::Tensor& alphas_cumprod,
                                                 const at::Tensor& alphas_cumprod_prev,
                                                 const at::Tensor& threshold, const at::Tensor& uncond,
                                                 double guidance_scale, double eta,
                                                 c10::string_view prediction_type, bool clip_sample,
                                                 double clip_sample_range, bool use_clipped_model_output,
                                                 const std::optional<at::Tensor>& seed, int64_t seed_offset) {
  return denoise_cpu(false, model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev,
                     threshold, uncond, guidance_scale, eta, parse_prediction(std::string(prediction_type)), kFixedSmall,
                     clip_sample, clip_sample_range, use_clipped_model_output, seed, seed_offset);
}

std::tuple<at::Tensor, at::Tensor> ddpm_step_cpu(const at::Tensor& model_output, const at::Tensor& sample,
                                                 const at::Tensor& noise, const at::Tensor& timestep,
                                                 const at::Tensor& alphas_cumprod,
                                                 const at::Tensor& alphas_cumprod_prev,
                                                 const at::Tensor& threshold, const at::Tensor& uncond,
                                                 double guidance_scale, c10::string_view prediction_type,
                                                 c10::string_view variance_type, bool clip_sample,
                                                 double clip_sample_range, const std::optional<at::Tensor>& seed,
                                                 int64_t seed_offset) {
  return denoise_cpu(true, model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev,
                     threshold, uncond, guidance_scale, 0.0, parse_prediction(std::string(prediction_type)),
                     parse_variance(std::string(variance_type)), clip_sample, clip_sample_range, false, seed,
                     seed_offset);
}

// -- flow matching -----------------------------------------------------------------------------------

// kGuided: v2 is the unconditional velocity and v becomes v2 + g (v - v2) (Euler only).
template <typename scalar_t, bool kSecond, bool kNoise, bool kGuided = false>
void flow_span(const scalar_t* v, const scalar_t* v2, const scalar_t* x, const scalar_t* z, scalar_t* out,
               int64_t n, const FlowCoeffs<at::opmath_type<scalar_t>>& c, at::opmath_type<scalar_t> g = 1) {
  using L = Lanes<scalar_t>;
  using opmath_t = typename L::opmath_t;
  using VecM = typename L::VecM;
  const VecM vP(c.P), vQ(c.Q), vQ2(c.Q2), vR(c.R), vg(g);
  int64_t i = 0;
  for (; i + L::step <= n; i += L::step) {
    VecM a[L::parts], b[L::parts], w[L::parts], r[L::parts];
    L::load(v + i, a);
    if constexpr (kGuided) {
      VecM un[L::parts];
      L::load(v2 + i, un);
      for (int p = 0; p < L::parts; ++p) a[p] = un[p] + vg * (a[p] - un[p]);
    }
    L::load(x + i, b);
    if constexpr (kSecond || kNoise) L::load((kSecond ? v2 : z) + i, w);
    for (int p = 0; p < L::parts; ++p) {
      r[p] = vP * b[p] + vQ * a[p];
      if constexpr (kSecond) r[p] = r[p] + vQ2 * w[p];
      if constexpr (kNoise) r[p] = r[p] + vR * w[p];
    }
    L::store(out + i, r);
  }
  for (; i < n; ++i) {
    opmath_t vi = static_cast<opmath_t>(v[i]);
    if constexpr (kGuided) {
      const opmath_t ui = static_cast<opmath_t>(v2[i]);
      vi = ui + g * (vi - ui);
    }
    opmath_t r = c.P * static_cast<opmath_t>(x[i]) + c.Q * vi;
    if constexpr (kSecond) r += c.Q2 * static_cast<opmath_t>(v2[i]);
    if constexpr (kNoise) r += c.R * static_cast<opmath_t>(z[i]);
    out[i] = static_cast<scalar_t>(r);
  }
}

at::Tensor flow_cpu(const at::Tensor& v_in, const at::Tensor* v2_in, const at::Tensor& x_in,
                    const at::Tensor* noise_in, const at::Tensor& step_index, const at::Tensor& sigmas,
                    const at::Tensor* uncond_in = nullptr, double guidance = 1.0) {
  TORCH_CHECK_VALUE(x_in.dim() >= 1, "fastgen: sample must have a leading batch dim");
  check_same_float_tensor(x_in, "sample", v_in, "model_output");
  if (v2_in) check_same_float_tensor(x_in, "sample", *v2_in, "model_output_next");
  const bool stochastic = noise_in && optional_like(*noise_in, x_in, "noise");
  const bool guided = uncond_in && optional_like(*uncond_in, x_in, "model_output_uncond");
  TORCH_CHECK_VALUE(std::isfinite(guidance), "fastgen: guidance_scale must be finite, got ", guidance);
  check_table(sigmas, x_in, "sigmas", 2);
  const int64_t i = host_index(step_index, x_in, sigmas.size(0) - 1, "step_index");
  const auto v = v_in.contiguous(), x = x_in.contiguous();
  const auto w = v2_in ? v2_in->contiguous() : (stochastic ? noise_in->contiguous() : x);
  const auto un = guided ? uncond_in->contiguous() : v;
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "flow_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto c = flow_coeffs<opmath_t>(static_cast<opmath_t>(table_at(sigmas, i)),
                                         static_cast<opmath_t>(table_at(sigmas, i + 1)), v2_in != nullptr,
                                         stochastic);
    const scalar_t* pv = v.const_data_ptr<scalar_t>();
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pw = w.const_data_ptr<scalar_t>();
    const scalar_t* pu = un.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const opmath_t g = static_cast<opmath_t>(guidance);
    for_each_span(1, x.numel(), [&](int64_t, int64_t s, int64_t len) {
      if (v2_in) flow_span<scalar_t, true, false>(pv + s, pw + s, px + s, nullptr, po + s, len, c);
      else if (stochastic && guided) flow_span<scalar_t, false, true, true>(pv + s, pu + s, px + s, pw + s, po + s, len, c, g);
      else if (stochastic) flow_span<scalar_t, false, true>(pv + s, nullptr, px + s, pw + s, po + s, len, c);
      else if (guided) flow_span<scalar_t, false, false, true>(pv + s, pu + s, px + s, nullptr, po + s, len, c, g);
      else flow_span<scalar_t, false, false>(pv + s, nullptr, px + s, nullptr, po + s, len, c);
    });
  });
  return out;
}

at::Tensor flow_euler_step_cpu(const at::Tensor& model_output, const at::Tensor& sample,
                               const at::Tensor& noise, const at::Tensor& step_index, const at::Tensor& sigmas,
                               const at::Tensor& model_output_uncond, double guidance_scale) {
  return flow_cpu(model_output, nullptr, sample, &noise, step_index, sigmas, &model_output_uncond, guidance_scale);
}

at::Tensor flow_heun_step_cpu(const at::Tensor& model_output, const at::Tensor& model_output_next,
                              const at::Tensor& sample, const at::Tensor& step_index, const at::Tensor& sigmas) {
  return flow_cpu(model_output, &model_output_next, sample, nullptr, step_index, sigmas);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("add_noise_native", &add_noise_cpu);
  m.impl("get_velocity_native", &get_velocity_cpu);
  m.impl("ddim_step_native", &ddim_step_cpu);
  m.impl("ddpm_step_native", &ddpm_step_cpu);
  m.impl("flow_euler_step_native", &flow_euler_step_cpu);
  m.impl("flow_heun_step_native", &flow_heun_step_cpu);
}

}  // namespace fastgen
