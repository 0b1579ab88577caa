#pragma once
// Host-side pieces of the group_norm_silu entry points, shared by the CPU and CUDA kernels: the
// argument checks (direct torch.ops.fastgen.*_native callers get an error that names the argument).
#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <utility>

#include "common/checks.h"

namespace fastgen {

// fastgen/ops/norm.py _check_group_norm_silu, in its order (eps is checked between num_groups and
// the parameters; the backward, which has no eps, skips it). Complete: native_checks.
inline void check_group_norm(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& bias, int64_t num_groups,
                             std::optional<double> eps) {
  check_float_tensor(x, "x");
  TORCH_CHECK_VALUE(x.dim() >= 2, "fastgen: x must have shape (N, C, *), got " + py_shape(x.sizes()));
  const int64_t channels = x.size(1);
  TORCH_CHECK_VALUE(num_groups >= 1 && channels % num_groups == 0, "fastgen: num_groups must be >= 1 and divide the " +
                    py_int(channels) + " channels of x, got " + py_int(num_groups));
  if (eps.has_value()) {
    TORCH_CHECK_VALUE(*eps > 0 && std::isfinite(*eps),
                      "fastgen: eps must be a positive finite float, got " + py_float(*eps));
  }
  for (const auto& [name, p] : {std::make_pair("weight", &weight), std::make_pair("bias", &bias)}) {
    if (!p->has_value()) continue;
    const auto& t = **p;
    check_float_tensor(t, name);
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == channels, std::string("fastgen: ") + name +
                      " must have shape (" + py_int(channels) + ",), got " + py_shape(t.sizes()));
    TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), std::string("fastgen: ") + name + " has dtype " +
                     py_dtype(t.scalar_type()) + " but x has " + py_dtype(x.scalar_type()));
    check_same_device(x, "x", t, name);
  }
}

// The backward's saved statistics: the forward's (N, num_groups) mean and rstd in the math dtype
// on x's device (_check_group_norm_silu_backward: mean whole, then rstd).
inline void check_group_norm_stats(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                                   int64_t num_groups) {
  const auto stat_dtype = opmath_dtype(x.scalar_type());
  const int64_t want[2] = {x.size(0), num_groups};
  for (const auto& [name, s] : {std::make_pair("mean", &mean), std::make_pair("rstd", &rstd)}) {
    check_float_tensor(*s, name);
    TORCH_CHECK_VALUE(s->sizes() == c10::IntArrayRef(want) && s->scalar_type() == stat_dtype,
                      std::string("fastgen: ") + name + " must be the forward's " + py_shape(want) + " " +
                          py_dtype(stat_dtype) + " statistics, got " + py_shape(s->sizes()) + " " +
                          py_dtype(s->scalar_type()));
    check_same_device(x, "x", *s, name);
  }
}

inline void check_group_norm_backward(const at::Tensor& grad, const at::Tensor& x,
                                      const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                      const at::Tensor& mean, const at::Tensor& rstd, int64_t num_groups) {
  check_group_norm(x, weight, bias, num_groups, std::nullopt);
  check_same_float_tensor(x, "x", grad, "grad");
  check_group_norm_stats(x, mean, rstd, num_groups);
}

}  // namespace fastgen
