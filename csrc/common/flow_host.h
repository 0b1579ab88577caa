#pragma once
// Host-side pieces of the flow ops shared by the CPU and CUDA entry points: argument checks
// (direct torch.ops.fastgen.*_native callers get a clear error, not a crash) and the dispatch
// of the runtime scale function / direction onto the templated formulas of common/flow.h.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <type_traits>

#include "common/checks.h"
#include "common/flow.h"

namespace fastgen {

// _check_scale_args (scale_fn, then clamp; the schema types the three): the scale function's id.
inline int parse_scale_fn(c10::string_view name) {
  if (name == "exp") return kExp;
  if (name == "sigmoid") return kSigmoid;
  if (name == "tanh_exp") return kTanhExp;
  if (name == "atan_exp") return kAtanExp;
  TORCH_CHECK_VALUE(false, std::string("fastgen: scale_fn must be one of ('exp', 'sigmoid', 'tanh_exp', "
                    "'atan_exp'), got ") + py_str(name));
  return kExp;
}

inline int check_scale_args(c10::string_view scale_fn, double clamp) {
  const int fn = parse_scale_fn(scale_fn);
  TORCH_CHECK_VALUE(std::isfinite(clamp) && clamp > 0,
                    std::string("fastgen: clamp must be a finite float > 0, got ") + py_float(clamp));
  return fn;
}

// _check_coupling: the tensors, then the scale arguments; returns the scale function's id.
inline int check_coupling(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& raw,
                          c10::string_view scale_fn, double clamp) {
  check_float_tensor(x, "x_b");
  TORCH_CHECK_VALUE(x.dim() >= 1, "fastgen: x_b must have a leading batch dim, got a 0-d tensor");
  check_same_float_tensor(x, "x_b", shift, "shift");
  check_same_float_tensor(x, "x_b", raw, "raw_scale");
  return check_scale_args(scale_fn, clamp);
}

// f(std::integral_constant<int, FN>{}, std::bool_constant<INVERSE>{}) for the runtime choice.
template <typename F>
void dispatch_coupling(int fn, bool inverse, F&& f) {
  auto with_fn = [&](auto fn_c) {
    if (inverse) f(fn_c, std::true_type{});
    else f(fn_c, std::false_type{});
  };
  switch (fn) {
    case kExp: with_fn(std::integral_constant<int, kExp>{}); break;
    case kSigmoid: with_fn(std::integral_constant<int, kSigmoid>{}); break;
    case kTanhExp: with_fn(std::integral_constant<int, kTanhExp>{}); break;
    default: with_fn(std::integral_constant<int, kAtanExp>{}); break;
  }
}

// -- actnorm ------------------------------------------------------------------------------------

// _check_actnorm (inverse is typed by the schema).
inline void check_actnorm(const at::Tensor& x, const at::Tensor& loc, const at::Tensor& log_scale) {
  check_float_tensor(x, "x");
  TORCH_CHECK_VALUE(x.dim() >= 2, "fastgen: x must have shape (N, C, *spatial) (NCHW or (N, D)), got " +
                    py_shape(x.sizes()));
  const int64_t c = x.size(1);
  auto check_param = [&](const at::Tensor& p, const char* name) {
    check_float_tensor(p, name);
    TORCH_CHECK_VALUE(p.dim() == 1 && p.size(0) == c, std::string("fastgen: ") + name + " must have shape (" +
                      py_int(c) + ",) (one entry per channel of x), got " + py_shape(p.sizes()));
    TORCH_CHECK_TYPE(p.scalar_type() == x.scalar_type(), std::string("fastgen: ") + name + " has dtype " +
                     py_dtype(p.scalar_type()) + " but x has " + py_dtype(x.scalar_type()));
    check_same_device(x, "x", p, name);
  };
  check_param(loc, "loc");
  check_param(log_scale, "log_scale");
}

// (N, C, S) of x (N, C, *spatial).
struct ActnormShape {
  int64_t n, c, s;
  explicit ActnormShape(const at::Tensor& x) : n(x.size(0)), c(x.size(1)), s(1) {
    for (int64_t d = 2; d < x.dim(); ++d) s *= x.size(d);
  }
};

// exp(log_scale) (forward) or exp(-log_scale) (inverse) per channel, and loc, in the math dtype.
inline std::pair<at::Tensor, at::Tensor> actnorm_channel_params(const at::Tensor& loc,
                                                                const at::Tensor& log_scale,
                                                                bool inverse) {
  const auto t = opmath_dtype(log_scale.scalar_type());
  const auto ls = log_scale.to(t);
  return {(inverse ? -ls : ls).exp().contiguous(), loc.to(t).contiguous()};
}

inline at::Tensor actnorm_logdet(const at::Tensor& log_scale, const ActnormShape& sh, bool inverse) {
  const auto total = log_scale.to(opmath_dtype(log_scale.scalar_type())).sum() * static_cast<double>(sh.s);
  return (inverse ? -total : total).expand({sh.n}).contiguous();
}

// (d loc, d log_scale) from per-channel sums of g and g * x (math dtype), as
// kernels/flow.py:actnorm_finish.
inline std::pair<at::Tensor, at::Tensor> actnorm_finish(const at::Tensor& sum_g, const at::Tensor& sum_gx,
                                                        const at::Tensor& grad_logdet, const at::Tensor& loc,
                                                        const at::Tensor& log_scale, int64_t s, bool inverse) {
  const auto t = sum_g.scalar_type();
  const auto ls = log_scale.to(t), loc_m = loc.to(t);
  const auto gl_total = grad_logdet.to(t).sum() * static_cast<double>(s);
  if (inverse) {
    return {(-sum_g).to(loc.scalar_type()), (-(-ls).exp() * sum_gx - gl_total).to(log_scale.scalar_type())};
  }
  const auto scale = ls.exp();
  return {(scale * sum_g).to(loc.scalar_type()),
          (scale * (sum_gx + loc_m * sum_g) + gl_total).to(log_scale.scalar_type())};
}

// -- flow NLL -----------------------------------------------------------------------------------

inline int parse_prior(c10::string_view name) {
  if (name == "gaussian") return kGaussian;
  if (name == "logistic") return kLogistic;
  TORCH_CHECK_VALUE(false, std::string("fastgen: prior must be one of ('gaussian', 'logistic'), got ") +
                    py_str(name));
  return kGaussian;
}

inline int64_t dims_per_sample(const at::Tensor& z) {
  int64_t d = 1;
  for (int64_t i = 1; i < z.dim(); ++i) d *= z.size(i);
  return d;
}

// _check_nll_args then _check_nll_z: the prior's id.
inline int check_flow_nll(const at::Tensor& z, c10::string_view prior_name, std::optional<int64_t> n_bins) {
  const int prior = parse_prior(prior_name);
  TORCH_CHECK_VALUE(!n_bins.has_value() || *n_bins >= 1,
                    "fastgen: n_bins must be >= 1, got " + py_int(n_bins.value_or(0)));
  check_float_tensor(z, "z");
  TORCH_CHECK_VALUE(z.dim() >= 1, "fastgen: z must have a leading batch dim, got a 0-d tensor");
  TORCH_CHECK_VALUE(!n_bins.has_value() || dims_per_sample(z) > 0,
                    "fastgen: bits per dim need at least one dim per sample; z has shape " + py_shape(z.sizes()));
  return prior;
}

// nll or bits/dim (B,) from the per-sample sums of prior_term, as kernels/flow.py:nll_finish.
inline at::Tensor nll_finish(const at::Tensor& terms, const at::Tensor& logdet, int64_t d, int prior,
                             std::optional<int64_t> n_bins) {
  auto nll = terms - logdet.to(terms.scalar_type());
  const double dd = static_cast<double>(d);
  if (prior == kGaussian) nll = nll + 0.5 * std::log(2 * M_PI) * dd;
  if (n_bins.has_value()) nll = (nll + dd * std::log(static_cast<double>(*n_bins))) / (dd * std::log(2.0));
  return nll;
}

inline double nll_grad_scale(int64_t d, std::optional<int64_t> n_bins) {
  return n_bins.has_value() ? 1.0 / (static_cast<double>(d) * std::log(2.0)) : 1.0;
}

template <typename F>
void dispatch_prior(int prior, F&& f) {
  if (prior == kGaussian) f(std::integral_constant<int, kGaussian>{});
  else f(std::integral_constant<int, kLogistic>{});
}

// The backward entry points' checks: the forward's, and the incoming gradients.
inline int check_coupling_backward(const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x,
                                   const at::Tensor& shift, const at::Tensor& raw, c10::string_view scale_fn,
                                   double clamp) {
  const int fn = check_coupling(x, shift, raw, scale_fn, clamp);
  check_same_float_tensor(x, "x_b", grad_y, "grad_y");
  check_per_sample(x, "x_b", grad_logdet, "grad_logdet");
  return fn;
}

inline void check_actnorm_backward(const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x,
                                   const at::Tensor& loc, const at::Tensor& log_scale) {
  check_actnorm(x, loc, log_scale);
  check_same_float_tensor(x, "x", grad_y, "grad_y");
  check_per_sample(x, "x", grad_logdet, "grad_logdet");
}

// flow_nll (t: logdet) and its backward (t: grad_nll): one value per sample of z. The prior's id.
inline int check_flow_nll(const at::Tensor& z, c10::string_view prior_name, std::optional<int64_t> n_bins,
                          const at::Tensor& t, const char* name) {
  const int prior = check_flow_nll(z, prior_name, n_bins);
  check_per_sample(z, "z", t, name);
  return prior;
}

}  // namespace fastgen
