#pragma once
// Gaussian reparameterization fused with the KL to N(0, I), per element:
//   std = exp(logvar / 2),  z = mu + std * eps,  kl_term = 1 + logvar - mu^2 - std^2
// and kl[b] = -1/2 * sum over the sample's elements of kl_term.
// `T` is the math type (float for fp32/fp16/bf16 inputs, double for fp64).
#include "common/macros.h"

namespace fastgen {

template <typename T>
FASTGEN_HD T reparam_kl_forward(T mu, T logvar, T eps, T* kl_term) {
  const T sd = fexp(T(0.5) * logvar);
  *kl_term = T(1) + logvar - mu * mu - sd * sd;
  return mu + sd * eps;
}

// Gradients through both outputs: g_z for z (per element), g_kl for kl[b] (per sample).
//   d mu     = g_z + g_kl * mu
//   d logvar = g_z * eps * std / 2 + g_kl * (std^2 - 1) / 2
template <typename T>
FASTGEN_HD void reparam_kl_backward(T g_z, T g_kl, T mu, T logvar, T eps, T* d_mu, T* d_logvar) {
  const T sd = fexp(T(0.5) * logvar);
  *d_mu = g_z + g_kl * mu;
  *d_logvar = T(0.5) * (g_z * eps * sd + g_kl * (sd * sd - T(1)));
}

}  // namespace fastgen
