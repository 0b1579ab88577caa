// CUDA kernel for vq_nearest: a shared-memory tiled z @ codebook.T (fp32 FMA accumulation)
// with ||e||^2 added in the epilogue and a running (min, argmin) per row; no N x K tensor.
// Block: 256 threads own kRowsPerBlock rows; each thread holds a 4 x 4 register tile of
// (row, code) accumulators per codebook tile of kCodesPerTile codes. After each codebook tile
// the 16 threads sharing a row reduce (value, index) with warp shuffles, lower index on ties;
// tiles are visited in order and merged with a strict <, so ties go to the lowest index.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cfloat>

#include "common/vq.h"

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
  const c10::cuda::CUDAGuard guard(z_in.device());
  auto [z, e] = vq_math_inputs(z_in, e_in, metric);
  const int64_t n = z.size(0), k = e.size(0), d = z.size(1);
  auto idx = at::empty({n}, z.options().dtype(at::kLong));
  auto best = at::empty({n}, z.options());
  if (n == 0) return {idx, best};
  const auto enorm = (e * e).sum(1).contiguous();
  const dim3 grid(static_cast<unsigned>((n + kRowsPerBlock - 1) / kRowsPerBlock));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "vq_nearest_cuda", [&] {
    vq_nearest_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        z.const_data_ptr<scalar_t>(), e.const_data_ptr<scalar_t>(), enorm.const_data_ptr<scalar_t>(),
        n, k, d, best.mutable_data_ptr<scalar_t>(), idx.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {idx, vq_finish(best, idx, (z * z).sum(1))};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CUDA, m) { m.impl("vq_nearest_native", &vq_nearest_cuda); }

}  // namespace fastgen
