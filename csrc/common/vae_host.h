#pragma once
// Argument checks of the gaussian_reparam_kl entry points, shared by the CPU and CUDA kernels
// (direct torch.ops.fastgen.*_native callers get an error that names the argument). The math is
// common/vae.h.
#include <ATen/ATen.h>

#include "common/checks.h"

namespace fastgen {

// fastgen/ops/vae.py _check, in its order.
inline void check_reparam_kl(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& eps) {
  check_float_tensor(mu, "mu");
  TORCH_CHECK_VALUE(mu.dim() >= 1, "fastgen: mu must have a leading batch dim, got a 0-d tensor");
  check_same_float_tensor(mu, "mu", logvar, "logvar");
  check_same_float_tensor(mu, "mu", eps, "eps");
}

// _check_backward.
inline void check_reparam_kl_backward(const at::Tensor& grad_z, const at::Tensor& grad_kl, const at::Tensor& mu,
                                      const at::Tensor& logvar, const at::Tensor& eps) {
  check_reparam_kl(mu, logvar, eps);
  check_same_float_tensor(mu, "mu", grad_z, "grad_z");
  check_per_sample(mu, "mu", grad_kl, "grad_kl");
}

}  // namespace fastgen
