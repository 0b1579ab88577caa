// CUDA launchers for the normalizing-flow ops: affine coupling, actnorm, flow_nll (kernels in
// csrc/cuda/flow.cuh, math in csrc/common/flow.h) and invertible_conv1x1 (ATen ops only,
// csrc/common/invconv_host.h).
// Per-sample reductions: grid x = sample, y = chunk of its elements; each block writes one
// partial and the partials are summed per sample afterwards in a fixed order (deterministic,
// no atomics).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "common/dispatch.h"
#include "common/flow_host.h"
#include "common/invconv_host.h"
#include "cuda/device_guard.h"
#include "cuda/launch.h"
#include "cuda/flow.cuh"
#include "cuda/reduce.cuh"
#include "cuda/row_launch.h"

namespace fastgen {
namespace {

// -- affine coupling ----------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> affine_coupling_cuda(const at::Tensor& x_in, const at::Tensor& t_in,
                                                        const at::Tensor& r_in, c10::string_view scale_fn,
                                                        double clamp, bool inverse) {
  const int fn = check_coupling(x_in, t_in, r_in, scale_fn, clamp);
  const auto guard = device_guard(x_in, "x_b");
  const auto x = x_in.contiguous(), t = t_in.contiguous(), r = r_in.contiguous();
  const RowLaunch l(x);
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto acc_dtype = opmath_dtype(x.scalar_type());
  if (l.rows == 0) return {y, at::empty({0}, x.options().dtype(acc_dtype))};
  auto partial = at::empty({l.rows, l.chunks}, x.options().dtype(acc_dtype));
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "affine_coupling_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_coupling(fn, inverse, [&](auto fn_c, auto inv_c) {
      FASTGEN_LAUNCH(l.grid(), kThreads, 0, stream, coupling_forward_kernel<decltype(fn_c)::value, decltype(inv_c)::value, scalar_t, acc_t>)(
              x.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
              y.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), l.cols, l.chunk,
              static_cast<acc_t>(clamp));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  auto logdet = l.chunks == 1 ? partial.view({l.rows}) : partial.sum(1);
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_backward_cuda(
    const at::Tensor& gy_in, const at::Tensor& gl_in, const at::Tensor& x_in, const at::Tensor& t_in,
    const at::Tensor& r_in, c10::string_view scale_fn, double clamp, bool inverse) {
  const int fn = check_coupling_backward(gy_in, gl_in, x_in, t_in, r_in, scale_fn, clamp);
  const auto guard = device_guard(x_in, "x_b");
  const auto x = x_in.contiguous(), t = t_in.contiguous(), r = r_in.contiguous();
  const auto gy = gy_in.contiguous();
  const RowLaunch l(x);
  auto dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto dr = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (l.rows == 0 || l.cols == 0) return {dx, dr};
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "affine_coupling_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto gl = gl_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    dispatch_coupling(fn, inverse, [&](auto fn_c, auto inv_c) {
      FASTGEN_LAUNCH(l.grid(), kThreads, 0, stream, coupling_backward_kernel<decltype(fn_c)::value, decltype(inv_c)::value, scalar_t, acc_t>)(
              gy.const_data_ptr<scalar_t>(), gl.const_data_ptr<acc_t>(), x.const_data_ptr<scalar_t>(),
              t.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
              dr.mutable_data_ptr<scalar_t>(), l.cols, l.chunk, static_cast<acc_t>(clamp));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {dx, dr};
}

// -- actnorm ------------------------------------------------------------------------------------
// Forward / dx: grid-stride over all elements, channel = (i / S) % C. Backward sums: grid
// x = channel, y = chunk of that channel's N * S elements, one partial per block, added over
// chunks in a fixed order. (For (N, D) input, S = 1, a channel's elements are strided by C.)

unsigned elementwise_blocks(int64_t numel) {
  return static_cast<unsigned>(std::min<int64_t>((numel + kThreads - 1) / kThreads, 65535LL * 8));
}

std::tuple<at::Tensor, at::Tensor> actnorm_cuda(const at::Tensor& x_in, const at::Tensor& loc_in,
                                                const at::Tensor& ls_in, bool inverse) {
  check_actnorm(x_in, loc_in, ls_in);
  const auto guard = device_guard(x_in, "x");
  const ActnormShape sh(x_in);
  const auto x = x_in.contiguous();
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto logdet = actnorm_logdet(ls_in, sh, inverse);
  if (x.numel() == 0) return {y, logdet};
  const auto [scale, loc] = actnorm_channel_params(loc_in, ls_in, inverse);
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "actnorm_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto launch = [&](auto inv_c) {
      FASTGEN_LAUNCH(elementwise_blocks(x.numel()), kThreads, 0, stream, actnorm_elementwise_kernel<decltype(inv_c)::value, false, scalar_t, acc_t>)(
              x.const_data_ptr<scalar_t>(), loc.const_data_ptr<acc_t>(), scale.const_data_ptr<acc_t>(),
              y.mutable_data_ptr<scalar_t>(), x.numel(), sh.c, sh.s);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (inverse) launch(std::true_type{});
    else launch(std::false_type{});
  });
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> actnorm_backward_cuda(
    const at::Tensor& gy_in, const at::Tensor& gl_in, const at::Tensor& x_in, const at::Tensor& loc_in,
    const at::Tensor& ls_in, bool inverse) {
  check_actnorm_backward(gy_in, gl_in, x_in, loc_in, ls_in);
  const auto guard = device_guard(x_in, "x");
  const ActnormShape sh(x_in);
  const auto x = x_in.contiguous(), gy = gy_in.contiguous();
  auto dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto math_t = opmath_dtype(x.scalar_type());
  at::Tensor sum_g, sum_gx;
  if (x.numel() == 0) {
    sum_g = at::zeros({sh.c}, x.options().dtype(math_t));
    sum_gx = at::zeros({sh.c}, x.options().dtype(math_t));
  } else {
    TORCH_CHECK_VALUE(sh.c <= INT32_MAX, "fastgen: x has " + py_int(sh.c) + " channels, more than 2^31-1");
    const auto scale = actnorm_channel_params(loc_in, ls_in, inverse).first;
    const int64_t per_channel = sh.n * sh.s;
    const reduce::RowTiling tiling(sh.c, sh.c * per_channel);  // grid (channel, chunk)
    const int64_t chunk = tiling.chunk, chunks = tiling.chunks;
    auto part_g = at::empty({chunks, sh.c}, x.options().dtype(math_t));
    auto part_gx = at::empty({chunks, sh.c}, x.options().dtype(math_t));
    auto stream = at::cuda::getCurrentCUDAStream();
    FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "actnorm_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      FASTGEN_LAUNCH(elementwise_blocks(x.numel()), kThreads, 0, stream, actnorm_elementwise_kernel<false, true, scalar_t, acc_t>)(
              gy.const_data_ptr<scalar_t>(), scale.const_data_ptr<acc_t>(), scale.const_data_ptr<acc_t>(),
              dx.mutable_data_ptr<scalar_t>(), x.numel(), sh.c, sh.s);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      FASTGEN_LAUNCH(dim3(static_cast<unsigned>(sh.c), static_cast<unsigned>(chunks)), kThreads, 0, stream, actnorm_channel_sums_kernel<scalar_t, acc_t>)(
              gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), part_g.mutable_data_ptr<acc_t>(),
              part_gx.mutable_data_ptr<acc_t>(), sh.c, sh.s, per_channel, chunk);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    sum_g = part_g.sum(0);
    sum_gx = part_gx.sum(0);
  }
  auto [d_loc, d_ls] = actnorm_finish(sum_g, sum_gx, gl_in, loc_in, ls_in, sh.s, inverse);
  return {dx, d_loc, d_ls};
}

// -- flow NLL -----------------------------------------------------------------------------------

at::Tensor flow_nll_cuda(const at::Tensor& z_in, const at::Tensor& logdet, c10::string_view prior_name,
                         std::optional<int64_t> n_bins) {
  const int prior = check_flow_nll(z_in, prior_name, n_bins, logdet, "logdet");
  const auto guard = device_guard(z_in, "z");
  const auto z = z_in.contiguous();
  const RowLaunch l(z);
  const auto acc_dtype = opmath_dtype(z.scalar_type());
  at::Tensor terms;
  if (l.rows == 0 || l.cols == 0) {
    terms = at::zeros({l.rows}, z.options().dtype(acc_dtype));
  } else {
    auto partial = at::empty({l.rows, l.chunks}, z.options().dtype(acc_dtype));
    auto stream = at::cuda::getCurrentCUDAStream();
    FASTGEN_DISPATCH_FLOATS(z.scalar_type(), "flow_nll_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      dispatch_prior(prior, [&](auto prior_c) {
        FASTGEN_LAUNCH(l.grid(), kThreads, 0, stream, prior_terms_kernel<decltype(prior_c)::value, scalar_t, acc_t>)(
            z.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), l.cols, l.chunk);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
    terms = l.chunks == 1 ? partial.view({l.rows}) : partial.sum(1);
  }
  return nll_finish(terms, logdet, dims_per_sample(z), prior, n_bins);
}

at::Tensor flow_nll_backward_cuda(const at::Tensor& g_in, const at::Tensor& z_in, c10::string_view prior_name,
                                  std::optional<int64_t> n_bins) {
  const int prior = check_flow_nll(z_in, prior_name, n_bins, g_in, "grad_nll");
  const auto guard = device_guard(z_in, "z");
  const auto z = z_in.contiguous();
  const RowLaunch l(z);
  auto dz = at::empty_like(z, at::MemoryFormat::Contiguous);
  if (l.rows == 0 || l.cols == 0) return dz;
  const auto acc_dtype = opmath_dtype(z.scalar_type());
  const auto g = (g_in.to(acc_dtype) * nll_grad_scale(dims_per_sample(z), n_bins)).contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTGEN_DISPATCH_FLOATS(z.scalar_type(), "flow_nll_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_prior(prior, [&](auto prior_c) {
      FASTGEN_LAUNCH(l.grid(), kThreads, 0, stream, prior_grad_kernel<decltype(prior_c)::value, scalar_t, acc_t>)(
          g.const_data_ptr<acc_t>(), z.const_data_ptr<scalar_t>(), dz.mutable_data_ptr<scalar_t>(), l.cols,
          l.chunk);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return dz;
}

// invertible_conv1x1 is ATen code shared with the CPU entry point (common/invconv_host.h); here
// it runs under x's device guard (checked first: the guard is set from x, a host x next to CUDA
// parameters must be reported by name, not by the guard).
std::tuple<at::Tensor, at::Tensor> invconv_cuda(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lower,
                                                const at::Tensor& upper, const at::Tensor& sign,
                                                const at::Tensor& log_s, bool inverse) {
  check_invconv(x, perm, lower, upper, sign, log_s);
  const auto guard = device_guard(x, "x");
  return invconv_forward(x, perm, lower, upper, sign, log_s, inverse);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> invconv_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x, const at::Tensor& perm,
    const at::Tensor& lower, const at::Tensor& upper, const at::Tensor& sign, const at::Tensor& log_s,
    bool inverse) {
  check_invconv(x, perm, lower, upper, sign, log_s);
  check_invconv_grads(grad_y, grad_logdet, x);
  const auto guard = device_guard(x, "x");
  return invconv_backward(grad_y, grad_logdet, x, perm, lower, upper, sign, log_s, inverse);
}

}  // namespace

FASTGEN_CUDA_LIBRARY_IMPL(m) {
  m.impl("invertible_conv1x1_native", &invconv_cuda);
  m.impl("invertible_conv1x1_backward_native", &invconv_backward_cuda);
  m.impl("affine_coupling_native", &affine_coupling_cuda);
  m.impl("affine_coupling_backward_native", &affine_coupling_backward_cuda);
  m.impl("actnorm_native", &actnorm_cuda);
  m.impl("actnorm_backward_native", &actnorm_backward_cuda);
  m.impl("flow_nll_native", &flow_nll_cuda);
  m.impl("flow_nll_backward_native", &flow_nll_backward_cuda);
}

}  // namespace fastgen
