// CUDA launchers for bias_act (kernels in csrc/cuda/gan.cuh, math in csrc/common/gan.h, argument
// checks in csrc/common/gan_host.h).
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
#include <optional>

#include "common/checks.h"
#include "common/dispatch.h"
#include "common/gan.h"
#include "common/gan_host.h"
#include "cuda/device_guard.h"
#include "cuda/launch.h"
#include "cuda/gan.cuh"
#include "cuda/reduce.cuh"

namespace fastgen {
namespace {

at::Tensor bias_act_cuda(const at::Tensor& x_in, const std::optional<at::Tensor>& bias_in, c10::string_view act,
                         double alpha, double gain, int64_t dim) {
  check_bias_act(x_in, bias_in, act, alpha, gain, dim);
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
  check_bias_act_backward(grad_in, x_in, bias_in, act, alpha, gain, dim);
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
  TORCH_CHECK_VALUE(tiles <= INT32_MAX, "fastgen: too many channels (" + py_int(v.channels) + ")");
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

}  // namespace

FASTGEN_CUDA_LIBRARY_IMPL(m) {
  m.impl("bias_act_native", &bias_act_cuda);
  m.impl("bias_act_backward_native", &bias_act_backward_cuda);
}

}  // namespace fastgen
