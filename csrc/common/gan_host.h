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

// The activation's id, or -1 for a name that is none of them (BIAS_ACTS in fastgen/ops/gan.py).
inline int parse_act(c10::string_view act) {
  if (act == "leaky_relu") return static_cast<int>(Act::kLeakyRelu);
  if (act == "relu") return static_cast<int>(Act::kRelu);
  if (act == "silu") return static_cast<int>(Act::kSilu);
  if (act == "gelu") return static_cast<int>(Act::kGelu);
  return -1;
}

inline void check_act(c10::string_view act) {
  TORCH_CHECK_VALUE(parse_act(act) >= 0,
                    "fastgen: act must be one of ('leaky_relu', 'relu', 'silu', 'gelu'), got " + py_str(act));
}

// f(std::integral_constant<Act, A>) for the activation named `act` (checked by check_bias_act).
template <typename F>
void dispatch_act(c10::string_view act, F&& f) {
  switch (parse_act(act)) {
    case static_cast<int>(Act::kLeakyRelu): return f(std::integral_constant<Act, Act::kLeakyRelu>());
    case static_cast<int>(Act::kRelu): return f(std::integral_constant<Act, Act::kRelu>());
    case static_cast<int>(Act::kSilu): return f(std::integral_constant<Act, Act::kSilu>());
    case static_cast<int>(Act::kGelu): return f(std::integral_constant<Act, Act::kGelu>());
    default: check_act(act);  // raises
  }
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

// fastgen/ops/gan.py _check_bias_act, in its order: complete (the cpu backend's Python layer
// leaves the checks of this op to it, native_checks).
inline void check_bias_act(const at::Tensor& x, const std::optional<at::Tensor>& bias, c10::string_view act,
                           double alpha, double gain, int64_t dim) {
  check_float_tensor(x, "x");
  TORCH_CHECK_VALUE(x.dim() >= 1, "fastgen: x must have at least one dim (the channel dim), got a 0-d tensor");
  TORCH_CHECK_VALUE(dim >= -x.dim() && dim < x.dim(), "fastgen: dim must be in [" + py_int(-x.dim()) + ", " +
                    py_int(x.dim() - 1) + "] for x of shape " + py_shape(x.sizes()) + ", got " + py_int(dim));
  if (bias.has_value()) {
    const auto& b = *bias;
    check_float_tensor(b, "bias");
    const int64_t c = x.size(dim < 0 ? dim + x.dim() : dim);
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == c, "fastgen: bias must have shape (" + py_int(c) +
                      ",) (x.shape[" + py_int(dim) + "]), got " + py_shape(b.sizes()));
    TORCH_CHECK_TYPE(b.scalar_type() == x.scalar_type(), "fastgen: bias has dtype " + py_dtype(b.scalar_type()) +
                     " but x has " + py_dtype(x.scalar_type()));
    check_same_device(x, "x", b, "bias");
  }
  check_act(act);
  TORCH_CHECK_VALUE(std::isfinite(alpha) && std::isfinite(gain), "fastgen: alpha and gain must be finite, got alpha=" +
                    py_float(alpha) + ", gain=" + py_float(gain));
}

inline void check_bias_act_backward(const at::Tensor& grad, const at::Tensor& x,
                                    const std::optional<at::Tensor>& bias, c10::string_view act, double alpha,
                                    double gain, int64_t dim) {
  check_bias_act(x, bias, act, alpha, gain, dim);
  check_same_float_tensor(x, "x", grad, "grad");
}

}  // namespace fastgen
