// CUDA launchers for gaussian_reparam_kl (kernels in csrc/cuda/vae.cuh, math in csrc/common/vae.h).
// Grid: x = sample, y = chunk of that sample's elements. Each block writes one partial KL sum;
// partials are summed per sample afterwards in a fixed order (deterministic, no atomics).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/dispatch.h"
#include "common/vae.h"
#include "common/vae_host.h"
#include "cuda/device_guard.h"
#include "cuda/launch.h"
#include "cuda/vae.cuh"
#include "cuda/reduce.cuh"
#include "cuda/row_launch.h"

namespace fastgen {
namespace {

std::tuple<at::Tensor, at::Tensor> reparam_kl_cuda(const at::Tensor& mu_in, const at::Tensor& lv_in,
                                                   const at::Tensor& eps_in) {
  check_reparam_kl(mu_in, lv_in, eps_in);
  const auto guard = device_guard(mu_in, "mu");
  const auto mu = mu_in.contiguous(), lv = lv_in.contiguous(), eps = eps_in.contiguous();
  const RowLaunch l(mu);
  auto z = at::empty_like(mu, at::MemoryFormat::Contiguous);
  const auto acc_dtype = opmath_dtype(mu.scalar_type());
  if (l.rows == 0) return {z, at::empty({0}, mu.options().dtype(acc_dtype))};
  auto partial = at::empty({l.rows, l.chunks}, mu.options().dtype(acc_dtype));
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTGEN_DISPATCH_FLOATS(mu.scalar_type(), "reparam_kl_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    FASTGEN_LAUNCH(l.grid(), kThreads, 0, stream, reparam_kl_forward_kernel<scalar_t, acc_t>)(
        mu.const_data_ptr<scalar_t>(), lv.const_data_ptr<scalar_t>(), eps.const_data_ptr<scalar_t>(),
        z.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), l.cols, l.chunk);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  auto kl = l.chunks == 1 ? partial.view({l.rows}) : partial.sum(1);
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor> reparam_kl_backward_cuda(const at::Tensor& gz_in,
                                                            const at::Tensor& gkl_in,
                                                            const at::Tensor& mu_in,
                                                            const at::Tensor& lv_in,
                                                            const at::Tensor& eps_in) {
  check_reparam_kl_backward(gz_in, gkl_in, mu_in, lv_in, eps_in);
  const auto guard = device_guard(mu_in, "mu");
  const auto mu = mu_in.contiguous(), lv = lv_in.contiguous(), eps = eps_in.contiguous();
  const auto gz = gz_in.contiguous();
  const RowLaunch l(mu);
  auto dmu = at::empty_like(mu, at::MemoryFormat::Contiguous);
  auto dlv = at::empty_like(mu, at::MemoryFormat::Contiguous);
  if (l.rows == 0) return {dmu, dlv};
  auto stream = at::cuda::getCurrentCUDAStream();
  FASTGEN_DISPATCH_FLOATS(mu.scalar_type(), "reparam_kl_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto gkl = gkl_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    FASTGEN_LAUNCH(l.grid(), kThreads, 0, stream, reparam_kl_backward_kernel<scalar_t, acc_t>)(
        gz.const_data_ptr<scalar_t>(), gkl.const_data_ptr<acc_t>(), mu.const_data_ptr<scalar_t>(),
        lv.const_data_ptr<scalar_t>(), eps.const_data_ptr<scalar_t>(),
        dmu.mutable_data_ptr<scalar_t>(), dlv.mutable_data_ptr<scalar_t>(), l.cols, l.chunk);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dmu, dlv};
}

}  // namespace

FASTGEN_CUDA_LIBRARY_IMPL(m) {
  m.impl("gaussian_reparam_kl_native", &reparam_kl_cuda);
  m.impl("gaussian_reparam_kl_backward_native", &reparam_kl_backward_cuda);
}

}  // namespace fastgen
