// CUDA launchers for the GAN / SimCLR family: bias_act, group_norm_silu and info_nce_loss
// (kernels in csrc/cuda/gan.cuh, math in csrc/common/gan.h, the info_nce driver in
// csrc/common/info_nce.h).
//
// bias_act views x as (outer, C, inner), C = x.shape[dim]. The forward is a grid-stride
// elementwise kernel. The backward's grid is (channel tiles, row blocks): each block writes its
// dx and one partial dbias per channel; the partials are summed over row blocks afterwards
// (deterministic, no atomics).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>

#include "common/checks.h"
#include "common/dispatch.h"
#include "common/gan.h"
#include "common/gan_host.h"
#include "common/info_nce.h"
#include "cuda/device_guard.h"
#include "cuda/launch.h"
#include "cuda/gan.cuh"
#include "cuda/reduce.cuh"

namespace fastgen {
namespace {

at::Tensor bias_act_cuda(const at::Tensor& x_in, const std::optional<at::Tensor>& bias_in, c10::string_view act,
                         double alpha, double gain, int64_t dim) {
  check_bias_act(x_in, bias_in, dim, alpha, gain);
  const auto guard = device_guard(x_in, "x");
  const auto x = x_in.contiguous();
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return out;
  const std::optional<at::Tensor> bias = bias_in.has_value() ? std::optional<at::Tensor>(bias_in->contiguous())
                                                             : std::nullopt;
  const ChannelView v(x, dim);
  const int64_t blocks = std::min<int64_t>((x.numel() + kThreads - 1) / kThreads, 65536 * 8);
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "bias_act_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_act(act, [&](auto tag) {
      constexpr Act A = decltype(tag)::value;
      FASTGEN_LAUNCH(blocks, kThreads, 0, stream, bias_act_forward_kernel<A, scalar_t, acc_t>)(
          x.const_data_ptr<scalar_t>(), bias ? bias->const_data_ptr<scalar_t>() : nullptr,
          out.mutable_data_ptr<scalar_t>(), x.numel(), v.channels, v.inner, static_cast<acc_t>(alpha),
          static_cast<acc_t>(gain));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> bias_act_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                          const std::optional<at::Tensor>& bias_in,
                                                          c10::string_view act, double alpha, double gain,
                                                          int64_t dim) {
  check_bias_act_backward(grad_in, x_in, bias_in, dim, alpha, gain);
  const auto guard = device_guard(x_in, "x");
  const auto x = x_in.contiguous(), grad = grad_in.contiguous();
  auto dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const bool want_db = bias_in.has_value();
  if (x.numel() == 0) return {dx, want_db ? at::zeros_like(*bias_in) : at::empty({0}, x.options())};
  const std::optional<at::Tensor> bias = want_db ? std::optional<at::Tensor>(bias_in->contiguous())
                                                 : std::nullopt;
  const ChannelView v(x, dim);
  const bool planes = v.inner > 1;
  const int64_t tiles = planes ? v.channels : (v.channels + kThreads - 1) / kThreads;
  TORCH_CHECK_VALUE(tiles <= INT32_MAX, "fastgen: too many channels (", v.channels, ")");
  // About 2048 blocks in all: enough to fill the GPU, few partials to sum.
  const int64_t row_blocks = std::min<int64_t>(std::max<int64_t>(1, 2048 / tiles), std::min<int64_t>(v.outer, 65535));
  const int64_t rows_per_block = (v.outer + row_blocks - 1) / row_blocks;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>((v.outer + rows_per_block - 1) / rows_per_block));
  const auto acc_dtype = opmath_dtype(x.scalar_type());
  auto partial = want_db ? at::empty({grid.y, v.channels}, x.options().dtype(acc_dtype)) : at::Tensor();
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "bias_act_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_act(act, [&](auto tag) {
      constexpr Act A = decltype(tag)::value;
      const auto launch = [&](auto planes_tag) {
        FASTGEN_LAUNCH(grid, kThreads, 0, stream, bias_act_backward_kernel<A, decltype(planes_tag)::value, scalar_t, acc_t>)(
            grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
            bias ? bias->const_data_ptr<scalar_t>() : nullptr, dx.mutable_data_ptr<scalar_t>(),
            want_db ? partial.mutable_data_ptr<acc_t>() : nullptr, v.outer, v.channels, v.inner, rows_per_block,
            static_cast<acc_t>(alpha), static_cast<acc_t>(gain));
      };
      if (planes) launch(std::true_type()); else launch(std::false_type());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  auto db = want_db ? partial.sum(0).to(bias_in->scalar_type()) : at::empty({0}, x.options());
  return {dx, db};
}

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
  check_group_norm_forward(x_in, weight_in, bias_in, num_groups, eps);
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

// ---- info_nce_loss ------------------------------------------------------------------------------
// Driver: common/info_nce.h (tile GEMMs on cuBLAS). Epilogue: one block per tile row computes
// the row's max and sum of exp and folds them into the running logsumexp.

struct CudaInfoNceEpilogue {
  void lse_update(const at::Tensor& s, at::Tensor& running) const {
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "info_nce_lse_cuda", [&] {
      FASTGEN_LAUNCH(static_cast<unsigned>(s.size(0)), kThreads, 0, stream, info_nce_lse_kernel<scalar_t>)(
          s.const_data_ptr<scalar_t>(), running.mutable_data_ptr<scalar_t>(), s.size(1));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  at::Tensor weights(const at::Tensor& s, const at::Tensor& lse_rows, const at::Tensor& lse_cols) const {
    auto p = at::empty_like(s);
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "info_nce_weights_cuda", [&] {
      FASTGEN_LAUNCH(static_cast<unsigned>(s.size(0)), kThreads, 0, stream, info_nce_weights_kernel<scalar_t>)(
          s.const_data_ptr<scalar_t>(), lse_rows.const_data_ptr<scalar_t>(), lse_cols.const_data_ptr<scalar_t>(),
          p.mutable_data_ptr<scalar_t>(), s.size(1));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return p;
  }
};

// 4096 x 4096 fp32 tiles: 64 MiB, large enough for cuBLAS to run near peak.
constexpr int64_t kInfoNceTile = 4096;

std::tuple<at::Tensor, at::Tensor> info_nce_loss_cuda(const at::Tensor& z1, const at::Tensor& z2, double temperature) {
  check_info_nce(z1, z2, temperature);  // before the guard, which is set from z1
  const auto guard = device_guard(z1, "z1");
  return info_nce_forward_tiled(z1, z2, temperature, kInfoNceTile, CudaInfoNceEpilogue());
}

std::tuple<at::Tensor, at::Tensor> info_nce_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& z1,
                                                               const at::Tensor& z2, const at::Tensor& lse,
                                                               double temperature) {
  check_info_nce_backward(grad_loss, z1, z2, lse, temperature);  // before the guard, which is set from z1
  const auto guard = device_guard(z1, "z1");
  return info_nce_backward_tiled(grad_loss, z1, z2, lse, temperature, kInfoNceTile,
                                 CudaInfoNceEpilogue());
}

}  // namespace

FASTGEN_CUDA_LIBRARY_IMPL(m) {
  m.impl("bias_act_native", &bias_act_cuda);
  m.impl("bias_act_backward_native", &bias_act_backward_cuda);
  m.impl("group_norm_silu_native", &group_norm_silu_cuda);
  m.impl("group_norm_silu_backward_native", &group_norm_silu_backward_cuda);
  m.impl("info_nce_loss_native", &info_nce_loss_cuda);
  m.impl("info_nce_loss_backward_native", &info_nce_loss_backward_cuda);
}

}  // namespace fastgen
