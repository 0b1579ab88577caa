#pragma once
// Host-side pieces of the info_nce_loss entry points, shared by the CPU and CUDA kernels (and the
// tile driver in common/contrastive.h): the argument checks.
#include <ATen/ATen.h>

#include <cmath>

#include "common/checks.h"

namespace fastgen {

// fastgen/ops/contrastive.py _check_info_nce, in its order.
inline void check_info_nce(const at::Tensor& z1, const at::Tensor& z2, double temperature) {
  check_float_tensor(z1, "z1");
  TORCH_CHECK_VALUE(z1.dim() == 2, "fastgen: z1 must have shape (N, D), got " + py_shape(z1.sizes()));
  TORCH_CHECK_VALUE(z1.size(0) > 0, "fastgen: info_nce_loss needs at least one pair: z1 has N=0 rows");
  check_same_float_tensor(z1, "z1", z2, "z2");
  TORCH_CHECK_VALUE(temperature > 0 && std::isfinite(temperature),
                    "fastgen: temperature must be positive and finite, got " + py_float(temperature));
}

// _check_info_nce_backward: the scalar loss gradient and the forward's lse (2N,), on z1's device.
inline void check_info_nce_backward(const at::Tensor& grad_loss, const at::Tensor& z1, const at::Tensor& z2,
                                    const at::Tensor& lse, double temperature) {
  check_info_nce(z1, z2, temperature);
  check_float_tensor(grad_loss, "grad_loss");
  TORCH_CHECK_VALUE(grad_loss.numel() == 1, "fastgen: grad_loss must be a scalar, got shape " +
                    py_shape(grad_loss.sizes()));
  check_float_tensor(lse, "lse");
  const int64_t m = 2 * z1.size(0);
  TORCH_CHECK_VALUE(lse.dim() == 1 && lse.size(0) == m, "fastgen: lse must have shape (" + py_int(m) + ",), got " +
                    py_shape(lse.sizes()));
  check_same_device(z1, "z1", grad_loss, "grad_loss");
  check_same_device(z1, "z1", lse, "lse");
}

}  // namespace fastgen
