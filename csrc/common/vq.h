#pragma once
// Shared pieces of vq_nearest for the CPU and CUDA kernels.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>

#include "common/checks.h"
#include "common/macros.h"
#include "common/vq_math.h"  // vq_st_value, vq_ema (ATen-free, shared with cuda/vq.cuh)

namespace fastgen {

// fastgen/ops/vq.py _check_nearest, in its order.
inline void check_vq_nearest(const at::Tensor& z, const at::Tensor& codebook, c10::string_view metric) {
  check_float_tensor(z, "z");
  check_float_tensor(codebook, "codebook");
  TORCH_CHECK_VALUE(z.dim() == 2, std::string("fastgen: z must have shape (N, D), got ") + py_shape(z.sizes()));
  TORCH_CHECK_VALUE(codebook.dim() == 2,
                    std::string("fastgen: codebook must have shape (K, D), got ") + py_shape(codebook.sizes()));
  TORCH_CHECK_VALUE(codebook.size(1) == z.size(1), std::string("fastgen: codebook has D=") +
                    py_int(codebook.size(1)) + " but z has D=" + py_int(z.size(1)));
  TORCH_CHECK_VALUE(codebook.size(0) > 0, "fastgen: codebook is empty (K=0)");
  TORCH_CHECK_TYPE(codebook.scalar_type() == z.scalar_type(), std::string("fastgen: codebook has dtype ") +
                   py_dtype(codebook.scalar_type()) + " but z has " + py_dtype(z.scalar_type()));
  check_same_device(z, "z", codebook, "codebook");
  TORCH_CHECK_VALUE(metric == "l2" || metric == "cosine",
                    "fastgen: metric must be one of ('l2', 'cosine'), got " + py_str(metric));
}

// _check_quantize's beta.
inline void check_vq_beta(double beta) {
  TORCH_CHECK_VALUE(beta >= 0 && beta < std::numeric_limits<double>::infinity(),
                    "fastgen: beta must be a finite number >= 0, got " + py_float(beta));
}

// Math-dtype copies (normalized rows for "cosine", like F.normalize with eps 1e-12).
inline std::pair<at::Tensor, at::Tensor> vq_math_inputs(const at::Tensor& z, const at::Tensor& codebook,
                                                        c10::string_view metric) {
  const auto t = opmath_dtype(z.scalar_type());
  at::Tensor zm = z.to(t), em = codebook.to(t);
  if (metric == "cosine") {
    zm = zm / zm.norm(2, {1}, true).clamp_min(1e-12);
    em = em / em.norm(2, {1}, true).clamp_min(1e-12);
  }
  return {zm.contiguous(), em.contiguous()};
}

// Final distances from the best partial distance (||e||^2 - 2 z.e) and ||z||^2, clamped at 0.
// A row of z that is not finite has no finite distance to any code (as in the reference): it
// maps to code 0 at +inf, as does a row whose every distance was NaN.
inline at::Tensor vq_finish(const at::Tensor& best, at::Tensor& idx, const at::Tensor& znorm) {
  const auto bad_row = ~at::isfinite(znorm);
  idx.masked_fill_(bad_row, 0);
  const auto inf = at::full({}, std::numeric_limits<double>::infinity(), best.options());
  return at::where(bad_row | best.isinf(), inf, (best + znorm).clamp_min(0));
}

// vq_quantize / vq_code_sums / vq_ema_update ------------------------------------------------

// The range part of _check_indices: every index in [0, k), checked where the values are host
// memory (a CPU tensor: the CPU build, and the CUDA entry points on the CPU execution model) as
// the Python check does; the CUDA kernels skip rows whose index is out of range instead.
inline void check_vq_indices_range(const at::Tensor& indices, int64_t k) {
  if (!indices.device().is_cpu() || indices.numel() == 0) return;
  const auto [lo_t, hi_t] = at::aminmax(indices);
  const int64_t lo = lo_t.item<int64_t>(), hi = hi_t.item<int64_t>();
  TORCH_CHECK_VALUE(lo >= 0 && hi < k, std::string("fastgen: indices must lie in [0, ") + py_int(k) +
                    "), got values in [" + py_int(lo) + ", " + py_int(hi) + "]");
}

// _check_indices(indices, n, k, z.device).
inline void check_vq_indices(const at::Tensor& indices, int64_t n, int64_t k, const at::Tensor& z) {
  TORCH_CHECK_VALUE(indices.scalar_type() == at::kLong && indices.dim() == 1 && indices.size(0) == n,
                    std::string("fastgen: indices must be an int64 tensor of shape (") + py_int(n) + ",), got " +
                    py_dtype(indices.scalar_type()) + " of shape " + py_shape(indices.sizes()));
  check_same_device(z, "z", indices, "indices");
  check_vq_indices_range(indices, k);
}

// _check_quantize_backward: (z, codebook, beta), grad_zq like z, grad_loss one float value on
// z's device (the CUDA kernel reads it there), then the indices.
inline void check_vq_quantize_backward(const at::Tensor& grad_zq, const at::Tensor& grad_loss, const at::Tensor& z,
                                       const at::Tensor& codebook, const at::Tensor& indices, double beta) {
  check_vq_nearest(z, codebook, "l2");
  check_vq_beta(beta);
  check_same_float_tensor(z, "z", grad_zq, "grad_zq");
  check_float_tensor(grad_loss, "grad_loss");
  TORCH_CHECK_VALUE(grad_loss.numel() == 1 && grad_loss.device() == z.device(),
                    "fastgen: grad_loss must be a one-element tensor on " + py_device(z.device()) + ", got shape " +
                    py_shape(grad_loss.sizes()) + " on " + py_device(grad_loss.device()));
  check_vq_indices(indices, z.size(0), codebook.size(0), z);
}

// _check_code_sums.
inline void check_vq_code_sums(const at::Tensor& z, const at::Tensor& indices, int64_t num_codes) {
  check_float_tensor(z, "z");
  TORCH_CHECK_VALUE(z.dim() == 2, std::string("fastgen: z must have shape (N, D), got ") + py_shape(z.sizes()));
  TORCH_CHECK_VALUE(num_codes >= 1, "fastgen: num_codes must be a positive int, got " + py_int(num_codes));
  check_vq_indices(indices, z.size(0), num_codes, z);
}

// _check_ema, in its order.
inline void check_vq_ema(const at::Tensor& z, const at::Tensor& indices, const at::Tensor& cluster_size,
                         const at::Tensor& embed_sum, double decay, double eps) {
  check_float_tensor(embed_sum, "embed_sum");
  TORCH_CHECK_VALUE(embed_sum.dim() == 2 && embed_sum.size(0) >= 1,
                    std::string("fastgen: embed_sum must have shape (K, D) with K >= 1, got ") +
                    py_shape(embed_sum.sizes()));
  check_vq_code_sums(z, indices, embed_sum.size(0));
  TORCH_CHECK_VALUE(embed_sum.size(1) == z.size(1), std::string("fastgen: embed_sum has D=") +
                    py_int(embed_sum.size(1)) + " but z has D=" + py_int(z.size(1)));
  check_float_tensor(cluster_size, "cluster_size");
  TORCH_CHECK_TYPE(cluster_size.scalar_type() == embed_sum.scalar_type(),
                   std::string("fastgen: cluster_size has dtype ") + py_dtype(cluster_size.scalar_type()) +
                   " but embed_sum has " + py_dtype(embed_sum.scalar_type()) + " (they must share one float dtype)");
  TORCH_CHECK_VALUE(cluster_size.dim() == 1 && cluster_size.size(0) == embed_sum.size(0),
                    std::string("fastgen: cluster_size must have shape (") + py_int(embed_sum.size(0)) + ",), got " +
                    py_shape(cluster_size.sizes()));
  check_same_device(z, "z", cluster_size, "cluster_size");
  TORCH_CHECK_VALUE(cluster_size.is_contiguous(), "fastgen: cluster_size is updated in place and must be contiguous");
  check_same_device(z, "z", embed_sum, "embed_sum");
  TORCH_CHECK_VALUE(embed_sum.is_contiguous(), "fastgen: embed_sum is updated in place and must be contiguous");
  TORCH_CHECK_VALUE(decay >= 0.0 && decay <= 1.0, "fastgen: decay must be in [0, 1], got " + py_float(decay));
  TORCH_CHECK_VALUE(eps > 0, "fastgen: eps must be > 0, got " + py_float(eps));
}

// After the in-place EMA: codebook = embed_sum / Laplace-smoothed cluster sizes, and the
// perplexity of this step's code usage (as fastgen.ops.reference.vq_ema_finish).
inline std::tuple<at::Tensor, at::Tensor> vq_ema_finish(const at::Tensor& counts, const at::Tensor& cluster_size,
                                                        const at::Tensor& embed_sum, double eps) {
  const auto n = cluster_size.sum();
  const auto smoothed = (cluster_size + eps) / (n + static_cast<double>(cluster_size.size(0)) * eps) * n;
  const auto p = counts / counts.sum().clamp_min(1);
  return {embed_sum / smoothed.unsqueeze(1), at::exp(-(p * at::log(p + 1e-10)).sum())};
}

}  // namespace fastgen
