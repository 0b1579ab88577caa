// CPU kernels for the GAN / SimCLR family (math in csrc/common/gan.h).
//
// bias_act views x as (outer, C, inner), C = x.shape[dim]. When inner == 1 (a linear layer's
// (N, C) output) a row is one sample's C channels and the bias is a vector across SIMD lanes;
// otherwise a row is one (sample, channel) plane of `inner` elements and the bias a scalar.
// dbias is summed from per-task partials in a fixed order: results do not depend on the
// thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

namespace fastgen {
// SIMD overloads of the primitives the shared templates in common/*.h call; declared first so
// the templates see them (see the note in common/gan.h).
template <typename T>
inline at::vec::Vectorized<T> fexp(const at::vec::Vectorized<T>& x) { return x.exp(); }
template <typename T>
inline at::vec::Vectorized<T> ferf(const at::vec::Vectorized<T>& x) { return x.erf(); }
template <typename T>
inline at::vec::Vectorized<T> fselect_pos(const at::vec::Vectorized<T>& y, const at::vec::Vectorized<T>& pos,
                                          const at::vec::Vectorized<T>& other) {
  return at::vec::Vectorized<T>::blendv(other, pos, y > at::vec::Vectorized<T>(T(0)));
}
template <typename T>
inline at::vec::Vectorized<T> fselect_nonpos(const at::vec::Vectorized<T>& y, const at::vec::Vectorized<T>& nonpos,
                                             const at::vec::Vectorized<T>& other) {
  return at::vec::Vectorized<T>::blendv(other, nonpos, y <= at::vec::Vectorized<T>(T(0)));
}
}  // namespace fastgen

#include "cpu/vec_lanes.h"
#include "common/checks.h"
#include "common/dispatch.h"
#include "common/gan_host.h"
#include "common/gan.h"
#include "common/info_nce.h"

namespace fastgen {
namespace {

using at::vec::Vectorized;

// fp16/bf16 widen to two fp32 vectors (csrc/cpu/vec_lanes.h)
template <typename scalar_t>
using Lanes = VecLanes<scalar_t>;

// Bias in the math type (zeros when absent), so the inner loops never convert it.
template <typename opmath_t>
std::vector<opmath_t> math_bias(const std::optional<at::Tensor>& bias, int64_t channels) {
  std::vector<opmath_t> out(channels, opmath_t(0));
  if (bias.has_value()) {
    const at::Tensor b = bias->to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    std::copy(b.const_data_ptr<opmath_t>(), b.const_data_ptr<opmath_t>() + channels, out.begin());
  }
  return out;
}

// One row of n elements. kVecBias: bias[i] per element; else the scalar *bias for the row.
// Backward (grad != nullptr) writes dx to `out` and returns the row's sum of dx.
template <Act A, bool kVecBias, bool kBackward, typename scalar_t>
double act_row(const scalar_t* grad, const scalar_t* x, scalar_t* out, int64_t n,
               const at::opmath_type<scalar_t>* bias, at::opmath_type<scalar_t> alpha,
               at::opmath_type<scalar_t> gain, at::opmath_type<scalar_t>* lane_acc) {
  using L = Lanes<scalar_t>;
  using opmath_t = typename L::opmath_t;
  using VecM = typename L::VecM;
  constexpr int64_t kFlush = 1024;  // dx sums flush to double this often (accuracy on long rows)
  const VecM va(alpha), vg(gain), vb_scalar(kVecBias ? opmath_t(0) : *bias);
  double total = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kFlush) {
    const int64_t b1 = std::min(n, b0 + kFlush);
    VecM acc(opmath_t(0));
    opmath_t tail = 0;
    int64_t i = b0;
    for (; i + L::step <= b1; i += L::step) {
      VecM y[L::parts], g[L::parts], r[L::parts];
      L::load(x + i, y);
      if constexpr (kBackward) L::load(grad + i, g);
      for (int p = 0; p < L::parts; ++p) {
        const VecM yb = y[p] + (kVecBias ? VecM::loadu(bias + i + p * VecM::size()) : vb_scalar);
        if constexpr (kBackward) {
          r[p] = g[p] * act_slope<A>(yb, va) * vg;
          if constexpr (kVecBias) {
            opmath_t* la = lane_acc + i + p * VecM::size();
            (VecM::loadu(la) + r[p]).store(la);
          } else {
            acc = acc + r[p];
          }
        } else {
          r[p] = act_forward<A>(yb, va) * vg;
        }
      }
      L::store(out + i, r);
    }
    for (; i < b1; ++i) {
      const opmath_t yb = static_cast<opmath_t>(x[i]) + (kVecBias ? bias[i] : *bias);
      if constexpr (kBackward) {
        const opmath_t d = static_cast<opmath_t>(grad[i]) * act_slope<A>(yb, alpha) * gain;
        out[i] = static_cast<scalar_t>(d);
        if constexpr (kVecBias) lane_acc[i] += d; else tail += d;
      } else {
        out[i] = static_cast<scalar_t>(act_forward<A>(yb, alpha) * gain);
      }
    }
    if constexpr (kBackward && !kVecBias) {
      total += static_cast<double>(
          at::vec::vec_reduce_all<opmath_t>([](VecM a, VecM b) { return a + b; }, acc) + tail);
    }
  }
  return total;
}

constexpr int64_t kWork = 1 << 15;      // elements per parallel task (at least)
constexpr int64_t kRowsPerTask = 64;    // (N, C) layout: samples per dbias partial

at::Tensor bias_act_cpu(const at::Tensor& x_in, const std::optional<at::Tensor>& bias, c10::string_view act,
                        double alpha, double gain, int64_t dim) {
  check_bias_act(x_in, bias, dim, alpha, gain);
  const auto x = x_in.contiguous();
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return out;
  const ChannelView v(x, dim);
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "bias_act_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto b = math_bias<opmath_t>(bias, v.channels);
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const opmath_t a = static_cast<opmath_t>(alpha), g = static_cast<opmath_t>(gain);
    dispatch_act(act, [&](auto tag) {
      constexpr Act A = decltype(tag)::value;
      if (v.inner == 1) {
        const int64_t len = v.channels;
        at::parallel_for(0, v.outer, std::max<int64_t>(1, kWork / len), [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r)
            act_row<A, true, false, scalar_t>(nullptr, px + r * len, po + r * len, len, b.data(), a, g, nullptr);
        });
      } else {
        const int64_t len = v.inner;
        at::parallel_for(0, v.outer * v.channels, std::max<int64_t>(1, kWork / len), [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r)
            act_row<A, false, false, scalar_t>(nullptr, px + r * len, po + r * len, len, &b[r % v.channels], a, g,
                                               nullptr);
        });
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> bias_act_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                         const std::optional<at::Tensor>& bias,
                                                         c10::string_view act, double alpha, double gain,
                                                         int64_t dim) {
  check_bias_act_backward(grad_in, x_in, bias, dim, alpha, gain);
  const auto x = x_in.contiguous(), grad = grad_in.contiguous();
  auto dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const ChannelView v(x, dim);
  const bool want_db = bias.has_value();
  auto db = want_db ? at::zeros_like(*bias) : at::empty({0}, x.options());
  if (x.numel() == 0) return {dx, db};
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "bias_act_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto b = math_bias<opmath_t>(bias, v.channels);
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pg = grad.const_data_ptr<scalar_t>();
    scalar_t* pd = dx.mutable_data_ptr<scalar_t>();
    const opmath_t a = static_cast<opmath_t>(alpha), g = static_cast<opmath_t>(gain);
    std::vector<double> sums(v.channels, 0.0);
    dispatch_act(act, [&](auto tag) {
      constexpr Act A = decltype(tag)::value;
      if (v.inner == 1) {
        // Fixed blocks of `rows_per_task` samples, each with its own per-channel partial. The block
        // depends on the shape only (dbias is the same for any thread count), and is small enough
        // that a (64, 1024) activation still spreads over the cores.
        const int64_t len = v.channels;
        const int64_t rows_per_task = std::clamp<int64_t>(kWork / len, 1, kRowsPerTask);
        const int64_t tasks = (v.outer + rows_per_task - 1) / rows_per_task;
        std::vector<opmath_t> partial(want_db ? tasks * len : 0, opmath_t(0));
        at::parallel_for(0, tasks, std::max<int64_t>(1, kWork / (len * rows_per_task)), [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t) {
            opmath_t* acc = want_db ? partial.data() + t * len : nullptr;
            std::vector<opmath_t> scratch(want_db ? 0 : len);
            for (int64_t r = t * rows_per_task; r < std::min(v.outer, (t + 1) * rows_per_task); ++r)
              act_row<A, true, true, scalar_t>(pg + r * len, px + r * len, pd + r * len, len, b.data(), a, g,
                                               acc ? acc : scratch.data());
          }
        });
        for (int64_t t = 0; t < (want_db ? tasks : 0); ++t)
          for (int64_t c = 0; c < len; ++c) sums[c] += partial[t * len + c];
      } else {
        const int64_t len = v.inner, rows = v.outer * v.channels;
        std::vector<double> partial(rows, 0.0);
        at::parallel_for(0, rows, std::max<int64_t>(1, kWork / len), [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r)
            partial[r] = act_row<A, false, true, scalar_t>(pg + r * len, px + r * len, pd + r * len, len,
                                                           &b[r % v.channels], a, g, nullptr);
        });
        for (int64_t r = 0; r < rows; ++r) sums[r % v.channels] += partial[r];
      }
    });
    if (want_db) {
      auto dbd = at::from_blob(sums.data(), {v.channels}, at::TensorOptions().dtype(at::kDouble));
      db.copy_(dbd);
    }
  });
  return {dx, db};
}

// ---- group_norm_silu ---------------------------------------------------------------------------
// SiLU of the normalized values with ATen's exp_u20 (a degree-5 polynomial, <= 20 ulp in fp32)
// instead of Sleef's 1-ulp exp: the exp is most of this op's time at UNet shapes, and 20 ulp of
// exp(-y) moves silu(y) = y / (1 + exp(-y)) by < 2.4e-6 relative, far inside fp32's tolerance
// (fp16 / bf16 outputs round it away). exp_u20 clamps its argument to the finite range, so
// +-inf inputs would not give silu's NaN / inf -- but an inf in x makes its group's statistics
// NaN, so y is finite or NaN here (NaN still propagates through y itself). fp64 keeps exp().
template <typename V>
inline V gn_exp(const V& v) {
  if constexpr (std::is_same_v<V, at::vec::Vectorized<float>>) return v.exp_u20(); else return v.exp();
}
template <typename V>
inline V gn_silu(const V& y) { return y / (V(1) + gn_exp(V(0) - y)); }
template <typename V>
inline V gn_silu_slope(const V& y) {
  const V s = V(1) / (V(1) + gn_exp(V(0) - y));
  return s * (V(1) + y * (V(1) - s));
}
// One task per (sample, group): its Cg * HW elements are contiguous and (for UNet shapes) fit
// in L2, so the statistics pass, the centred-variance pass and the output pass read memory
// once. The backward keeps gy = dL/dy (through SiLU) of the group in a scratch buffer between
// its two passes instead of recomputing the exp.

template <typename scalar_t>
std::vector<at::opmath_type<scalar_t>> math_param(const std::optional<at::Tensor>& p, int64_t channels,
                                                  double fill) {
  using opmath_t = at::opmath_type<scalar_t>;
  std::vector<opmath_t> out(channels, static_cast<opmath_t>(fill));
  if (p.has_value()) {
    const at::Tensor t = p->to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    std::copy(t.const_data_ptr<opmath_t>(), t.const_data_ptr<opmath_t>() + channels, out.begin());
  }
  return out;
}

// sum of (x - shift) (kSquare: of (x - shift)^2) over n contiguous elements, flushed to double
template <bool kSquare, typename scalar_t>
double centred_sum(const scalar_t* x, int64_t n, at::opmath_type<scalar_t> shift) {
  using L = Lanes<scalar_t>;
  using opmath_t = typename L::opmath_t;
  using VecM = typename L::VecM;
  constexpr int64_t kFlush = 4096;
  const VecM vs(shift);
  double total = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kFlush) {
    const int64_t b1 = std::min(n, b0 + kFlush);
    VecM acc(opmath_t(0));
    opmath_t tail = 0;
    int64_t i = b0;
    for (; i + L::step <= b1; i += L::step) {
      VecM v[L::parts];
      L::load(x + i, v);
      for (int p = 0; p < L::parts; ++p) {
        const VecM d = v[p] - vs;
        acc = kSquare ? at::vec::fmadd(d, d, acc) : acc + d;
      }
    }
    for (; i < b1; ++i) {
      const opmath_t d = static_cast<opmath_t>(x[i]) - shift;
      tail += kSquare ? d * d : d;
    }
    total += static_cast<double>(at::vec::vec_reduce_all<opmath_t>([](VecM a, VecM b) { return a + b; }, acc) + tail);
  }
  return total;
}

struct GroupView {
  int64_t n, c, groups, cg, hw, m;
  GroupView(const at::Tensor& x, int64_t num_groups) {
    n = x.size(0);
    c = x.size(1);
    groups = num_groups;
    cg = c / num_groups;
    hw = n * c == 0 ? 0 : x.numel() / (n * c);
    m = cg * hw;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_silu_cpu(const at::Tensor& x_in,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   const std::optional<at::Tensor>& bias,
                                                                   int64_t num_groups, double eps, bool act) {
  check_group_norm_forward(x_in, weight, bias, num_groups, eps);
  const auto x = x_in.contiguous();
  const GroupView v(x, num_groups);
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto stat_opts = x.options().dtype(opmath_dtype(x.scalar_type()));
  auto mean = at::empty({v.n, v.groups}, stat_opts);
  auto rstd = at::empty({v.n, v.groups}, stat_opts);
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "group_norm_silu_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    using L = Lanes<scalar_t>;
    using VecM = typename L::VecM;
    const auto w = math_param<scalar_t>(weight, v.c, 1.0);
    const auto b = math_param<scalar_t>(bias, v.c, 0.0);
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    opmath_t* pm = mean.mutable_data_ptr<opmath_t>();
    opmath_t* pr = rstd.mutable_data_ptr<opmath_t>();
    at::parallel_for(0, v.n * v.groups, std::max<int64_t>(1, kWork / std::max<int64_t>(1, v.m)), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t g = t % v.groups;
        const scalar_t* xs = px + t * v.m;
        scalar_t* ys = py + t * v.m;
        const opmath_t mu = v.m ? static_cast<opmath_t>(centred_sum<false>(xs, v.m, opmath_t(0)) / v.m) : 0;
        const double var = v.m ? centred_sum<true>(xs, v.m, mu) / v.m : 0.0;
        const opmath_t rs = static_cast<opmath_t>(1.0 / std::sqrt(var + eps));
        pm[t] = mu;
        pr[t] = rs;
        for (int64_t cl = 0; cl < v.cg; ++cl) {
          const int64_t c = g * v.cg + cl;
          const opmath_t scale = rs * w[c], shift = b[c] - mu * scale;
          const VecM vscale(scale), vshift(shift);
          const scalar_t* xr = xs + cl * v.hw;
          scalar_t* yr = ys + cl * v.hw;
          int64_t i = 0;
          for (; i + L::step <= v.hw; i += L::step) {
            VecM r[L::parts];
            L::load(xr + i, r);
            for (int p = 0; p < L::parts; ++p) {
              r[p] = at::vec::fmadd(r[p], vscale, vshift);
              if (act) r[p] = gn_silu(r[p]);
            }
            L::store(yr + i, r);
          }
          for (; i < v.hw; ++i) {
            opmath_t o = static_cast<opmath_t>(xr[i]) * scale + shift;
            if (act) o = act_forward<Act::kSilu>(o, opmath_t(0));
            yr[i] = static_cast<scalar_t>(o);
          }
        }
      }
    });
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_silu_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& x_in, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& mean_in, const at::Tensor& rstd_in,
    int64_t num_groups, bool act) {
  check_group_norm_backward(grad_in, x_in, weight, bias, mean_in, rstd_in, num_groups);
  const auto x = x_in.contiguous(), grad = grad_in.contiguous();
  const GroupView v(x, num_groups);
  const auto mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  auto dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  std::vector<double> sa(v.n * v.c, 0.0), sb(v.n * v.c, 0.0);
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "group_norm_silu_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    using L = Lanes<scalar_t>;
    using VecM = typename L::VecM;
    const auto w = math_param<scalar_t>(weight, v.c, 1.0);
    const auto b = math_param<scalar_t>(bias, v.c, 0.0);
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pg = grad.const_data_ptr<scalar_t>();
    scalar_t* pd = dx.mutable_data_ptr<scalar_t>();
    const opmath_t* pm = mean.const_data_ptr<opmath_t>();
    const opmath_t* pr = rstd.const_data_ptr<opmath_t>();
    at::parallel_for(0, v.n * v.groups, std::max<int64_t>(1, kWork / std::max<int64_t>(1, v.m)), [&](int64_t t0, int64_t t1) {
      std::vector<opmath_t> gy_buf(v.m);
      opmath_t* gy = gy_buf.data();
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t g = t % v.groups;
        const scalar_t* xs = px + t * v.m;
        const scalar_t* gs = pg + t * v.m;
        scalar_t* ds = pd + t * v.m;
        const opmath_t mu = pm[t], rs = pr[t];
        const VecM vmu(mu);
        double s1 = 0, s2 = 0;
        for (int64_t cl = 0; cl < v.cg; ++cl) {
          const int64_t c = g * v.cg + cl;
          const opmath_t scale = rs * w[c], shift = b[c] - mu * scale;
          const VecM vscale(scale), vshift(shift);
          const int64_t o = cl * v.hw;
          VecM acc_a(opmath_t(0)), acc_b(opmath_t(0));
          opmath_t tail_a = 0, tail_b = 0;
          int64_t i = 0;
          for (; i + L::step <= v.hw; i += L::step) {
            VecM xv[L::parts], gv[L::parts];
            L::load(xs + o + i, xv);
            L::load(gs + o + i, gv);
            for (int p = 0; p < L::parts; ++p) {
              if (act) gv[p] = gv[p] * gn_silu_slope(at::vec::fmadd(xv[p], vscale, vshift));
              gv[p].store(gy + o + i + p * VecM::size());
              acc_a = at::vec::fmadd(gv[p], xv[p] - vmu, acc_a);
              acc_b = acc_b + gv[p];
            }
          }
          for (; i < v.hw; ++i) {
            const opmath_t xv = static_cast<opmath_t>(xs[o + i]);
            opmath_t gv = static_cast<opmath_t>(gs[o + i]);
            if (act) gv *= act_slope<Act::kSilu>(xv * scale + shift, opmath_t(0));
            gy[o + i] = gv;
            tail_a += gv * (xv - mu);
            tail_b += gv;
          }
          const auto sum = [](VecM a, VecM bb) { return a + bb; };
          const double a = static_cast<double>(at::vec::vec_reduce_all<opmath_t>(sum, acc_a) + tail_a);
          const double bsum = static_cast<double>(at::vec::vec_reduce_all<opmath_t>(sum, acc_b) + tail_b);
          sa[(t / v.groups) * v.c + c] = a;
          sb[(t / v.groups) * v.c + c] = bsum;
          s1 += w[c] * bsum;
          s2 += w[c] * rs * a;
        }
        opmath_t k1, k2;
        group_norm_dx_coefs<opmath_t>(rs, static_cast<opmath_t>(s1), static_cast<opmath_t>(s2),
                                      static_cast<opmath_t>(v.m), &k1, &k2);
        const opmath_t k0 = k2 - k1 * mu;  // dx = coef * gy + k1 * x + k0
        const VecM vk1(k1), vk0(k0);
        for (int64_t cl = 0; cl < v.cg; ++cl) {
          const int64_t c = g * v.cg + cl;
          const opmath_t coef = rs * w[c];
          const VecM vcoef(coef);
          const int64_t o = cl * v.hw;
          int64_t i = 0;
          for (; i + L::step <= v.hw; i += L::step) {
            VecM xv[L::parts];
            L::load(xs + o + i, xv);
            for (int p = 0; p < L::parts; ++p)
              xv[p] = at::vec::fmadd(VecM::loadu(gy + o + i + p * VecM::size()), vcoef, at::vec::fmadd(xv[p], vk1, vk0));
            L::store(ds + o + i, xv);
          }
          for (; i < v.hw; ++i)
            ds[o + i] = static_cast<scalar_t>(coef * gy[o + i] + k1 * static_cast<opmath_t>(xs[o + i]) + k0);
        }
      }
    });
  });
  // dweight[c] = sum_n rstd[n, g] * sa[n, c], dbias[c] = sum_n sb[n, c]: fixed order (n ascending;
  // a few ATen ops here cost ~50 us at UNet shapes)
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto dw = at::empty({0}, x.options()), db = at::empty({0}, x.options());
  std::vector<double> acc(v.c);
  if (weight.has_value()) {
    const auto r = rstd.to(at::kDouble).contiguous();
    const double* pr = r.const_data_ptr<double>();
    for (int64_t c = 0; c < v.c; ++c) {
      acc[c] = 0;
      for (int64_t n = 0; n < v.n; ++n) acc[c] += pr[n * v.groups + c / v.cg] * sa[n * v.c + c];
    }
    dw = at::from_blob(acc.data(), {v.c}, f64).to(weight->scalar_type(), false, /*copy=*/true);
  }
  if (bias.has_value()) {
    for (int64_t c = 0; c < v.c; ++c) {
      acc[c] = 0;
      for (int64_t n = 0; n < v.n; ++n) acc[c] += sb[n * v.c + c];
    }
    db = at::from_blob(acc.data(), {v.c}, f64).to(bias->scalar_type(), false, /*copy=*/true);
  }
  return {dx, dw, db};
}

// ---- info_nce_loss ------------------------------------------------------------------------------
// The tile driver is common/info_nce.h; the CPU epilogue reduces each tile row in one
// vectorized pass (max, then sum of exp) while the tile is still in cache.

struct CpuInfoNceEpilogue {
  template <typename T>
  static void row_lse(const T* s, int64_t n, T* running) {
    using V = Vectorized<T>;
    const T mx = at::vec::reduce_all<T>([](V a, V b) { return at::vec::maximum(a, b); }, s, n);
    const T hi = std::max(mx, *running);
    if (hi == -std::numeric_limits<T>::infinity()) return;  // nothing but masked entries so far
    const T sum = at::vec::map_reduce_all<T>([hi](V x) { return (x - V(hi)).exp(); },
                                             [](V a, V b) { return a + b; }, s, n);
    *running = hi + std::log(sum + std::exp(*running - hi));
  }
  template <typename T>
  static void row_weights(const T* s, const T* lse_cols, T* p, int64_t n, T lse) {
    using V = Vectorized<T>;
    at::vec::map2([lse](V x, V lc) { return (x - V(lse)).exp() + (x - lc).exp(); }, p, s, lse_cols, n);
  }
  void lse_update(const at::Tensor& s, at::Tensor& running) const {
    AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "info_nce_lse", [&] {
      const scalar_t* ps = s.const_data_ptr<scalar_t>();
      scalar_t* pr = running.mutable_data_ptr<scalar_t>();
      const int64_t cols = s.size(1);
      at::parallel_for(0, s.size(0), 16, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) row_lse(ps + r * cols, cols, pr + r);
      });
    });
  }
  at::Tensor weights(const at::Tensor& s, const at::Tensor& lse_rows, const at::Tensor& lse_cols) const {
    auto p = at::empty_like(s);
    AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "info_nce_weights", [&] {
      const scalar_t* ps = s.const_data_ptr<scalar_t>();
      const scalar_t* pl = lse_rows.const_data_ptr<scalar_t>();
      const scalar_t* pc = lse_cols.const_data_ptr<scalar_t>();
      scalar_t* pp = p.mutable_data_ptr<scalar_t>();
      const int64_t cols = s.size(1);
      at::parallel_for(0, s.size(0), 16, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) row_weights(ps + r * cols, pc, pp + r * cols, cols, pl[r]);
      });
    });
    return p;
  }
};

// 2048 x 2048 tiles (16 MiB in fp32): smaller ones make at::mm markedly less efficient here,
// and the tile is still a small fraction of the eager 2N x 2N matrices.
constexpr int64_t kInfoNceTile = 2048;

std::tuple<at::Tensor, at::Tensor> info_nce_loss_cpu(const at::Tensor& z1, const at::Tensor& z2, double temperature) {
  return info_nce_forward_tiled(z1, z2, temperature, kInfoNceTile, CpuInfoNceEpilogue());
}

std::tuple<at::Tensor, at::Tensor> info_nce_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& z1,
                                                              const at::Tensor& z2, const at::Tensor& lse,
                                                              double temperature) {
  return info_nce_backward_tiled(grad_loss, z1, z2, lse, temperature, kInfoNceTile,
                                 CpuInfoNceEpilogue());
}
}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("bias_act_native", &bias_act_cpu);
  m.impl("bias_act_backward_native", &bias_act_backward_cpu);
  m.impl("group_norm_silu_native", &group_norm_silu_cpu);
  m.impl("group_norm_silu_backward_native", &group_norm_silu_backward_cpu);
  m.impl("info_nce_loss_native", &info_nce_loss_cpu);
  m.impl("info_nce_loss_backward_native", &info_nce_loss_backward_cpu);
}

}  // namespace fastgen
