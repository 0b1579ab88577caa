// CPU kernels for the diffusion sampler family: add_noise / get_velocity, the DDPM / DDIM steps
// and the flow-matching (rectified-flow) Euler / Heun steps, flow_*_step, which are sampler
// steps like DDIM's, not normalizing flows (those are csrc/*/flow.*). Math in
// csrc/common/diffusion.h, argument checks in csrc/common/diffusion_host.h.
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
#include "common/dispatch.h"
#include "common/diffusion.h"
#include "common/diffusion_host.h"
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

// The CPU kernels read the timesteps / the step index on the host: every argument is a CPU tensor
// once the checks pass, unless the kernel was reached (by redispatch) with a sample elsewhere.
void check_on_host(bool on_host, const at::Tensor& sample, const char* name) {
  TORCH_CHECK_VALUE(on_host, std::string("fastgen: ") + name + " is on " + py_device(sample.device()) +
                    " but the cpu kernel runs CPU tensors");
}

double table_at(const at::Tensor& table, int64_t i) {
  return table.scalar_type() == at::kDouble ? table.const_data_ptr<double>()[i * table.stride(0)]
                                            : table.const_data_ptr<float>()[i * table.stride(0)];
}

// -- add_noise / get_velocity ---------------------------------------------------------------------

at::Tensor mix_cpu(const at::Tensor& first_in, const at::Tensor& noise_in, const at::Tensor& timesteps,
                   const at::Tensor& table, bool velocity) {
  const MixPlan plan = check_mix(first_in, noise_in, timesteps, table, velocity);
  check_on_host(plan.host_timesteps.defined(), first_in, plan.first_name);
  const int64_t rows = first_in.size(0);
  const auto first = first_in.contiguous(), noise = noise_in.contiguous();
  auto out = at::empty_like(first, at::MemoryFormat::Contiguous);
  if (first.numel() == 0) return out;
  const auto& t = plan.host_timesteps;  // int64, range-checked (a CPU kernel's timesteps are on the host)
  const int64_t* pt = t.const_data_ptr<int64_t>();
  const int64_t cols = first.numel() / rows;
  FASTGEN_DISPATCH_FLOATS(first.scalar_type(), "mix_cpu", [&] {
    using L = Lanes<scalar_t>;
    using opmath_t = typename L::opmath_t;
    using VecM = typename L::VecM;
    // per-sample coefficients, out = ca * first + cb * noise
    std::vector<opmath_t> ca(rows), cb(rows);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t ti = pt[t.numel() == 1 ? 0 : r];
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
                                               double guidance, double eta, c10::string_view prediction_type,
                                               c10::string_view variance_type, bool clip, double clip_range,
                                               bool use_clipped, const std::optional<at::Tensor>& seed_in,
                                               int64_t seed_offset) {
  const DenoisePlan plan = check_denoise(ddpm, m_in, x_in, noise_in, timestep, table, prev_table, threshold_in,
                                         uncond_in, guidance, eta, prediction_type, variance_type, clip_range,
                                         seed_in, seed_offset);
  const bool guided = plan.guided, thresholding = plan.thresholding, has_noise = plan.has_noise,
             gen_noise = plan.gen_noise;
  const int prediction = plan.prediction, variance = plan.variance;
  check_on_host(plan.timestep.has_value(), x_in, "sample");
  // the seed and the timestep are host tensors here (check_denoise: the host or the sample's device)
  const uint64_t seed = gen_noise ? static_cast<uint64_t>(seed_in->item<int64_t>()) : 0;
  const int64_t t = *plan.timestep;
  const auto m = m_in.contiguous(), x = x_in.contiguous();
  const auto z = has_noise && !gen_noise ? noise_in.contiguous() : x;
  const auto u = guided ? uncond_in.contiguous() : m;
  auto prev = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto x0 = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return {prev, x0};
  const auto thr = thresholding ? threshold_in.to(at::kDouble).contiguous() : threshold_in;
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "denoise_cpu", [&] {
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
                    const at::Tensor* uncond_in, double guidance) {
  const FlowPlan plan = check_flow_step(v_in, v2_in, x_in, noise_in, step_index, sigmas, uncond_in, guidance);
  const bool stochastic = plan.stochastic, guided = plan.guided;
  check_on_host(plan.step_index.has_value(), x_in, "sample");
  const int64_t i = *plan.step_index;  // a host index (check_flow_step: the host or the sample's device)
  const auto v = v_in.contiguous(), x = x_in.contiguous();
  const auto w = v2_in ? v2_in->contiguous() : (stochastic ? noise_in->contiguous() : x);
  const auto un = guided ? uncond_in->contiguous() : v;
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return out;
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "flow_cpu", [&] {
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

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("add_noise_native", &diffusion::add_noise<mix_cpu>);
  m.impl("get_velocity_native", &diffusion::get_velocity<mix_cpu>);
  m.impl("ddim_step_native", &diffusion::ddim_step<denoise_cpu>);
  m.impl("ddpm_step_native", &diffusion::ddpm_step<denoise_cpu>);
  m.impl("flow_euler_step_native", &diffusion::flow_euler_step<flow_cpu>);
  m.impl("flow_heun_step_native", &diffusion::flow_heun_step<flow_cpu>);
}

}  // namespace fastgen
