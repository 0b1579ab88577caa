#pragma once
// Host-side pieces of the group_norm_silu entry points, shared by the CPU and CUDA kernels: the
// argument checks (direct torch.ops.fastgen.*_native callers get an error that names the argument).
#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <utility>

#include "common/checks.h"

namespace fastgen {

inline void check_group_norm(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& bias, int64_t num_groups) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "fastgen: x must be a floating-point tensor, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 2, "fastgen: x must have shape (N, C, *), got ", x.sizes());
  TORCH_CHECK_VALUE(num_groups >= 1 && x.size(1) % num_groups == 0, "fastgen: num_groups must divide the ",
                    x.size(1), " channels of x, got ", num_groups);
  for (const auto& [name, p] : {std::make_pair("weight", &weight), std::make_pair("bias", &bias)}) {
    if (!p->has_value()) continue;
    const auto& t = **p;
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == x.size(1), "fastgen: ", name, " must have shape (",
                      x.size(1), ",), got ", t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), "fastgen: ", name, " has dtype ", t.scalar_type(),
                     " but x has ", x.scalar_type());
    check_same_device(x, "x", t, name);
  }
}

inline void check_group_norm_eps(double eps) {
  TORCH_CHECK_VALUE(eps > 0 && std::isfinite(eps), "fastgen: eps must be a positive finite float, got ", eps);
}

inline void check_group_norm_forward(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                     const std::optional<at::Tensor>& bias, int64_t num_groups, double eps) {
  check_group_norm(x, weight, bias, num_groups);
  check_group_norm_eps(eps);
}

// The backward's saved statistics: the forward's (N, num_groups) mean and rstd in the math dtype.
inline void check_group_norm_stats(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                                   int64_t num_groups) {
  const auto stat_dtype = opmath_dtype(x.scalar_type());
  TORCH_CHECK_VALUE(mean.dim() == 2 && mean.size(0) == x.size(0) && mean.size(1) == num_groups &&
                        mean.sizes() == rstd.sizes() && mean.scalar_type() == stat_dtype &&
                        rstd.scalar_type() == stat_dtype,
                    "fastgen: mean and rstd must be the forward's (", x.size(0), ", ", num_groups, ") ",
                    stat_dtype, " statistics");
  check_same_device(x, "x", mean, "mean");
  check_same_device(x, "x", rstd, "rstd");
}

inline void check_group_norm_backward(const at::Tensor& grad, const at::Tensor& x,
                                      const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                      const at::Tensor& mean, const at::Tensor& rstd, int64_t num_groups) {
  check_group_norm(x, weight, bias, num_groups);
  check_same_float_tensor(x, "x", grad, "grad");
  check_group_norm_stats(x, mean, rstd, num_groups);
}

}  // namespace fastgen
