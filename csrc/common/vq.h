#pragma once
// Shared pieces of vq_nearest for the CPU and CUDA kernels.
#include <ATen/ATen.h>
#include <limits>
#include <string>

#include "common/checks.h"

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
  TORCH_CHECK_VALUE(codebook.device() == z.device(), "fastgen: codebook is on ", codebook.device(),
                    " but z is on ", z.device());
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

}  // namespace fastgen
