// The vq CUDA kernels (ATen-free: csrc/cuda/vq.cu launches them; under FASTGEN_CUDA_EMU the same
// source runs on the CPU execution model, csrc/emu/cuda_emu.h).
//
// vq_nearest, exact: vq_nearest_kernel, a shared-memory tiled z @ codebook.T (one fp32 / fp64
// FMA chain per (row, code), coordinates in order) with ||e||^2 in the epilogue and a running
// (min, argmin) per row; no N x K tensor. Block: 256 threads own kRowsPerBlock rows; each thread
// holds a 4 x 4 register tile of (row, code) accumulators per codebook tile of kCodesPerTile
// codes. After each codebook tile the 16 threads sharing a row reduce (value, index) with warp
// shuffles, lower index on ties; tiles are visited in order and merged with a strict <, so ties
// go to the lowest index.
//
// vq_nearest, certified two-stage search (docs/vq_certified.md, the bound: common/vq_bound.h):
//   vq_codebook_facts_kernel  max ||e_j||^2, max |e_jc|, max E_j for the bound (no host sync)
//   vq_candidates_kernel      stage 1: bf16 WMMA 16x16x16 products, fp32 accumulation, tile by
//                             tile; per row the running minimum of a_j = E_j - 2 z^.e^_j and the
//                             codes with a_j <= min + 2B, at most kCap per row (else the row
//                             falls back); never an N x K tensor
//   vq_rerank_kernel          stage 2: one warp per row, one candidate per lane, recomputed with
//                             vq_nearest_kernel's own arithmetic (the same FMA chain from 0 in
//                             coordinate order, E - 2 acc): the same bits; lowest index on ties
//   vq_nearest_kernel         with rows_only: the exact kernel on the row blocks that hold a
//                             fallback row, writing only those rows
#pragma once

#ifdef FASTGEN_CUDA_EMU
#include "emu/cuda_emu.h"  // __nv_bfloat16, nvcuda::wmma, warp collectives of the CPU execution model
#else
#include <cuda_bf16.h>
#include <mma.h>
#endif

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/vq_bound.h"
#include "common/vq_math.h"

namespace fastgen {
namespace vq_kernels {

// -- exact vq_nearest -----------------------------------------------------------------------------

constexpr int kThreads = 256;       // 16 x 16
constexpr int kRowsPerBlock = 64;   // 16 row-threads x 4 rows
constexpr int kCodesPerTile = 64;   // 16 code-threads x 4 codes
constexpr int kDChunk = 16;

// rows_only: nullptr, or per-row status of the certified search; then only rows with a
// negative status are computed and written (a block with none returns at once).
template <typename T>
__global__ void __launch_bounds__(kThreads)
vq_nearest_kernel(const T* __restrict__ z, const T* __restrict__ e, const T* __restrict__ enorm,
                  int64_t n, int64_t k, int64_t d, const int32_t* __restrict__ rows_only,
                  T* __restrict__ best_out, int64_t* __restrict__ idx_out) {
  __shared__ T zs[kDChunk][kRowsPerBlock + 1];
  __shared__ T es[kDChunk][kCodesPerTile + 1];
  const int tx = threadIdx.x % 16;  // code group
  const int ty = threadIdx.x / 16;  // row group
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock;
  if (rows_only != nullptr) {  // the same answer in every thread: the return is block-uniform
    bool any = false;
    for (int r = 0; r < kRowsPerBlock && row0 + r < n; ++r) any = any || rows_only[row0 + r] < 0;
    if (!any) return;
  }
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
          for (int c = 0; c < 4; ++c) acc[r][c] = vq_fma(a[r], b[c], acc[r][c]);
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
      if (row < n && (rows_only == nullptr || rows_only[row] < 0)) {
        best_out[row] = best[r];
        idx_out[row] = best_i[r] < 0 ? 0 : best_i[r];
      }
    }
  }
}

// -- certified two-stage search ---------------------------------------------------------------------

constexpr int kCap = 32;             // stage-2 candidates per row: one per lane of the re-rank warp
constexpr int kS1Warps = 4;
constexpr int kS1Threads = 32 * kS1Warps;
constexpr int kS1Rows = 16 * kS1Warps;  // 16 rows per warp (one WMMA row tile)
constexpr int kS1Codes = 64;            // codes per tile: 4 WMMA column tiles
constexpr int kS1Chunk = 64;            // D per shared-memory chunk: 4 WMMA k-steps
constexpr int kS1Ld = kS1Chunk + 8;     // bf16 row pitch: 16 B of padding keeps 32 B alignment
constexpr int kS1LdS = kS1Codes + 4;    // fp32 score row pitch
constexpr int kRerankWarps = 8;

__device__ __forceinline__ uint64_t vq_abs_bits(double x) {  // order of |x| (NaN above +inf)
  const double a = ::fabs(x);
  uint64_t u;
  std::memcpy(&u, &a, sizeof(u));
  return u;
}
__device__ __forceinline__ double vq_bits_double(uint64_t u) {
  double x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

// facts[0..2] = bits of max_j ||e_j||^2 (float64 sum), max |e_jc|, max E_j; zero-initialized.
// Maxima of the bit patterns of non-negative doubles: NaN (0x7ff8...) orders above +inf, so a
// non-finite codebook fails vq_codebook_ok.
template <typename T>
__global__ void __launch_bounds__(256)
vq_codebook_facts_kernel(const T* __restrict__ e, const T* __restrict__ enorm, int64_t k, int64_t d,
                         unsigned long long* __restrict__ facts) {
  const int lane = threadIdx.x % 32;
  uint64_t n2 = 0, am = 0, en = 0;
  for (int64_t code = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32; code < k;
       code += static_cast<int64_t>(gridDim.x) * 8) {
    double s = 0;
    for (int64_t c = lane; c < d; c += 32) {
      const double x = static_cast<double>(e[code * d + c]);
      s += x * x;
      const uint64_t ax = vq_abs_bits(x);
      am = ax > am ? ax : am;
    }
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    const uint64_t sb = vq_abs_bits(s), eb = vq_abs_bits(static_cast<double>(enorm[code]));
    n2 = sb > n2 ? sb : n2;
    en = eb > en ? eb : en;
  }
  for (int off = 16; off > 0; off >>= 1) {
    const uint64_t o = __shfl_xor_sync(0xffffffffu, am, off);
    am = o > am ? o : am;
  }
  if (lane == 0) {
    atomicMax(facts + 0, static_cast<unsigned long long>(n2));
    atomicMax(facts + 1, static_cast<unsigned long long>(am));
    atomicMax(facts + 2, static_cast<unsigned long long>(en));
  }
}

// Stage 1. Block: 4 warps, 64 rows (16 per warp); the codebook in tiles of 64 codes, D in
// chunks of 64 staged in shared memory as bf16 (rounded to nearest from fp32 / fp64). Per tile
// each warp computes its 16 x 64 scores with WMMA, stores them to its shared score tile and scans
// it row by row: warp minimum, threshold round_up(min + 2B) when the minimum drops, a ballot of
// the codes at or below it appended in index order to the row's list in global memory (cand,
// cval: kCap per row). When a list would overflow it is first compacted against the current
// threshold (entries kept against an older, higher threshold drop out); if it still overflows
// the row's count becomes -1 and the row falls back to the exact kernel.
// count / thr_out: per row, the list length (-1: fallback) and the final threshold.
template <typename T>
__global__ void __launch_bounds__(kS1Threads)
vq_candidates_kernel(const T* __restrict__ z, const T* __restrict__ e, const T* __restrict__ enorm,
                     const unsigned long long* __restrict__ facts, VqBound bound, int64_t n, int64_t k,
                     int64_t d, int32_t* __restrict__ cand, float* __restrict__ cval,
                     int32_t* __restrict__ count, float* __restrict__ thr_out) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  __shared__ __align__(32) __nv_bfloat16 zs[kS1Rows * kS1Ld];
  __shared__ __align__(32) __nv_bfloat16 es[kS1Codes * kS1Ld];
  __shared__ __align__(32) float sc[kS1Warps * 16 * kS1LdS];
  __shared__ double s_twob[kS1Rows];
  __shared__ float s_amin[kS1Rows], s_thr[kS1Rows];
  __shared__ int s_cnt[kS1Rows];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kS1Rows;
  const float inf = INFINITY;

  // per-row bound: ||z||^2 and max |z_c| in float64, 32 lanes over D
  const VqCodebookFacts f{vq_bits_double(facts[0]), vq_bits_double(facts[1]), vq_bits_double(facts[2])};
  for (int r = 0; r < 16; ++r) {
    const int lr = warp * 16 + r;
    const int64_t row = row0 + lr;
    double s = 0, m = 0;
    if (row < n) {
      for (int64_t c = lane; c < d; c += 32) {
        const double x = static_cast<double>(z[row * d + c]);
        s += x * x;
        m = ::fmax(m, ::fabs(x));  // a NaN is caught by s
      }
    }
    for (int off = 16; off > 0; off >>= 1) {
      s += __shfl_xor_sync(0xffffffffu, s, off);
      m = ::fmax(m, __shfl_xor_sync(0xffffffffu, m, off));
    }
    if (lane == 0) {
      double two_b = 0;
      const bool ok = row < n && vq_row_two_b(bound, s, m, f, &two_b);
      s_twob[lr] = two_b;
      s_amin[lr] = inf;
      s_thr[lr] = inf;
      s_cnt[lr] = ok ? 0 : -1;
    }
  }
  __syncthreads();
  bool any = false;  // block-uniform: every thread reads the same 64 entries after the barrier
  for (int r = 0; r < kS1Rows; ++r) any = any || s_cnt[r] >= 0;

  const int64_t nchunks = (d + kS1Chunk - 1) / kS1Chunk;
  float* my_sc = sc + warp * 16 * kS1LdS;
  for (int64_t k0 = 0; any && k0 < k; k0 += kS1Codes) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) wmma::fill_fragment(acc[j], 0.0f);
    for (int64_t ch = 0; ch < nchunks; ++ch) {
      const int64_t d0 = ch * kS1Chunk;
      const bool load_z = nchunks > 1 || k0 == 0;  // one chunk: z stays from the first tile
      for (int l = threadIdx.x; l < kS1Rows * kS1Chunk; l += kS1Threads) {
        const int rr = l / kS1Chunk, dd = l % kS1Chunk;
        const int64_t dc = d0 + dd, zr = row0 + rr, ec = k0 + rr;
        if (load_z)
          zs[rr * kS1Ld + dd] = __float2bfloat16_rn((zr < n && dc < d) ? static_cast<float>(z[zr * d + dc]) : 0.0f);
        es[rr * kS1Ld + dd] = __float2bfloat16_rn((ec < k && dc < d) ? static_cast<float>(e[ec * d + dc]) : 0.0f);
      }
      __syncthreads();
      const int64_t left = d - d0;
      const int ksteps = left >= kS1Chunk ? kS1Chunk / 16 : static_cast<int>((left + 15) / 16);
      for (int kk = 0; kk < ksteps; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
        wmma::load_matrix_sync(a, zs + warp * 16 * kS1Ld + kk * 16, kS1Ld);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          // the e tile is stored (code, dim) row-major: e^T column-major
          wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
          wmma::load_matrix_sync(b, es + j * 16 * kS1Ld + kk * 16, kS1Ld);
          wmma::mma_sync(acc[j], a, b, acc[j]);
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) wmma::store_matrix_sync(my_sc + j * 16, acc[j], kS1LdS, wmma::mem_row_major);
    __syncwarp();

    // scan the warp's 16 rows; lane l owns codes k0 + l and k0 + 32 + l
    const int64_t c0 = k0 + lane, c1 = k0 + 32 + lane;
    const float en0 = c0 < k ? static_cast<float>(enorm[c0]) : inf;
    const float en1 = c1 < k ? static_cast<float>(enorm[c1]) : inf;
    const unsigned below = (1u << lane) - 1u;
    for (int r = 0; r < 16; ++r) {
      const int lr = warp * 16 + r;
      int cnt = s_cnt[lr];
      if (cnt < 0) continue;  // warp-uniform
      const int64_t row = row0 + lr;
      float a0 = c0 < k ? en0 - 2.0f * my_sc[r * kS1LdS + lane] : inf;
      float a1 = c1 < k ? en1 - 2.0f * my_sc[r * kS1LdS + 32 + lane] : inf;
      if (!(a0 == a0)) a0 = inf;
      if (!(a1 == a1)) a1 = inf;
      float m = ::fminf(a0, a1);
      for (int off = 16; off > 0; off >>= 1) m = ::fminf(m, __shfl_xor_sync(0xffffffffu, m, off));
      float amin = s_amin[lr], thr = s_thr[lr];
      if (m < amin) {
        amin = m;
        thr = vq_round_up_f32(static_cast<double>(m) + s_twob[lr]);
      }
      const bool keep0 = a0 <= thr, keep1 = a1 <= thr;
      const unsigned b0 = __ballot_sync(0xffffffffu, keep0), b1 = __ballot_sync(0xffffffffu, keep1);
      const int n0 = __popc(b0), nnew = n0 + __popc(b1);
      if (nnew > 0 && cnt + nnew > kCap) {  // compact: drop entries above the current threshold
        int32_t ci = 0;
        float cv = inf;
        if (lane < cnt) ci = cand[row * kCap + lane], cv = cval[row * kCap + lane];
        const bool stay = lane < cnt && cv <= thr;
        const unsigned bs = __ballot_sync(0xffffffffu, stay);
        __syncwarp();
        if (stay) {
          const int pos = __popc(bs & below);
          cand[row * kCap + pos] = ci;
          cval[row * kCap + pos] = cv;
        }
        __syncwarp();
        cnt = __popc(bs);
      }
      if (nnew > 0) {
        if (cnt + nnew > kCap) {
          cnt = -1;
        } else {
          if (keep0) {
            const int pos = cnt + __popc(b0 & below);
            cand[row * kCap + pos] = static_cast<int32_t>(c0);
            cval[row * kCap + pos] = a0;
          }
          if (keep1) {
            const int pos = cnt + n0 + __popc(b1 & below);
            cand[row * kCap + pos] = static_cast<int32_t>(c1);
            cval[row * kCap + pos] = a1;
          }
          cnt += nnew;
        }
      }
      __syncwarp();
      if (lane == 0) s_amin[lr] = amin, s_thr[lr] = thr, s_cnt[lr] = cnt;
      __syncwarp();
    }
  }
  if (lane < 16) {
    const int lr = warp * 16 + lane;
    const int64_t row = row0 + lr;
    if (row < n) {
      count[row] = s_cnt[lr];
      thr_out[row] = s_thr[lr];
    }
  }
#else
  __trap();  // launched only on sm_80+ (the launcher checks the device)
#endif
}

// Stage 2: warp w of the block takes one row; lane l recomputes candidate l (when its stage-1
// value is within the final threshold) exactly as vq_nearest_kernel does: acc = FMA chain from 0
// over the coordinates in order, dist = E - 2 acc, NaN as +inf; then the warp's minimum with the
// lowest index on ties, which is the exact kernel's answer (docs/vq_certified.md). Rows with a
// negative (or zero) count are left to vq_nearest_kernel(rows_only = count); count becomes the
// number of candidates re-ranked (-1 for those rows).
template <typename T>
__global__ void __launch_bounds__(32 * kRerankWarps)
vq_rerank_kernel(const T* __restrict__ z, const T* __restrict__ e, const T* __restrict__ enorm,
                 const int32_t* __restrict__ cand, const float* __restrict__ cval, const float* __restrict__ thr,
                 int32_t* __restrict__ count, int64_t n, int64_t d, T* __restrict__ best_out,
                 int64_t* __restrict__ idx_out) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRerankWarps + threadIdx.x / 32;
  if (row >= n) return;  // warp-uniform
  const int cnt = count[row];
  if (cnt <= 0) {
    if (lane == 0) count[row] = -1;
    return;
  }
  const T inf = static_cast<T>(INFINITY);
  const bool mine = lane < cnt && cval[row * kCap + lane] <= thr[row];
  T v = inf;
  int64_t vi = -1;
  if (mine) {
    const int64_t code = cand[row * kCap + lane];
    const T* zr = z + row * d;
    const T* er = e + code * d;
    T acc = 0;
    for (int64_t c = 0; c < d; ++c) acc = vq_fma(zr[c], er[c], acc);
    T dist = enorm[code] - T(2) * acc;
    if (dist != dist) dist = inf;
    if (dist < inf) v = dist, vi = code;
  }
  const unsigned kept = __ballot_sync(0xffffffffu, mine);
  for (int off = 16; off > 0; off >>= 1) {
    const T ov = __shfl_xor_sync(0xffffffffu, v, off);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, vi, off);
    if (oi >= 0 && (vi < 0 || ov < v || (ov == v && oi < vi))) v = ov, vi = oi;
  }
  if (lane == 0) {
    best_out[row] = v;
    idx_out[row] = vi < 0 ? 0 : vi;
    count[row] = __popc(kept);
  }
}

// -- vq_quantize --------------------------------------------------------------------------------

constexpr int kWarpsPerBlock = 8;

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

}  // namespace vq_kernels
}  // namespace fastgen
