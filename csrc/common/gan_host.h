#pragma once
// Host-side pieces of the bias_act and group_norm_silu entry points, shared by the CPU and CUDA
// kernels: argument checks (direct torch.ops.fastgen.*_native callers get an error that names the
// argument), the activation name's dispatch and the (outer, C, inner) view of x.
#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "common/checks.h"
#include "common/gan.h"

namespace fastgen {

// f(std::integral_constant<Act, A>) for the activation named `act`.
template <typename F>
void dispatch_act(c10::string_view act, F&& f) {
  if (act == "leaky_relu") return f(std::integral_constant<Act, Act::kLeakyRelu>());
  if (act == "relu") return f(std::integral_constant<Act, Act::kRelu>());
  if (act == "silu") return f(std::integral_constant<Act, Act::kSilu>());
  if (act == "gelu") return f(std::integral_constant<Act, Act::kGelu>());
  TORCH_CHECK_VALUE(false, "fastgen: act must be one of leaky_relu, relu, silu, gelu, got '",
                    std::string(act), "'");
}

// x viewed as (outer, C, inner) around dim (checked by check_bias_act), C = x.shape[dim].
struct ChannelView {
  int64_t outer, channels, inner;
  ChannelView(const at::Tensor& x, int64_t dim) {
    dim = dim < 0 ? dim + x.dim() : dim;
    channels = x.size(dim);
    inner = 1;
    for (int64_t i = dim + 1; i < x.dim(); ++i) inner *= x.size(i);
    outer = channels * inner == 0 ? 0 : x.numel() / (channels * inner);
  }
};

// Complete: the Python layer skips its own checks on the cpu / cuda backends (native_checks).
inline void check_bias_act(const at::Tensor& x, const std::optional<at::Tensor>& bias, int64_t dim, double alpha,
                           double gain) {
  TORCH_CHECK_VALUE(std::isfinite(alpha) && std::isfinite(gain), "fastgen: alpha and gain must be finite, got alpha=",
                    alpha, ", gain=", gain);
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "fastgen: x must be a floating-point tensor, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 1, "fastgen: x must have at least one dim");
  TORCH_CHECK_VALUE(dim >= -x.dim() && dim < x.dim(), "fastgen: dim ", dim, " out of range for x of shape ",
                    x.sizes());
  if (bias.has_value()) {
    const auto& b = *bias;
    const int64_t c = x.size(dim < 0 ? dim + x.dim() : dim);
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == c, "fastgen: bias must have shape (", c, ",), got ",
                      b.sizes());
    TORCH_CHECK_TYPE(b.scalar_type() == x.scalar_type(), "fastgen: bias has dtype ", b.scalar_type(),
                     " but x has ", x.scalar_type());
    check_same_device(x, "x", b, "bias");
  }
}

inline void check_bias_act_backward(const at::Tensor& grad, const at::Tensor& x,
                                    const std::optional<at::Tensor>& bias, int64_t dim, double alpha, double gain) {
  check_bias_act(x, bias, dim, alpha, gain);
  check_same_float_tensor(x, "x", grad, "grad");
}

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
