#pragma once
// Shared pieces of vq_nearest for the CPU and CUDA kernels.
#include <ATen/ATen.h>
#include <limits>
#include <string>

#include "common/checks.h"
#include "common/macros.h"
#include "common/vq_math.h"  // vq_st_value, vq_ema (ATen-free, shared with cuda/vq.cuh)

namespace fastgen {

inline void check_vq_nearest(const at::Tensor& z, const at::Tensor& codebook, c10::string_view metric) {
  TORCH_CHECK_TYPE(at::isFloatingType(z.scalar_type()), "fastgen: z must be a floating-point tensor, got ",
                   z.scalar_type());
  TORCH_CHECK_TYPE(codebook.scalar_type() == z.scalar_type(), "fastgen: codebook has dtype ",
                   codebook.scalar_type(), " but z has ", z.scalar_type());
  TORCH_CHECK_VALUE(z.dim() == 2, "fastgen: z must have shape (N, D), got ", z.sizes());
  TORCH_CHECK_VALUE(codebook.dim() == 2, "fastgen: codebook must have shape (K, D), got ", codebook.sizes());
  TORCH_CHECK_VALUE(codebook.size(1) == z.size(1), "fastgen: codebook has D=", codebook.size(1),
                    " but z has D=", z.size(1));
  TORCH_CHECK_VALUE(codebook.size(0) > 0, "fastgen: codebook is empty (K=0)");
  check_same_device(z, "z", codebook, "codebook");
  TORCH_CHECK_VALUE(metric == "l2" || metric == "cosine",
                    "fastgen: metric must be 'l2' or 'cosine', got '", std::string(metric), "'");
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

inline void check_vq_indices(const at::Tensor& indices, int64_t n, const at::Tensor& z) {
  TORCH_CHECK_VALUE(indices.scalar_type() == at::kLong && indices.dim() == 1 && indices.size(0) == n,
                    "fastgen: indices must be an int64 tensor of shape (", n, ",), got ",
                    indices.scalar_type(), " of shape ", indices.sizes());
  check_same_device(z, "z", indices, "indices");
}

// vq_quantize's backward: the loss gradient, one value on z's device (the CUDA kernel reads it there).
inline void check_vq_grad_loss(const at::Tensor& grad_loss, const at::Tensor& z) {
  TORCH_CHECK_VALUE(grad_loss.numel() == 1, "fastgen: grad_loss must have one element, got shape ",
                    grad_loss.sizes());
  check_same_device(z, "z", grad_loss, "grad_loss");
}

inline void check_vq_ema(const at::Tensor& z, const at::Tensor& indices, const at::Tensor& cluster_size,
                         const at::Tensor& embed_sum) {
  TORCH_CHECK_TYPE(at::isFloatingType(z.scalar_type()), "fastgen: z must be a floating-point tensor");
  TORCH_CHECK_VALUE(z.dim() == 2, "fastgen: z must have shape (N, D), got ", z.sizes());
  TORCH_CHECK_VALUE(embed_sum.dim() == 2 && embed_sum.size(1) == z.size(1) && embed_sum.size(0) > 0,
                    "fastgen: embed_sum must have shape (K, ", z.size(1), "), got ", embed_sum.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(embed_sum.scalar_type()) &&
                       cluster_size.scalar_type() == embed_sum.scalar_type(),
                   "fastgen: cluster_size and embed_sum must share one float dtype");
  TORCH_CHECK_VALUE(cluster_size.dim() == 1 && cluster_size.size(0) == embed_sum.size(0),
                    "fastgen: cluster_size must have shape (", embed_sum.size(0), ",)");
  TORCH_CHECK_VALUE(cluster_size.is_contiguous() && embed_sum.is_contiguous(),
                    "fastgen: cluster_size and embed_sum are updated in place and must be contiguous");
  check_same_device(z, "z", cluster_size, "cluster_size");
  check_same_device(z, "z", embed_sum, "embed_sum");
  check_vq_indices(indices, z.size(0), z);
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
