// CPU kernels for group_norm_silu (math in csrc/common/norm.h, argument checks in
// csrc/common/norm_host.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <type_traits>
#include <vector>

#include "cpu/vec_lanes.h"
#include "common/checks.h"
#include "common/dispatch.h"
#include "common/norm_host.h"
#include "common/norm.h"

namespace fastgen {
namespace {

constexpr int64_t kWork = 1 << 15;  // elements per parallel task (at least)

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
  using L = VecLanes<scalar_t>;
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
  check_group_norm(x_in, weight, bias, num_groups, eps);
  const auto x = x_in.contiguous();
  const GroupView v(x, num_groups);
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto stat_opts = x.options().dtype(opmath_dtype(x.scalar_type()));
  auto mean = at::empty({v.n, v.groups}, stat_opts);
  auto rstd = at::empty({v.n, v.groups}, stat_opts);
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "group_norm_silu_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    using L = VecLanes<scalar_t>;
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
    using L = VecLanes<scalar_t>;
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

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("group_norm_silu_native", &group_norm_silu_cpu);
  m.impl("group_norm_silu_backward_native", &group_norm_silu_backward_cpu);
}

}  // namespace fastgen
