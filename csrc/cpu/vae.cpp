// CPU kernels for gaussian_reparam_kl (see csrc/common/vae.h for the math).
// Work is split into (sample, chunk) tasks so a few large samples still use every core; the
// per-sample KL is summed from per-chunk partials in a fixed order, so results do not depend
// on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace fastgen {
// Must precede common/vae.h: the shared formulas are templates, and this overload lets them run
// on SIMD vectors (Sleef exp) as well as on scalars.
template <typename T>
inline at::vec::Vectorized<T> fexp(const at::vec::Vectorized<T>& x) { return x.exp(); }
}  // namespace fastgen

#include "common/checks.h"
#include "common/dispatch.h"
#include "cpu/row_tiling.h"
#include "cpu/vec_lanes.h"
#include "common/vae.h"
#include "common/vae_host.h"

namespace fastgen {
namespace {

using at::vec::Vectorized;

constexpr int64_t kBlock = 512;      // elements per float accumulator flush (keeps sums accurate)

// fp16/bf16 widen to two fp32 vectors (csrc/cpu/vec_lanes.h)
template <typename scalar_t>
using Lanes = VecLanes<scalar_t>;

// z for n elements; returns sum of kl_term over them.
template <typename scalar_t>
double forward_span(const scalar_t* mu, const scalar_t* lv, const scalar_t* eps, scalar_t* z,
                    int64_t n) {
  using L = Lanes<scalar_t>;
  using opmath_t = typename L::opmath_t;
  using VecM = typename L::VecM;
  constexpr int64_t step = L::step;
  double total = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    VecM acc(opmath_t(0));
    opmath_t tail = 0;
    int64_t i = b0;
    for (; i + step <= b1; i += step) {
      VecM m[L::parts], l[L::parts], e[L::parts], out[L::parts];
      L::load(mu + i, m);
      L::load(lv + i, l);
      L::load(eps + i, e);
      for (int p = 0; p < L::parts; ++p) {
        VecM term;
        out[p] = reparam_kl_forward(m[p], l[p], e[p], &term);
        acc = acc + term;
      }
      L::store(z + i, out);
    }
    for (; i < b1; ++i) {
      opmath_t term;
      z[i] = static_cast<scalar_t>(reparam_kl_forward<opmath_t>(mu[i], lv[i], eps[i], &term));
      tail += term;
    }
    total += static_cast<double>(
        at::vec::vec_reduce_all<opmath_t>([](VecM a, VecM b) { return a + b; }, acc) + tail);
  }
  return total;
}

template <typename scalar_t>
void backward_span(const scalar_t* gz, double gkl, const scalar_t* mu, const scalar_t* lv,
                   const scalar_t* eps, scalar_t* dmu, scalar_t* dlv, int64_t n) {
  using L = Lanes<scalar_t>;
  using opmath_t = typename L::opmath_t;
  using VecM = typename L::VecM;
  constexpr int64_t step = L::step;
  const opmath_t g = static_cast<opmath_t>(gkl);
  const VecM gv(g);
  int64_t i = 0;
  for (; i + step <= n; i += step) {
    VecM z[L::parts], m[L::parts], l[L::parts], e[L::parts], om[L::parts], ol[L::parts];
    L::load(gz + i, z);
    L::load(mu + i, m);
    L::load(lv + i, l);
    L::load(eps + i, e);
    for (int p = 0; p < L::parts; ++p) reparam_kl_backward(z[p], gv, m[p], l[p], e[p], &om[p], &ol[p]);
    L::store(dmu + i, om);
    L::store(dlv + i, ol);
  }
  for (; i < n; ++i) {
    opmath_t a, b;
    reparam_kl_backward<opmath_t>(gz[i], g, mu[i], lv[i], eps[i], &a, &b);
    dmu[i] = static_cast<scalar_t>(a);
    dlv[i] = static_cast<scalar_t>(b);
  }
}

std::tuple<at::Tensor, at::Tensor> reparam_kl_cpu(const at::Tensor& mu_in, const at::Tensor& lv_in,
                                                  const at::Tensor& eps_in) {
  check_reparam_kl(mu_in, lv_in, eps_in);
  const auto mu = mu_in.contiguous(), lv = lv_in.contiguous(), eps = eps_in.contiguous();
  const RowTasks t(mu);
  auto z = at::empty_like(mu, at::MemoryFormat::Contiguous);
  auto kl = at::empty({t.rows}, mu.options().dtype(opmath_dtype(mu.scalar_type())));
  if (t.rows == 0) return {z, kl};
  std::vector<double> partial(t.tasks, 0.0);
  FASTGEN_DISPATCH_FLOATS(mu.scalar_type(), "reparam_kl_cpu", [&] {
    const scalar_t* pm = mu.const_data_ptr<scalar_t>();
    const scalar_t* pl = lv.const_data_ptr<scalar_t>();
    const scalar_t* pe = eps.const_data_ptr<scalar_t>();
    scalar_t* pz = z.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, t.tasks, t.grain, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t off = t.offset(task);
        partial[task] = forward_span(pm + off, pl + off, pe + off, pz + off, t.length(task));
      }
    });
  });
  t.reduce_rows(partial, kl, -0.5);
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor> reparam_kl_backward_cpu(const at::Tensor& gz_in,
                                                           const at::Tensor& gkl_in,
                                                           const at::Tensor& mu_in,
                                                           const at::Tensor& lv_in,
                                                           const at::Tensor& eps_in) {
  check_reparam_kl_backward(gz_in, gkl_in, mu_in, lv_in, eps_in);
  const auto mu = mu_in.contiguous(), lv = lv_in.contiguous(), eps = eps_in.contiguous();
  const auto gz = gz_in.contiguous();
  const auto gkl = gkl_in.to(at::kDouble).contiguous();
  const RowTasks t(mu);
  auto dmu = at::empty_like(mu, at::MemoryFormat::Contiguous);
  auto dlv = at::empty_like(mu, at::MemoryFormat::Contiguous);
  if (t.rows == 0) return {dmu, dlv};
  const double* pg = gkl.const_data_ptr<double>();
  FASTGEN_DISPATCH_FLOATS(mu.scalar_type(), "reparam_kl_backward_cpu", [&] {
    at::parallel_for(0, t.tasks, t.grain, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t row = t.row(task), off = t.offset(task);
        backward_span(gz.const_data_ptr<scalar_t>() + off, pg[row], mu.const_data_ptr<scalar_t>() + off,
                      lv.const_data_ptr<scalar_t>() + off, eps.const_data_ptr<scalar_t>() + off,
                      dmu.mutable_data_ptr<scalar_t>() + off, dlv.mutable_data_ptr<scalar_t>() + off,
                      t.length(task));
      }
    });
  });
  return {dmu, dlv};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("gaussian_reparam_kl_native", &reparam_kl_cpu);
  m.impl("gaussian_reparam_kl_backward_native", &reparam_kl_backward_cpu);
}

}  // namespace fastgen
