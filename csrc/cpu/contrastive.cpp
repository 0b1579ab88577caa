// CPU kernels for info_nce_loss (the tile driver and argument checks in
// csrc/common/contrastive.h and csrc/common/contrastive_host.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/contrastive.h"

namespace fastgen {
namespace {

using at::vec::Vectorized;

// ---- info_nce_loss ------------------------------------------------------------------------------
// The tile driver is common/contrastive.h; the CPU epilogue reduces each tile row in one
// vectorized pass (max, then sum of exp) while the tile is still in cache.

struct CpuInfoNceEpilogue {
  template <typename T>
  static void row_lse(const T* s, int64_t n, T* running) {
    using V = Vectorized<T>;
    const T mx = at::vec::reduce_all<T>([](V a, V b) { return at::vec::maximum(a, b); }, s, n);
    const T hi = std::max(mx, *running);
    if (hi == -std::numeric_limits<T>::infinity()) return;  // nothing but masked entries so far
    const T sum = at::vec::map_reduce_all<T>([hi](V x) { return (x - V(hi)).exp(); },
                                             [](V a, V b) { return a + b; }, s, n);
    *running = hi + std::log(sum + std::exp(*running - hi));
  }
  template <typename T>
  static void row_weights(const T* s, const T* lse_cols, T* p, int64_t n, T lse) {
    using V = Vectorized<T>;
    at::vec::map2([lse](V x, V lc) { return (x - V(lse)).exp() + (x - lc).exp(); }, p, s, lse_cols, n);
  }
  void lse_update(const at::Tensor& s, at::Tensor& running) const {
    AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "info_nce_lse", [&] {
      const scalar_t* ps = s.const_data_ptr<scalar_t>();
      scalar_t* pr = running.mutable_data_ptr<scalar_t>();
      const int64_t cols = s.size(1);
      at::parallel_for(0, s.size(0), 16, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) row_lse(ps + r * cols, cols, pr + r);
      });
    });
  }
  at::Tensor weights(const at::Tensor& s, const at::Tensor& lse_rows, const at::Tensor& lse_cols) const {
    auto p = at::empty_like(s);
    AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "info_nce_weights", [&] {
      const scalar_t* ps = s.const_data_ptr<scalar_t>();
      const scalar_t* pl = lse_rows.const_data_ptr<scalar_t>();
      const scalar_t* pc = lse_cols.const_data_ptr<scalar_t>();
      scalar_t* pp = p.mutable_data_ptr<scalar_t>();
      const int64_t cols = s.size(1);
      at::parallel_for(0, s.size(0), 16, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) row_weights(ps + r * cols, pc, pp + r * cols, cols, pl[r]);
      });
    });
    return p;
  }
};

// 2048 x 2048 tiles (16 MiB in fp32): smaller ones make at::mm markedly less efficient here,
// and the tile is still a small fraction of the eager 2N x 2N matrices.
constexpr int64_t kInfoNceTile = 2048;

std::tuple<at::Tensor, at::Tensor> info_nce_loss_cpu(const at::Tensor& z1, const at::Tensor& z2, double temperature) {
  return info_nce_forward_tiled(z1, z2, temperature, kInfoNceTile, CpuInfoNceEpilogue());
}

std::tuple<at::Tensor, at::Tensor> info_nce_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& z1,
                                                              const at::Tensor& z2, const at::Tensor& lse,
                                                              double temperature) {
  return info_nce_backward_tiled(grad_loss, z1, z2, lse, temperature, kInfoNceTile,
                                 CpuInfoNceEpilogue());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("info_nce_loss_native", &info_nce_loss_cpu);
  m.impl("info_nce_loss_backward_native", &info_nce_loss_backward_cpu);
}

}  // namespace fastgen
