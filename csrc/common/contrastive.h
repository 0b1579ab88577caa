#pragma once
// info_nce_loss (NT-Xent) blockwise: the 2N x 2N similarity matrix exists one (rows x cols) tile
// at a time, in forward and backward. Written in ATen ops on tiles (at::mm is MKL/oneDNN on the
// CPU and cuBLAS on the GPU), so the CPU and CUDA kernels share this driver; each supplies the
// tile epilogue (the masked online logsumexp and the softmax weights).
//
//   u_i = z_i / max(||z_i||, 1e-12), s_ij = u_i . u_j / tau, lse_i = logsumexp_{j != i} s_ij,
//   loss = (sum_i lse_i - 2 sum_{k<N} s_{k, k+N}) / (2N).
//   dL/du_i = g / (2N tau) * (sum_j (P_ij + P_ji) u_j - 2 u_{p(i)}),  P_ij = exp(s_ij - lse_i)
//   (P_ii = 0); row tile I adds P_IJ u_J to dU_I and P_IJ^T u_I to dU_J, so every tile is
//   computed once per pass and the order of the additions is fixed (deterministic).
#include <ATen/ATen.h>

#include <limits>

#include "common/checks.h"
#include "common/contrastive_host.h"

namespace fastgen {

constexpr double kInfoNceNormEps = 1e-12;

// (z in the math dtype (2N, D), ||z_i||, u)
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_normalize(const at::Tensor& z1,
                                                                         const at::Tensor& z2) {
  const auto z = at::cat({z1, z2}).to(opmath_dtype(z1.scalar_type())).contiguous();
  const auto norm = z.norm(2, {1}, true);
  return {z, norm, (z / norm.clamp_min(kInfoNceNormEps)).contiguous()};
}

// The diagonal s_ii of tile (i0, j0) to -inf (it is not a candidate).
inline void info_nce_mask_diagonal(at::Tensor& s, int64_t i0, int64_t j0) {
  const int64_t off = i0 - j0;  // tile element (r, c) is on the diagonal when c - r == off
  if (off > -s.size(0) && off < s.size(1)) s.diagonal(off).fill_(-std::numeric_limits<double>::infinity());
}

// Square tile side for 2N = m samples: about a quarter of m (so small problems still run the
// multi-tile path the large ones take), a multiple of 16, between 64 and max_block.
inline int64_t info_nce_block(int64_t m, int64_t max_block) {
  const int64_t quarter = ((m + 3) / 4 + 15) / 16 * 16;
  return std::min(max_block, std::max<int64_t>(64, quarter));
}

// Epilogue concept (one per device):
//   void lse_update(const at::Tensor& s, at::Tensor& running): running[r] = logaddexp(running[r],
//       logsumexp_c s[r, c]) for a contiguous tile s (-inf entries are masked out)
//   at::Tensor weights(const at::Tensor& s, const at::Tensor& lse_rows, const at::Tensor& lse_cols):
//       exp(s - lse_rows[:, None]) + exp(s - lse_cols[None, :])
// s is symmetric, so only tiles (I, J) with J >= I are computed (square tiles of `block`):
// the forward folds tile (I, J) into the row lse of I and, transposed, into that of J; the
// backward's W = P_IJ + P_JI^T feeds dU_I += W u_J and dU_J += W^T u_I.
template <typename Epilogue>
std::tuple<at::Tensor, at::Tensor> info_nce_forward_tiled(const at::Tensor& z1, const at::Tensor& z2,
                                                          double temperature, int64_t max_block, const Epilogue& ep) {
  check_info_nce(z1, z2, temperature);
  auto [z, norm, u] = info_nce_normalize(z1, z2);
  const int64_t m = u.size(0), n = z1.size(0);
  const int64_t block = info_nce_block(m, max_block);
  const auto v = (u * (1.0 / temperature)).contiguous();
  auto lse = at::full({m}, -std::numeric_limits<double>::infinity(), u.options());
  for (int64_t i0 = 0; i0 < m; i0 += block) {
    const int64_t bi = std::min(block, m - i0);
    const auto ui = u.narrow(0, i0, bi);
    auto lse_i = lse.narrow(0, i0, bi);
    for (int64_t j0 = i0; j0 < m; j0 += block) {
      const int64_t bj = std::min(block, m - j0);
      auto s = at::mm(ui, v.narrow(0, j0, bj).t());
      info_nce_mask_diagonal(s, i0, j0);
      ep.lse_update(s, lse_i);
      if (j0 != i0) {
        auto lse_j = lse.narrow(0, j0, bj);
        ep.lse_update(s.t().contiguous(), lse_j);
      }
    }
  }
  const auto pos = (u.narrow(0, 0, n) * v.narrow(0, n, n)).sum();
  auto loss = (lse.sum() - 2 * pos) / static_cast<double>(m);
  return {loss, lse};
}

template <typename Epilogue>
std::tuple<at::Tensor, at::Tensor> info_nce_backward_tiled(const at::Tensor& grad_loss, const at::Tensor& z1,
                                                           const at::Tensor& z2, const at::Tensor& lse_in,
                                                           double temperature, int64_t max_block, const Epilogue& ep) {
  check_info_nce_backward(grad_loss, z1, z2, lse_in, temperature);
  auto [z, norm, u] = info_nce_normalize(z1, z2);
  const int64_t m = u.size(0), n = z1.size(0);
  const int64_t block = info_nce_block(m, max_block);
  const auto lse = lse_in.to(u.scalar_type()).contiguous();
  const auto v = (u * (1.0 / temperature)).contiguous();
  auto du = at::zeros_like(u);
  for (int64_t i0 = 0; i0 < m; i0 += block) {
    const int64_t bi = std::min(block, m - i0);
    const auto ui = u.narrow(0, i0, bi);
    auto dui = du.narrow(0, i0, bi);
    for (int64_t j0 = i0; j0 < m; j0 += block) {
      const int64_t bj = std::min(block, m - j0);
      auto s = at::mm(ui, v.narrow(0, j0, bj).t());
      info_nce_mask_diagonal(s, i0, j0);
      const auto w = ep.weights(s, lse.narrow(0, i0, bi), lse.narrow(0, j0, bj));
      dui.addmm_(w, u.narrow(0, j0, bj));
      if (j0 != i0) {
        auto duj = du.narrow(0, j0, bj);
        duj.addmm_(w.t(), ui);
      }
    }
  }
  // the positive pair's -2 u_{p(i)}, then the common scale g / (2N tau)
  du.narrow(0, 0, n).sub_(u.narrow(0, n, n), 2.0);
  du.narrow(0, n, n).sub_(u.narrow(0, 0, n), 2.0);
  du.mul_(grad_loss.to(u.scalar_type()).reshape({}) / (static_cast<double>(m) * temperature));
  // through u = z / max(||z||, eps): (du - u (u . du)) / ||z||, or du / eps where clamped
  const auto clamped = norm <= kInfoNceNormEps;
  const auto r = norm.clamp_min(kInfoNceNormEps);
  auto dz = at::where(clamped, du / kInfoNceNormEps, (du - u * (u * du).sum(1, true)) / r);
  dz = dz.to(z1.scalar_type());
  // two outputs must not share storage (the op's schema promises no aliasing)
  return {dz.narrow(0, 0, n).clone(), dz.narrow(0, n, n).clone()};
}

}  // namespace fastgen
