// Launchers of the vq CUDA kernels (the kernels: cuda/vq.cuh, ATen-free). vq_nearest runs the
// certified two-stage search (bf16 WMMA candidates + exact re-rank, docs/vq_certified.md) where it
// pays and the exact kernel elsewhere: the same bits either way.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cfloat>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/dispatch.h"
#include "common/vq.h"
#include "common/vq_bound.h"
#include "cuda/device_guard.h"
#include "cuda/launch.h"
#include "cuda/vq.cuh"

namespace fastgen {
namespace {

using namespace vq_kernels;

// -- vq_nearest -------------------------------------------------------------------------------------

enum class Search { kExact, kBf16 };

// auto: the certified search from these sizes on. Stage 1 issues per 16 x 64 tile ~64 MMAs at
// D = 256 (4 per 16 coordinates) plus a scan of ~30 warp instructions per row, where the exact
// kernel issues 16 * 64 * D / 32 FMA warp instructions: ~10x fewer issue slots at D = 256, ~4x at
// D = 64, break-even near D = 16 (counted, not yet timed on a GPU). Small K: the three extra
// launches and the re-rank would not pay.
constexpr int64_t kAutoMinD = 32;
constexpr int64_t kAutoMinK = 1024;

bool exact_only_env() {
  const char* v = std::getenv("FASTGEN_VQ_EXACT_ONLY");
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

// vq_certified.vq_nearest_search checks the mode first (CUDA_MODES), before the search's checks.
void check_mode(c10::string_view mode) {
  TORCH_CHECK_VALUE(mode == "auto" || mode == "exact" || mode == "bf16",
                    "fastgen: mode must be one of ('auto', 'exact', 'bf16'), got " + py_str(mode));
}

Search parse_mode(c10::string_view mode, int64_t k, int64_t d) {
  check_mode(mode);
  if (mode == "exact") return Search::kExact;
  if (mode == "bf16") return Search::kBf16;
  if (exact_only_env() || d < kAutoMinD || k < kAutoMinK) return Search::kExact;
  return Search::kBf16;
}

template <typename T>
void launch_exact(const at::Tensor& z, const at::Tensor& e, const at::Tensor& enorm, const int32_t* rows_only,
                  at::Tensor& best, at::Tensor& idx) {
  const int64_t n = z.size(0), k = e.size(0), d = z.size(1);
  const dim3 grid(static_cast<unsigned>((n + kRowsPerBlock - 1) / kRowsPerBlock));
  FASTGEN_LAUNCH(grid, kThreads, 0, at::cuda::getCurrentCUDAStream(), vq_nearest_kernel<T>)(
      z.const_data_ptr<T>(), e.const_data_ptr<T>(), enorm.const_data_ptr<T>(), n, k, d, rows_only,
      best.mutable_data_ptr<T>(), idx.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The two-stage search on math-type z / e (fp32, or fp64 for fp64 inputs); no host sync: the
// codebook facts, the per-row bounds and the fallback rows stay on the device.
template <typename T>
void launch_certified(const at::Tensor& z, const at::Tensor& e, const at::Tensor& enorm, at::Tensor& best,
                      at::Tensor& idx, at::Tensor& status) {
  const int64_t n = z.size(0), k = e.size(0), d = z.size(1);
  constexpr bool fp64 = std::is_same_v<T, double>;
  auto stream = at::cuda::getCurrentCUDAStream();
  auto facts = at::zeros({3}, z.options().dtype(at::kLong));
  auto* pfacts = reinterpret_cast<unsigned long long*>(facts.mutable_data_ptr<int64_t>());
  const unsigned fblocks = static_cast<unsigned>(std::min<int64_t>((k + 7) / 8, 1024));
  FASTGEN_LAUNCH(fblocks, 256, 0, stream, vq_codebook_facts_kernel<T>)(
      e.const_data_ptr<T>(), enorm.const_data_ptr<T>(), k, d, pfacts);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto cand = at::empty({n, kCap}, z.options().dtype(at::kInt));
  auto cval = at::empty({n, kCap}, z.options().dtype(at::kFloat));
  auto thr = at::empty({n}, z.options().dtype(at::kFloat));
  const VqBound bound = vq_bound(d, std::ldexp(1.0, fp64 ? -53 : -24), vq_bf16_input_unit(fp64),
                                 /*bf16_out=*/false, /*en_rounded=*/fp64);
  FASTGEN_LAUNCH(static_cast<unsigned>((n + kS1Rows - 1) / kS1Rows), kS1Threads, 0, stream,
                 vq_candidates_kernel<T>)(
      z.const_data_ptr<T>(), e.const_data_ptr<T>(), enorm.const_data_ptr<T>(), pfacts, bound, n, k, d,
      cand.mutable_data_ptr<int32_t>(), cval.mutable_data_ptr<float>(), status.mutable_data_ptr<int32_t>(),
      thr.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  FASTGEN_LAUNCH(static_cast<unsigned>((n + kRerankWarps - 1) / kRerankWarps), 32 * kRerankWarps, 0, stream,
                 vq_rerank_kernel<T>)(
      z.const_data_ptr<T>(), e.const_data_ptr<T>(), enorm.const_data_ptr<T>(), cand.const_data_ptr<int32_t>(),
      cval.const_data_ptr<float>(), thr.const_data_ptr<float>(), status.mutable_data_ptr<int32_t>(), n, d,
      best.mutable_data_ptr<T>(), idx.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_exact<T>(z, e, enorm, status.const_data_ptr<int32_t>(), best, idx);  // the fallback rows only
}

// vq_nearest_search_native on CUDA: (indices, distances, status), status as the CPU kernel's:
// the number of re-ranked candidates per row, -1 where the row fell back to the exact kernel,
// 0 everywhere when the call ran the exact kernel.
std::tuple<at::Tensor, at::Tensor, at::Tensor> vq_nearest_search_cuda(const at::Tensor& z_in, const at::Tensor& e_in,
                                                                      c10::string_view metric,
                                                                      c10::string_view mode_name) {
  check_mode(mode_name);
  check_vq_nearest(z_in, e_in, metric);
  const auto guard = device_guard(z_in, "z");
  const int64_t n = z_in.size(0), k = e_in.size(0), d = z_in.size(1);
  Search mode = parse_mode(mode_name, k, d);
  auto [z, e] = vq_math_inputs(z_in, e_in, metric);
  auto idx = at::empty({n}, z.options().dtype(at::kLong));
  auto best = at::empty({n}, z.options());
  auto status = at::zeros({n}, z.options().dtype(at::kInt));
  if (n == 0) return {idx, best, status};
  // stage 1 needs bf16 tensor cores (sm_80+); int32 candidate indices; D within the bound's range
  if (d == 0 || k >= (int64_t(1) << 31) || d > (int64_t(1) << 20) ||
      at::cuda::getCurrentDeviceProperties()->major < 8)
    mode = Search::kExact;
  const auto enorm = (e * e).sum(1).contiguous();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "vq_nearest_cuda", [&] {
    if (mode == Search::kBf16) launch_certified<scalar_t>(z, e, enorm, best, idx, status);
    else launch_exact<scalar_t>(z, e, enorm, nullptr, best, idx);
  });
  return {idx, vq_finish(best, idx, (z * z).sum(1)), status};
}

std::tuple<at::Tensor, at::Tensor> vq_nearest_cuda(const at::Tensor& z, const at::Tensor& e, c10::string_view metric) {
  auto [idx, dist, status] = vq_nearest_search_cuda(z, e, metric, "auto");
  return {idx, dist};
}

// -- vq_quantize -------------------------------------------------------------------------------

inline unsigned blocks_for(int64_t n, int64_t per_block) {
  return static_cast<unsigned>(std::min<int64_t>((n + per_block - 1) / per_block, int64_t(1) << 30));
}

// Rows grouped by code without a host sync: stable sort, then each code's first position.
// Out-of-range indices fall outside every group (skipped, never read or written out of bounds).
std::pair<at::Tensor, at::Tensor> group_rows_cuda(const at::Tensor& indices, int64_t k) {
  const auto [sorted, order] = at::sort(indices, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const auto starts = at::searchsorted(sorted, at::arange(k + 1, indices.options()));
  return {order.contiguous(), starts.contiguous()};
}

template <int MODE, typename T, typename A, typename O>
void launch_segment(const T* z, const T* e, const at::Tensor& order, const at::Tensor& starts, O* out, O* cs,
                    int64_t k, int64_t d, double decay) {
  if (k == 0 || d == 0) return;
  const dim3 grid(static_cast<unsigned>(k), static_cast<unsigned>((d + kSegCols - 1) / kSegCols));
  FASTGEN_LAUNCH(grid, dim3(kSegCols, kSegRows), 0, at::cuda::getCurrentCUDAStream(), vq_segment_kernel<T, A, O, MODE>)(
      z, e, order.const_data_ptr<int64_t>(), starts.const_data_ptr<int64_t>(), out, cs, d, decay);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> vq_quantize_cuda(const at::Tensor& z_in, const at::Tensor& e_in,
                                                                double beta, bool legacy) {
  check_vq_nearest(z_in, e_in, "l2");  // _check_quantize: the search's checks, then beta
  check_vq_beta(beta);
  auto [idx, dist] = vq_nearest_cuda(z_in, e_in, "l2");
  const auto guard = device_guard(z_in, "z");
  const auto z = z_in.contiguous();
  const auto e = e_in.contiguous();
  const int64_t n = z.size(0), d = z.size(1);
  auto zq = at::empty({n, d}, z.options());
  auto sq = at::empty({n}, z.options().dtype(opmath_dtype(z.scalar_type())));
  if (n > 0) {
    FASTGEN_DISPATCH_FLOATS(z.scalar_type(), "vq_quantize_cuda", [&] {
      using A = at::opmath_type<scalar_t>;
      FASTGEN_LAUNCH(blocks_for(n, kWarpsPerBlock), 32 * kWarpsPerBlock, 0,
                                         at::cuda::getCurrentCUDAStream(), vq_gather_st_kernel<scalar_t, A>)(
          z.const_data_ptr<scalar_t>(), e.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
          zq.mutable_data_ptr<scalar_t>(), sq.mutable_data_ptr<A>(), n, d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  const double weight = n * d != 0 ? (1.0 + beta) / static_cast<double>(n * d) : std::numeric_limits<double>::quiet_NaN();
  return {zq, (sq.sum() * weight).to(z.scalar_type()), idx};
}

std::tuple<at::Tensor, at::Tensor> vq_quantize_backward_cuda(const at::Tensor& gzq_in, const at::Tensor& grad_loss,
                                                             const at::Tensor& z_in, const at::Tensor& e_in,
                                                             const at::Tensor& indices, double beta, bool legacy) {
  check_vq_quantize_backward(gzq_in, grad_loss, z_in, e_in, indices, beta);
  const auto guard = device_guard(z_in, "z");
  const auto z = z_in.contiguous();
  const auto e = e_in.contiguous();
  const auto gzq = gzq_in.contiguous();
  const auto idx = indices.contiguous();
  const int64_t n = z.size(0), d = z.size(1), k = e.size(0);
  const double scale = n * d != 0 ? 2.0 / static_cast<double>(n * d) : 0.0;
  const double w_z = legacy ? 1.0 : beta, w_e = legacy ? beta : 1.0;
  const auto math = opmath_dtype(z.scalar_type());
  const auto gl = grad_loss.reshape({1}).to(math);
  auto dz = at::empty({n, d}, z.options());
  auto diff_sums = at::empty({k, d}, z.options().dtype(math));
  const auto [order, starts] = group_rows_cuda(idx, k);
  FASTGEN_DISPATCH_FLOATS(z.scalar_type(), "vq_quantize_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    if (n * d > 0) {
      FASTGEN_LAUNCH(blocks_for(n * d, 256), 256, 0, at::cuda::getCurrentCUDAStream(), vq_dz_kernel<scalar_t, A>)(
          gzq.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), e.const_data_ptr<scalar_t>(),
          idx.const_data_ptr<int64_t>(), gl.const_data_ptr<A>(), static_cast<A>(scale * w_z),
          dz.mutable_data_ptr<scalar_t>(), n, d, k);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    launch_segment<1, scalar_t, A, A>(z.const_data_ptr<scalar_t>(), e.const_data_ptr<scalar_t>(), order, starts,
                                      diff_sums.mutable_data_ptr<A>(), nullptr, k, d, 0.0);
  });
  return {dz, (diff_sums * (gl * (-scale * w_e))).to(e.scalar_type())};
}

// -- vq_code_sums / vq_ema_update -----------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> vq_code_sums_cuda(const at::Tensor& z_in, const at::Tensor& indices,
                                                     int64_t num_codes) {
  check_vq_code_sums(z_in, indices, num_codes);
  const auto guard = device_guard(z_in, "z");
  const auto z = z_in.contiguous();
  const auto [order, starts] = group_rows_cuda(indices.contiguous(), num_codes);
  auto sums = at::empty({num_codes, z.size(1)}, z.options().dtype(opmath_dtype(z.scalar_type())));
  FASTGEN_DISPATCH_FLOATS(z.scalar_type(), "vq_code_sums_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    launch_segment<0, scalar_t, A, A>(z.const_data_ptr<scalar_t>(), nullptr, order, starts,
                                      sums.mutable_data_ptr<A>(), nullptr, num_codes, z.size(1), 0.0);
  });
  return {(starts.narrow(0, 1, num_codes) - starts.narrow(0, 0, num_codes)).to(sums.scalar_type()), sums};
}

std::tuple<at::Tensor, at::Tensor> vq_ema_update_cuda(const at::Tensor& z_in, const at::Tensor& indices,
                                                      at::Tensor cluster_size, at::Tensor embed_sum,
                                                      double decay, double eps) {
  check_vq_ema(z_in, indices, cluster_size, embed_sum, decay, eps);
  const auto guard = device_guard(z_in, "z");
  const auto z = z_in.contiguous();
  const int64_t k = embed_sum.size(0);
  const auto [order, starts] = group_rows_cuda(indices.contiguous(), k);
  FASTGEN_DISPATCH_FLOATS(z.scalar_type(), "vq_ema_update_cuda", [&] {
    using T = scalar_t;
    FASTGEN_DISPATCH_FLOATS(embed_sum.scalar_type(), "vq_ema_update_cuda_buffers", [&] {
      using A = at::opmath_type<T>;  // the sums in z's math type; the EMA in the buffers' (kernel)
      launch_segment<2, T, A, scalar_t>(z.const_data_ptr<T>(), nullptr, order, starts,
                                        embed_sum.mutable_data_ptr<scalar_t>(),
                                        cluster_size.mutable_data_ptr<scalar_t>(), k, z.size(1), decay);
    });
  });
  const auto counts = (starts.narrow(0, 1, k) - starts.narrow(0, 0, k)).to(opmath_dtype(z.scalar_type()));
  return vq_ema_finish(counts, cluster_size, embed_sum, eps);
}

}  // namespace

FASTGEN_CUDA_LIBRARY_IMPL(m) {
  m.impl("vq_nearest_native", &vq_nearest_cuda);
  m.impl("vq_nearest_search_native", &vq_nearest_search_cuda);
  m.impl("vq_quantize_native", &vq_quantize_cuda);
  m.impl("vq_quantize_backward_native", &vq_quantize_backward_cuda);
  m.impl("vq_code_sums_native", &vq_code_sums_cuda);
  m.impl("vq_ema_update_native", &vq_ema_update_cuda);
}

}  // namespace fastgen
