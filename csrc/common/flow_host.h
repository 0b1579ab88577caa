#pragma once
// Host-side pieces of the flow ops shared by the CPU and CUDA entry points: argument checks
// (direct torch.ops.fastgen.*_native callers get a clear error, not a crash) and the dispatch
// of the runtime scale function / direction onto the templated formulas of common/flow.h.
#include <ATen/ATen.h>

#include <string>
#include <type_traits>

#include "common/checks.h"
#include "common/flow.h"

namespace fastgen {

inline int parse_scale_fn(c10::string_view name) {
  if (name == "exp") return kExp;
  if (name == "sigmoid") return kSigmoid;
  if (name == "tanh_exp") return kTanhExp;
  if (name == "atan_exp") return kAtanExp;
  TORCH_CHECK_VALUE(false, "fastgen: scale_fn must be one of 'exp', 'sigmoid', 'tanh_exp', "
                    "'atan_exp', got '", std::string(name), "'");
  return kExp;
}

inline void check_coupling(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& raw,
                           double clamp) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "fastgen: x_b must have a leading batch dim");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "fastgen: x_b must be a floating-point "
                   "tensor, got ", x.scalar_type());
  check_same_float_tensor(x, "x_b", shift, "shift");
  check_same_float_tensor(x, "x_b", raw, "raw_scale");
  TORCH_CHECK_VALUE(clamp > 0 && clamp < INFINITY, "fastgen: clamp must be a finite float > 0, got ",
                    clamp);
}

inline void check_per_sample(const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                             const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "fastgen: ", name,
                   " must be a floating-point tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == ref.size(0), "fastgen: ", name, " must have shape (",
                    ref.size(0), ",), got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == ref.device(), "fastgen: ", name, " is on ", t.device(), " but ",
                    ref_name, " is on ", ref.device());
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

}  // namespace fastgen
