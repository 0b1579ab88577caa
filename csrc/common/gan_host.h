#pragma once
// Host-side pieces of the bias_act entry points, shared by the CPU and CUDA kernels: argument
// checks (direct torch.ops.fastgen.*_native callers get an error that names the
// argument), the activation name's dispatch and the (outer, C, inner) view of x.
#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <string>
#include <type_traits>

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

}  // namespace fastgen
