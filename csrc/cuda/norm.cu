// CUDA launchers for group_norm_silu (kernels in csrc/cuda/norm.cuh, math in csrc/common/norm.h,
// argument checks in csrc/common/norm_host.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

#include "common/checks.h"
#include "common/dispatch.h"
#include "common/norm.h"
#include "common/norm_host.h"
#include "cuda/device_guard.h"
#include "cuda/launch.h"
#include "cuda/norm.cuh"
#include "cuda/reduce.cuh"

namespace fastgen {
namespace {

// ---- group_norm_silu ---------------------------------------------------------------------------
// One block per (sample, group); the group's m = Cg * HW elements are contiguous. Forward: mean,
// centred variance (two passes, the second mostly from L2), output. Backward: per channel of
// the group, block sums of gy and gy * (x - mean) (written out for dweight / dbias, which are
// reduced over the batch afterwards), then dx.

const void* opt_ptr(const std::optional<at::Tensor>& t) { return t.has_value() ? t->const_data_ptr() : nullptr; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_silu_cuda(const at::Tensor& x_in,
                                                                    const std::optional<at::Tensor>& weight_in,
                                                                    const std::optional<at::Tensor>& bias_in,
                                                                    int64_t num_groups, double eps, bool act) {
  check_group_norm(x_in, weight_in, bias_in, num_groups, eps);
  const auto guard = device_guard(x_in, "x");
  const auto x = x_in.contiguous();
  const std::optional<at::Tensor> weight = weight_in ? std::optional<at::Tensor>(weight_in->contiguous()) : std::nullopt;
  const std::optional<at::Tensor> bias = bias_in ? std::optional<at::Tensor>(bias_in->contiguous()) : std::nullopt;
  const int64_t n = x.size(0), c = x.size(1), cg = c / num_groups;
  const int64_t hw = n * c == 0 ? 0 : x.numel() / (n * c);
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto stat_opts = x.options().dtype(opmath_dtype(x.scalar_type()));
  auto mean = at::zeros({n, num_groups}, stat_opts);
  auto rstd = at::full({n, num_groups}, 1.0 / std::sqrt(eps), stat_opts);
  if (n == 0 || cg * hw == 0) return {y, mean, rstd};
  TORCH_CHECK_VALUE(n * num_groups <= INT32_MAX, "fastgen: N * num_groups exceeds 2^31-1");
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "group_norm_silu_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto launch = [&](auto act_tag) {
      FASTGEN_LAUNCH(static_cast<unsigned>(n * num_groups), kThreads, 0, stream, group_norm_forward_kernel<decltype(act_tag)::value, scalar_t, acc_t>)(
              x.const_data_ptr<scalar_t>(), static_cast<const scalar_t*>(opt_ptr(weight)),
              static_cast<const scalar_t*>(opt_ptr(bias)), y.mutable_data_ptr<scalar_t>(),
              mean.mutable_data_ptr<acc_t>(), rstd.mutable_data_ptr<acc_t>(), num_groups, cg, hw,
              static_cast<acc_t>(eps));
    };
    if (act) launch(std::true_type()); else launch(std::false_type());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_silu_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& x_in, const std::optional<at::Tensor>& weight_in,
    const std::optional<at::Tensor>& bias_in, const at::Tensor& mean_in, const at::Tensor& rstd_in,
    int64_t num_groups, bool act) {
  check_group_norm_backward(grad_in, x_in, weight_in, bias_in, mean_in, rstd_in, num_groups);
  const auto guard = device_guard(x_in, "x");
  const auto x = x_in.contiguous(), grad = grad_in.contiguous();
  const std::optional<at::Tensor> weight = weight_in ? std::optional<at::Tensor>(weight_in->contiguous()) : std::nullopt;
  const std::optional<at::Tensor> bias = bias_in ? std::optional<at::Tensor>(bias_in->contiguous()) : std::nullopt;
  const int64_t n = x.size(0), c = x.size(1), cg = c / num_groups;
  const int64_t hw = n * c == 0 ? 0 : x.numel() / (n * c);
  const auto stat_dtype = opmath_dtype(x.scalar_type());
  const auto mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  auto dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto sa = at::zeros({n, num_groups, cg}, x.options().dtype(stat_dtype));
  auto sb = at::zeros({n, num_groups, cg}, x.options().dtype(stat_dtype));
  if (n > 0 && cg * hw > 0) {
    TORCH_CHECK_VALUE(n * num_groups <= INT32_MAX, "fastgen: N * num_groups exceeds 2^31-1");
    auto stream = at::cuda::getCurrentCUDAStream();
    FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "group_norm_silu_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto launch = [&](auto act_tag) {
        FASTGEN_LAUNCH(static_cast<unsigned>(n * num_groups), kThreads, 0, stream, group_norm_backward_kernel<decltype(act_tag)::value, scalar_t, acc_t>)(
                grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                static_cast<const scalar_t*>(opt_ptr(weight)), static_cast<const scalar_t*>(opt_ptr(bias)),
                mean.const_data_ptr<acc_t>(), rstd.const_data_ptr<acc_t>(), dx.mutable_data_ptr<scalar_t>(),
                sa.mutable_data_ptr<acc_t>(), sb.mutable_data_ptr<acc_t>(), num_groups, cg, hw);
      };
      if (act) launch(std::true_type()); else launch(std::false_type());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  auto dw = weight ? (sa * rstd.unsqueeze(-1)).sum(0).reshape({c}).to(weight->scalar_type()) : at::empty({0}, x.options());
  auto db = bias ? sb.sum(0).reshape({c}).to(bias->scalar_type()) : at::empty({0}, x.options());
  return {dx, dw, db};
}

}  // namespace

FASTGEN_CUDA_LIBRARY_IMPL(m) {
  m.impl("group_norm_silu_native", &group_norm_silu_cuda);
  m.impl("group_norm_silu_backward_native", &group_norm_silu_backward_cuda);
}

}  // namespace fastgen
