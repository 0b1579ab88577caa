#pragma once
// Block reductions and the per-sample launch tiling of the CUDA kernels: one copy, used by
// flow.cu, gan.cu, norm.cu, contrastive.cu and vae.cu (and by the cuda_emu build of them,
// against csrc/emu/). No ATen.
//
// block_sum / block_max contract:
//   - every thread of the block calls it, with blockDim.x == kThreads (a multiple of 32, <= 1024)
//     and block-uniform control flow (it contains __syncthreads);
//   - the result is the block's total in thread 0 only (other threads of warp 0 hold partial
//     sums, the rest their warp's); broadcast it (e.g. through shared memory) if all need it;
//   - it begins with a __syncthreads, so calls may follow one another directly: the shared
//     buffer of the previous call (same T) is no longer being read. Callers add no barrier.
//   - the order of the additions is fixed (shuffle tree per warp, then over the warps): the
//     same inputs give the same bits on every run.
#include <cstdint>
#include <limits>

#include "cuda/kernel.h"

namespace fastgen {
namespace reduce {

template <int kThreads, typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, T identity, Op op) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block_reduce: kThreads must be a multiple of 32, <= 1024");
  __shared__ T warp_partials[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // the previous call's reads of warp_partials are done
  if (lane == 0) warp_partials[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_partials[threadIdx.x] : identity;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  return v;
}

struct Add {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a < b ? b : a; }
};

template <int kThreads, typename T>
__device__ __forceinline__ T block_sum(T v) {
  return block_reduce<kThreads>(v, T(0), Add{});
}

template <int kThreads, typename T>
__device__ __forceinline__ T block_max(T v) {
  return block_reduce<kThreads>(v, -std::numeric_limits<T>::infinity(), Max{});
}

// v of thread 0, in every thread of the block (all threads call it; it contains __syncthreads).
template <typename acc_t>
__device__ __forceinline__ acc_t broadcast_from_thread0(acc_t v) {
  __shared__ acc_t slot;
  if (threadIdx.x == 0) slot = v;
  __syncthreads();
  v = slot;
  __syncthreads();
  return v;
}

// Per-sample reductions over a (rows, cols) view: grid (rows, chunks); block (row, y) covers
// elements [y * chunk, min(cols, (y + 1) * chunk)) of its row and writes one partial, which the
// host sums per row in a fixed order. Chunks hold at least min_chunk elements and there are at
// most 65535 of them (grid y). rows must fit grid x: check fits() on the host.
struct RowTiling {
  static constexpr int64_t kMinChunk = 8192;
  static constexpr int64_t kMaxGridY = 65535;
  static constexpr int64_t kMaxRows = 2147483647;  // grid x
  int64_t rows, cols, chunk, chunks;
  RowTiling(int64_t rows_, int64_t numel) : rows(rows_), cols(rows_ == 0 ? 0 : numel / rows_) {
    chunk = (cols + kMaxGridY - 1) / kMaxGridY;
    if (chunk < kMinChunk) chunk = kMinChunk;
    chunks = (cols + chunk - 1) / chunk;
    if (chunks < 1) chunks = 1;
  }
  bool fits() const { return rows <= kMaxRows; }
  dim3 grid() const { return dim3(static_cast<unsigned>(rows), static_cast<unsigned>(chunks)); }
};

}  // namespace reduce
}  // namespace fastgen
