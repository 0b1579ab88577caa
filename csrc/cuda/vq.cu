// CUDA kernel for vq_nearest: a shared-memory tiled z @ codebook.T (fp32 FMA accumulation)
// with ||e||^2 added in the epilogue and a running (min, argmin) per row; no N x K tensor.
// Block: 256 threads own kRowsPerBlock rows; each thread holds a 4 x 4 register tile of
// (row, code) accumulators per codebook tile of kCodesPerTile codes. After each codebook tile
// the 16 threads sharing a row reduce (value, index) with warp shuffles, lower index on ties;
// tiles are visited in order and merged with a strict <, so ties go to the lowest index.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cfloat>

#include "common/vq.h"
#include "cuda/device_guard.h"
#include "cuda/launch.h"

namespace fastgen {
namespace {

constexpr int kThreads = 256;       // 16 x 16
constexpr int kRowsPerBlock = 64;   // 16 row-threads x 4 rows
constexpr int kCodesPerTile = 64;   // 16 code-threads x 4 codes
constexpr int kDChunk = 16;

template <typename T>
__device__ __forceinline__ void take_better(T& v, int64_t& i, T ov, int64_t oi) {
  // smaller value wins; equal values: smaller index (NaN never arrives: it is mapped to +inf)
  if (ov < v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
vq_nearest_kernel(const T* __restrict__ z, const T* __restrict__ e, const T* __restrict__ enorm,
                  int64_t n, int64_t k, int64_t d, T* __restrict__ best_out, int64_t* __restrict__ idx_out) {
  __shared__ T zs[kDChunk][kRowsPerBlock + 1];
  __shared__ T es[kDChunk][kCodesPerTile + 1];
  const int tx = threadIdx.x % 16;  // code group
  const int ty = threadIdx.x / 16;  // row group
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock;
  const T inf = static_cast<T>(INFINITY);
  T best[4];
  int64_t best_i[4];
  for (int r = 0; r < 4; ++r) best[r] = inf, best_i[r] = -1;

  for (int64_t k0 = 0; k0 < k; k0 += kCodesPerTile) {
    T acc[4][4] = {};
    for (int64_t d0 = 0; d0 < d; d0 += kDChunk) {
      // cooperative loads: 64 rows x 16 dims each for z and e (4 elements per thread)
      for (int l = threadIdx.x; l < kRowsPerBlock * kDChunk; l += kThreads) {
        const int rr = l / kDChunk, dd = l % kDChunk;
        const int64_t zr = row0 + rr, ec = k0 + rr, dc = d0 + dd;
        zs[dd][rr] = (zr < n && dc < d) ? z[zr * d + dc] : T(0);
        es[dd][rr] = (ec < k && dc < d) ? e[ec * d + dc] : T(0);
      }
      __syncthreads();
#pragma unroll
      for (int dd = 0; dd < kDChunk; ++dd) {
        T a[4], b[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) a[r] = zs[dd][ty * 4 + r];
#pragma unroll
        for (int c = 0; c < 4; ++c) b[c] = es[dd][tx * 4 + c];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[r][c] += a[r] * b[c];
      }
      __syncthreads();
    }
    // epilogue: partial distance ||e||^2 - 2 z.e, min over this thread's 4 codes, then 16 threads
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      T v = inf;
      int64_t vi = -1;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t code = k0 + tx * 4 + c;
        if (code < k) {
          T dist = enorm[code] - T(2) * acc[r][c];
          if (dist != dist) dist = inf;  // NaN never wins
          if (dist < v) v = dist, vi = code;
        }
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) {  // the 16 lanes of this row group
        const T ov = __shfl_xor_sync(0xffffffffu, v, off, 16);
        const int64_t oi = __shfl_xor_sync(0xffffffffu, vi, off, 16);
        if (oi >= 0 && (vi < 0 || ov < v || (ov == v && oi < vi))) v = ov, vi = oi;
      }
      if (vi >= 0 && v < best[r]) best[r] = v, best_i[r] = vi;
    }
  }
  if (tx == 0) {
    for (int r = 0; r < 4; ++r) {
      const int64_t row = row0 + ty * 4 + r;
      if (row < n) {
        best_out[row] = best[r];
        idx_out[row] = best_i[r] < 0 ? 0 : best_i[r];
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> vq_nearest_cuda(const at::Tensor& z_in, const at::Tensor& e_in,
                                                   c10::string_view metric) {
  check_vq_nearest(z_in, e_in, metric);
  const auto guard = device_guard(z_in, "z");
  auto [z, e] = vq_math_inputs(z_in, e_in, metric);
  const int64_t n = z.size(0), k = e.size(0), d = z.size(1);
  auto idx = at::empty({n}, z.options().dtype(at::kLong));
  auto best = at::empty({n}, z.options());
  if (n == 0) return {idx, best};
  const auto enorm = (e * e).sum(1).contiguous();
  const dim3 grid(static_cast<unsigned>((n + kRowsPerBlock - 1) / kRowsPerBlock));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "vq_nearest_cuda", [&] {
    FASTGEN_LAUNCH(grid, kThreads, 0, stream, vq_nearest_kernel<scalar_t>)(
        z.const_data_ptr<scalar_t>(), e.const_data_ptr<scalar_t>(), enorm.const_data_ptr<scalar_t>(),
        n, k, d, best.mutable_data_ptr<scalar_t>(), idx.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {idx, vq_finish(best, idx, (z * z).sum(1))};
}

// -- vq_quantize -------------------------------------------------------------------------------

#define FASTGEN_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

constexpr int kWarpsPerBlock = 8;

inline unsigned blocks_for(int64_t n, int64_t per_block) {
  return static_cast<unsigned>(std::min<int64_t>((n + per_block - 1) / per_block, int64_t(1) << 30));
}

// One warp per row: gather the code, write taming's straight-through value, reduce the row's
// squared error with shuffles (fixed order: deterministic).
template <typename T, typename A>
__global__ void vq_gather_st_kernel(const T* __restrict__ z, const T* __restrict__ e, const int64_t* __restrict__ idx,
                                    T* __restrict__ zq, A* __restrict__ sq, int64_t n, int64_t d) {
  const int lane = threadIdx.x % 32;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32; row < n;
       row += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const T* zr = z + row * d;
    const T* er = e + idx[row] * d;
    A acc = 0;
    for (int64_t c = lane; c < d; c += 32) {
      const A diff = static_cast<A>(er[c]) - static_cast<A>(zr[c]);
      zq[row * d + c] = vq_st_value<T, A>(zr[c], er[c]);
      acc += diff * diff;
    }
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) sq[row] = acc;
  }
}

template <typename T, typename A>
__global__ void vq_dz_kernel(const T* __restrict__ g, const T* __restrict__ z, const T* __restrict__ e,
                             const int64_t* __restrict__ idx, const A* __restrict__ grad_loss, A scale,
                             T* __restrict__ dz, int64_t n, int64_t d, int64_t k) {
  const A c = grad_loss[0] * scale;  // grad_loss stays on the device: no host sync
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n * d;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / d, code = idx[row];
    const A ev = (code >= 0 && code < k) ? static_cast<A>(e[code * d + i % d]) : static_cast<A>(z[i]);
    dz[i] = static_cast<T>(static_cast<A>(g[i]) + c * (static_cast<A>(z[i]) - ev));
  }
}

// Per-code sums over rows grouped by code (order/starts from a stable sort): block (32, 8) per
// (code, 32 columns); thread (x, y) sums rows y, y + 8, ... of the group, then the 8 partials
// are added in a fixed order. MODE 0: out = sums; 1: out = sums of (z - e[code]); 2: EMA of the
// buffers out (embed_sum) and cs (cluster_size) with the sums and counts. The sums are in A (z's
// math type), the EMA in the buffers' math type E, as the reference (sums of z, then the update
// in the buffers' dtype): an fp32 z with fp64 buffers sums in fp32, updates in fp64.
constexpr int kSegCols = 32, kSegRows = 8;

template <typename T, typename A, typename O, int MODE>
__global__ void vq_segment_kernel(const T* __restrict__ z, const T* __restrict__ e, const int64_t* __restrict__ order,
                                  const int64_t* __restrict__ starts, O* __restrict__ out, O* __restrict__ cs,
                                  int64_t d, double decay) {
  using E = std::conditional_t<std::is_same_v<O, double>, double, float>;
  __shared__ A part[kSegRows][kSegCols];
  const int64_t code = blockIdx.x;
  const int64_t col = static_cast<int64_t>(blockIdx.y) * kSegCols + threadIdx.x;
  const int64_t lo = starts[code], hi = starts[code + 1];
  A acc = 0;
  if (col < d) {
    const A ev = MODE == 1 ? static_cast<A>(e[code * d + col]) : A(0);
    for (int64_t r = lo + threadIdx.y; r < hi; r += kSegRows) acc += static_cast<A>(z[order[r] * d + col]) - ev;
  }
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y != 0 || col >= d) return;
  A total = 0;
  for (int y = 0; y < kSegRows; ++y) total += part[y][threadIdx.x];
  if (MODE == 2) {
    out[code * d + col] = static_cast<O>(vq_ema<E>(static_cast<E>(out[code * d + col]), static_cast<E>(total),
                                                   static_cast<E>(decay)));
    if (blockIdx.y == 0 && threadIdx.x == 0)
      cs[code] = static_cast<O>(vq_ema<E>(static_cast<E>(cs[code]), static_cast<E>(hi - lo), static_cast<E>(decay)));
  } else {
    out[code * d + col] = static_cast<O>(total);
  }
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
  check_vq_nearest(z_in, e_in, "l2");
  check_same_float_tensor(z_in, "z", gzq_in, "grad_zq");
  check_vq_indices(indices, z_in.size(0), z_in);
  check_vq_grad_loss(grad_loss, z_in);
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
  TORCH_CHECK_TYPE(at::isFloatingType(z_in.scalar_type()), "fastgen: z must be a floating-point tensor");
  TORCH_CHECK_VALUE(z_in.dim() == 2, "fastgen: z must have shape (N, D), got ", z_in.sizes());
  TORCH_CHECK_VALUE(num_codes > 0, "fastgen: num_codes must be positive, got ", num_codes);
  check_vq_indices(indices, z_in.size(0), z_in);
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
  check_vq_ema(z_in, indices, cluster_size, embed_sum);
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
  m.impl("vq_quantize_native", &vq_quantize_cuda);
  m.impl("vq_quantize_backward_native", &vq_quantize_backward_cuda);
  m.impl("vq_code_sums_native", &vq_code_sums_cuda);
  m.impl("vq_ema_update_native", &vq_ema_update_cuda);
}

}  // namespace fastgen
