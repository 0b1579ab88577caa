// CUDA launchers for info_nce_loss (the tile driver and argument checks in
// csrc/common/contrastive.h and csrc/common/contrastive_host.h, the epilogue kernels in
// csrc/cuda/contrastive.cuh).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/contrastive.h"
#include "common/contrastive_host.h"
#include "cuda/device_guard.h"
#include "cuda/launch.h"
#include "cuda/contrastive.cuh"

namespace fastgen {
namespace {

// ---- info_nce_loss ------------------------------------------------------------------------------
// Driver: common/contrastive.h (tile GEMMs on cuBLAS). Epilogue: one block per tile row computes
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
  m.impl("info_nce_loss_native", &info_nce_loss_cuda);
  m.impl("info_nce_loss_backward_native", &info_nce_loss_backward_cuda);
}

}  // namespace fastgen
