// CPU kernel for vq_nearest. Distances are computed directly with SIMD across codes
// (||e||^2 - 2 z.e in FMAs, a running per-lane (min, index) per row), never as an N x K matrix:
// fp32 at every D (cache-blocked over the codebook; AVX-512 and AVX2 builds have their own
// register blocks), other dtypes at D <= 32. Otherwise the codebook is walked in tiles; each
// tile's z @ e.T comes from BLAS (at::mm into a reused buffer) and a SIMD epilogue keeps the
// running (min, argmin) per row.
// Peak extra memory: the transposed codebook, or one kTileN x kTileK tile (4 MiB in fp32).
// Ties go to the lowest index: lanes keep their first minimum (strict <), lanes are merged by
// (value, index), tiles are visited in order and merged with strict <. NaN never wins a `<`.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "common/dispatch.h"
#include "common/vq.h"
#include "cpu/vq_search.h"

namespace fastgen {
namespace {

using at::vec::Vectorized;

constexpr int64_t kTileN = 1024;
constexpr int64_t kTileK = 1024;

// min over j of (enorm[j] - 2 * s[j]) for j in [0, n): value and first index (-1 if none finite).
template <typename T>
inline std::pair<T, int64_t> tile_row_min(const T* s, const T* enorm, int64_t n) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  const T inf = std::numeric_limits<T>::infinity();
  T best = inf;
  int64_t best_i = -1;
  int64_t j = 0;
  if (n >= W) {
    V vbest(inf), vidx(T(-1)), cur = V::arange(T(0), T(1));
    const V step(static_cast<T>(W)), minus_two(T(-2));
    for (; j + W <= n; j += W) {
      const V d = at::vec::fmadd(minus_two, V::loadu(s + j), V::loadu(enorm + j));
      const V better = d < vbest;
      vbest = V::blendv(vbest, d, better);
      vidx = V::blendv(vidx, cur, better);
      cur = cur + step;
    }
    T bv[W], bi[W];
    vbest.store(bv);
    vidx.store(bi);
    for (int64_t l = 0; l < W; ++l) {
      const int64_t li = static_cast<int64_t>(bi[l]);
      if (li >= 0 && (bv[l] < best || (bv[l] == best && li < best_i))) {
        best = bv[l];
        best_i = li;
      }
    }
  }
  for (; j < n; ++j) {  // tail: indices above every lane's, so strict < keeps ties on the lanes
    const T d = enorm[j] - T(2) * s[j];
    if (d < best) {
      best = d;
      best_i = j;
    }
  }
  return {best, best_i};
}

// Small D: BLAS on a K x D panel with tiny D is inefficient, so compute distances directly.
// Codes run along SIMD lanes (codebook transposed to [D, Kp], Kp = K rounded up to the vector
// width, padding codes at ||e||^2 = +inf so they never win) and kRows rows share every codebook
// load. Lane indices are held as T: exact since K < 2^24 on this path.
constexpr int64_t kDirectMaxD = 32;
constexpr int kRows = 8;

// DIM > 0: D known at compile time (fully unrolled inner loop); DIM == 0: runtime d.
template <typename T, int DIM>
void nearest_direct(const T* z, const T* et, const T* enorm, int64_t n, int64_t d_runtime,
                    int64_t kp, T* best, int64_t* best_idx) {
  const int64_t d = DIM > 0 ? DIM : d_runtime;
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  const T inf = std::numeric_limits<T>::infinity();
  at::parallel_for(0, (n + kRows - 1) / kRows, 4, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kRows;
      const int rows = static_cast<int>(std::min<int64_t>(kRows, n - r0));
      T zm2[kRows][kDirectMaxD];
      for (int r = 0; r < kRows; ++r)  // missing rows repeat the last one; results dropped
        for (int64_t c = 0; c < d; ++c) zm2[r][c] = T(-2) * z[(r0 + std::min(r, rows - 1)) * d + c];
      V vbest[kRows], vidx[kRows];
      for (int r = 0; r < kRows; ++r) vbest[r] = V(inf), vidx[r] = V(T(-1));
      V cur = V::arange(T(0), T(1));
      const V step(static_cast<T>(W));
      for (int64_t j = 0; j < kp; j += W) {
        V acc[kRows];
        const V en = V::loadu(enorm + j);
        for (int r = 0; r < kRows; ++r) acc[r] = en;
        for (int64_t c = 0; c < d; ++c) {
          const V ev = V::loadu(et + c * kp + j);
          for (int r = 0; r < kRows; ++r) acc[r] = at::vec::fmadd(V(zm2[r][c]), ev, acc[r]);
        }
        for (int r = 0; r < kRows; ++r) {
          const V better = acc[r] < vbest[r];
          vbest[r] = V::blendv(vbest[r], acc[r], better);
          vidx[r] = V::blendv(vidx[r], cur, better);
        }
        cur = cur + step;
      }
      for (int r = 0; r < rows; ++r) {
        T bv[W], bi[W];
        vbest[r].store(bv);
        vidx[r].store(bi);
        T bestv = inf;
        int64_t besti = -1;
        for (int64_t l = 0; l < W; ++l) {
          const int64_t li = static_cast<int64_t>(bi[l]);
          if (li >= 0 && (bv[l] < bestv || (bv[l] == bestv && li < besti))) bestv = bv[l], besti = li;
        }
        finish_row(bestv, besti, z + (r0 + r) * d, d, best + r0 + r, best_idx + r0 + r);
      }
    }
  });
}

// -2 z of rows [r0, r0 + count) into zm2 ([count][d]); rows past n repeat the last one (their
// results are dropped), so register blocks never need a partial-row path
inline void load_chunk_rows(const float* z, int64_t r0, int64_t rows, int64_t count, int64_t d, float* zm2) {
  for (int64_t r = 0; r < count; ++r) {
    const float* src = z + (r0 + std::min(r, rows - 1)) * d;
    for (int64_t c = 0; c < d; ++c) zm2[r * d + c] = -2.f * src[c];
  }
}

// fp32 on AVX2 builds, D <= 32. With 16 vector registers the 8 x 1 block of nearest_direct spills
// its per-row (min, index) pairs, and their update (compare + two blends per row and vector)
// costs a third of the FMAs at D = 8. Here the codebook comes in panels of 16 codes
// ([D][16] contiguous, one stream) and a block of kSmallRows = 4 rows x 2 vectors (8
// accumulators, enough to hide the FMA latency) only takes a running minimum per row over
// kSmallBlock codes (one min per vector); per lane, the first block holding the lane's minimum
// is kept. A row's answer lies in the first block its best lanes name (blocks are index
// ranges, visited in order, improved on strictly), and a rescan of that block with the same
// arithmetic stops at the lowest index with exactly the minimum distance.
constexpr int kSmallRows = 4;
constexpr int64_t kSmallBlock = 128;

// min(a, b) where b is never NaN: a NaN a leaves b (a NaN distance never wins)
inline Vectorized<float> min_skip_nan(const Vectorized<float>& a, const Vectorized<float>& b) {
#if defined(CPU_CAPABILITY_AVX2)
  return _mm256_min_ps(a, b);  // returns the second operand when either is NaN
#else
  return Vectorized<float>::blendv(b, a, a < b);
#endif
}

// bit l set where lane l of a equals b
inline int lanes_equal(const Vectorized<float>& a, float b) {
#if defined(CPU_CAPABILITY_AVX2)
  return _mm256_movemask_ps(_mm256_cmp_ps(a, _mm256_set1_ps(b), _CMP_EQ_OQ));
#else
  float v[Vectorized<float>::size()];
  a.store(v);
  int mask = 0;
  for (int l = 0; l < Vectorized<float>::size(); ++l) mask |= (v[l] == b) << l;
  return mask;
#endif
}

template <int DIM>
void nearest_small_vec(const float* z, const float* ep, const float* enorm, int64_t n, int64_t d_runtime,
                       int64_t kp, float* best, int64_t* best_idx) {
  using Vec = Vectorized<float>;
  constexpr int64_t W = Vec::size(), P = 2 * W, R = kSmallRows, B = kSmallBlock, kChunk = 8 * R;
  static_assert(B % P == 0, "blocks hold whole panels");
  const int64_t d = DIM > 0 ? DIM : d_runtime;
  const int64_t tile = std::max<int64_t>(B, ((int64_t(128) << 10) / (d * 4)) / B * B);  // codes per tile
  const float inf = std::numeric_limits<float>::infinity();
  at::parallel_for(0, (n + kChunk - 1) / kChunk, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> zm2(kChunk * d);  // -2 z of the chunk's rows
    std::vector<Vec> vbest(kChunk), vblock(kChunk);
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      const int64_t r0 = chunk * kChunk;
      const int64_t rows = std::min(kChunk, n - r0);
      load_chunk_rows(z, r0, rows, kChunk, d, zm2.data());
      for (int64_t r = 0; r < kChunk; ++r) {
        vbest[r] = Vec(inf), vblock[r] = Vec(-1.f);
      }
      for (int64_t t0 = 0; t0 < kp; t0 += tile) {
        const int64_t t1 = std::min(kp, t0 + tile);
        for (int64_t rb = 0; rb < kChunk; rb += R) {
          const float* zr = zm2.data() + rb * d;
          for (int64_t b0 = t0; b0 < t1; b0 += B) {
            const int64_t b1 = std::min(t1, b0 + B);
            Vec m[R];
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) m[r] = Vec(inf);
            for (int64_t j = b0; j < b1; j += P) {
              const float* pe = ep + j * d;  // panel j / P
              Vec acc[R][2];
              const Vec en0 = Vec::loadu(enorm + j), en1 = Vec::loadu(enorm + j + W);
#pragma GCC unroll 4
              for (int r = 0; r < R; ++r) acc[r][0] = en0, acc[r][1] = en1;
              for (int64_t c = 0; c < d; ++c) {
                const Vec e0 = Vec::loadu(pe + c * P), e1 = Vec::loadu(pe + c * P + W);
#pragma GCC unroll 4
                for (int r = 0; r < R; ++r) {
                  const Vec zb(zr[r * d + c]);
                  acc[r][0] = at::vec::fmadd(zb, e0, acc[r][0]);
                  acc[r][1] = at::vec::fmadd(zb, e1, acc[r][1]);
                }
              }
#pragma GCC unroll 4
              for (int r = 0; r < R; ++r) m[r] = min_skip_nan(acc[r][1], min_skip_nan(acc[r][0], m[r]));
            }
            const Vec start(static_cast<float>(b0));
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) {
              const Vec better = m[r] < vbest[rb + r];
              vbest[rb + r] = Vec::blendv(vbest[rb + r], m[r], better);
              vblock[rb + r] = Vec::blendv(vblock[rb + r], start, better);
            }
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        float bv[W], bj[W];
        vbest[r].store(bv);
        vblock[r].store(bj);
        float bestv = inf, block = -1.f;
        for (int64_t l = 0; l < W; ++l) {
          if (bj[l] < 0) continue;
          if (bv[l] < bestv || (bv[l] == bestv && bj[l] < block)) bestv = bv[l], block = bj[l];
        }
        int64_t besti = -1;
        if (block >= 0) {  // the first code of the block at exactly bestv
          const float* zr = zm2.data() + r * d;
          const int64_t j0 = static_cast<int64_t>(block), j1 = std::min(kp, j0 + B);
          for (int64_t j = j0; j < j1; j += W) {
            const float* pe = ep + (j / P) * P * d + j % P;
            Vec acc = Vec::loadu(enorm + j);
            for (int64_t c = 0; c < d; ++c) acc = at::vec::fmadd(Vec(zr[c]), Vec::loadu(pe + c * P), acc);
            if (const int mask = lanes_equal(acc, bestv)) {
              besti = j + __builtin_ctz(mask);
              break;
            }
          }
          TORCH_INTERNAL_ASSERT(besti >= 0, "nearest_small_vec: rescan lost the minimum");
        }
        finish_row(bestv, besti, z + (r0 + r) * d, d, best + r0 + r, best_idx + r0 + r);
      }
    }
  });
}

// The codebook [K, D] as panels of `width` codes, [Kp / width][D][width] (one contiguous stream
// per coordinate), padding codes zero with ||e||^2 = +inf (they never win); the second tensor
// holds the Kp norms.
std::pair<at::Tensor, at::Tensor> pack_panels(const at::Tensor& e, const at::Tensor& enorm, int64_t width) {
  const int64_t k = e.size(0), d = e.size(1), kp = (k + width - 1) / width * width;
  auto padded = at::zeros({kp, d}, e.options());
  padded.narrow(0, 0, k).copy_(e);
  auto panels = padded.view({kp / width, width, d}).transpose(1, 2).contiguous();
  auto en = at::full({kp}, std::numeric_limits<double>::infinity(), e.options());
  en.narrow(0, 0, k).copy_(enorm);
  return {panels, en};
}

#if !defined(CPU_CAPABILITY_AVX512)
// fp32 on AVX2 builds (16 vector registers), D > 32: the same GEMM-style register block as
// nearest_panel_f32 below, written with at::vec. Panels of kPanelV vectors (16 codes), a block
// of kPanelRowsV = 6 rows x 2 vectors: per coordinate 2 codebook loads and 6 broadcasts feed
// 12 FMAs in 15 registers (the 8 x 1 block of nearest_direct needs 9 loads per 8 FMAs). Rows
// go in chunks of 48; a chunk walks the codebook in ~256 KiB tiles that stay in L2 while its 8
// row blocks pass over them. Per lane the running minimum and the start of the vector it came
// from are kept as floats (exact: K < 2^24 on this path), moved by compare + blend where a
// lane improved; lanes are merged by (value, index) at the end, so ties go to the lowest index.
constexpr int kPanelV = 2;
constexpr int kPanelRowsV = 6;

template <int DIM>
void nearest_panel_vec(const float* z, const float* ep, const float* enorm, int64_t n, int64_t d_runtime,
                       int64_t kp, float* best, int64_t* best_idx) {
  using Vec = Vectorized<float>;
  constexpr int64_t W = Vec::size(), V = kPanelV, P = V * W, R = kPanelRowsV, kChunk = 8 * R;
  const int64_t d = DIM > 0 ? DIM : d_runtime;
  const int64_t panels = kp / P;
  const int64_t tile = std::max<int64_t>(1, (int64_t(256) << 10) / (P * d * 4));
  const float inf = std::numeric_limits<float>::infinity();
  at::parallel_for(0, (n + kChunk - 1) / kChunk, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> zm2(kChunk * d);  // -2 z of the chunk's rows
    std::vector<Vec> vbest(kChunk * V), vblock(kChunk * V);
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      const int64_t r0 = chunk * kChunk;
      const int64_t rows = std::min(kChunk, n - r0);
      load_chunk_rows(z, r0, rows, kChunk, d, zm2.data());
      for (int64_t r = 0; r < kChunk; ++r) {
        for (int64_t v = 0; v < V; ++v) vbest[r * V + v] = Vec(inf), vblock[r * V + v] = Vec(-1.f);
      }
      for (int64_t t0 = 0; t0 < panels; t0 += tile) {
        const int64_t t1 = std::min(panels, t0 + tile);
        for (int64_t rb = 0; rb < kChunk; rb += R) {
          const float* zr = zm2.data() + rb * d;
          for (int64_t p = t0; p < t1; ++p) {
            const float* pe = ep + p * P * d;
            Vec acc[R][V];
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v) {
              const Vec en = Vec::loadu(enorm + p * P + v * W);
#pragma GCC unroll 8
              for (int r = 0; r < R; ++r) acc[r][v] = en;
            }
            for (int64_t c = 0; c < d; ++c) {
              Vec ev[V];
#pragma GCC unroll 4
              for (int v = 0; v < V; ++v) ev[v] = Vec::loadu(pe + c * P + v * W);
#pragma GCC unroll 8
              for (int r = 0; r < R; ++r) {
                const Vec zb(zr[r * d + c]);
#pragma GCC unroll 4
                for (int v = 0; v < V; ++v) acc[r][v] = at::vec::fmadd(zb, ev[v], acc[r][v]);
              }
            }
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v) {
              const Vec start(static_cast<float>(p * P + v * W));
#pragma GCC unroll 8
              for (int r = 0; r < R; ++r) {
                Vec& vb = vbest[(rb + r) * V + v];
                Vec& vj = vblock[(rb + r) * V + v];
                const Vec better = acc[r][v] < vb;
                vb = Vec::blendv(vb, acc[r][v], better);
                vj = Vec::blendv(vj, start, better);
              }
            }
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        float bestv = inf;
        int64_t besti = -1;
        for (int64_t v = 0; v < V; ++v) {
          float bv[W], bj[W];
          vbest[r * V + v].store(bv);
          vblock[r * V + v].store(bj);
          for (int64_t l = 0; l < W; ++l) {
            if (bj[l] < 0) continue;
            const int64_t li = static_cast<int64_t>(bj[l]) + l;
            if (bv[l] < bestv || (bv[l] == bestv && li < besti)) bestv = bv[l], besti = li;
          }
        }
        finish_row(bestv, besti, z + (r0 + r) * d, d, best + r0 + r, best_idx + r0 + r);
      }
    }
  });
}
#endif

#if defined(CPU_CAPABILITY_AVX512)
// fp32 with AVX-512, every D: the direct walk, cache-blocked so that it also beats a BLAS GEMM
// plus a pass over its N x K output at large D. Threads take chunks of 64 rows; a chunk walks
// the codebook in tiles of ~128 KiB (kept in L2 while its 8 row blocks pass over it) and keeps
// each row's per-lane (min, block) in registers within a tile, in a small buffer between
// tiles. A row block only moves its minima where a lane improved (mask registers: one compare
// and two masked moves per block and row, against D FMAs).
template <int DIM>
void nearest_direct_f32(const float* z, const float* et, const float* enorm, int64_t n, int64_t d_runtime,
                        int64_t kp, float* best, int64_t* best_idx) {
  const int64_t d = DIM > 0 ? DIM : d_runtime;
  constexpr int64_t W = 16, kChunk = 64;
  const int64_t tile = std::max<int64_t>(W, (int64_t(32768) / d) / W * W);  // codes per tile
  const float inf = std::numeric_limits<float>::infinity();
  at::parallel_for(0, (n + kChunk - 1) / kChunk, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> zm2(kChunk * d);  // -2 z of the chunk's rows
    std::vector<__m512> vbest(kChunk);
    std::vector<__m512i> vblock(kChunk);  // per lane: start of the block its minimum came from
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      const int64_t r0 = chunk * kChunk;
      const int64_t rows = std::min(kChunk, n - r0);
      load_chunk_rows(z, r0, rows, kChunk, d, zm2.data());
      for (int64_t r = 0; r < kChunk; ++r) {
        vbest[r] = _mm512_set1_ps(inf);
        vblock[r] = _mm512_set1_epi32(-1);
      }
      for (int64_t t0 = 0; t0 < kp; t0 += tile) {
        const int64_t t1 = std::min(kp, t0 + tile);
        for (int64_t rb = 0; rb < kChunk; rb += kRows) {
          const float* zr = zm2.data() + rb * d;
          __m512 vb[kRows];
          __m512i vj[kRows];
          for (int r = 0; r < kRows; ++r) vb[r] = vbest[rb + r], vj[r] = vblock[rb + r];
          for (int64_t j = t0; j < t1; j += W) {
            __m512 acc[kRows];
            const __m512 en = _mm512_loadu_ps(enorm + j);
            for (int r = 0; r < kRows; ++r) acc[r] = en;
            for (int64_t c = 0; c < d; ++c) {
              const __m512 ev = _mm512_loadu_ps(et + c * kp + j);
              for (int r = 0; r < kRows; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(zr[r * d + c]), ev, acc[r]);
            }
            const __m512i jv = _mm512_set1_epi32(static_cast<int>(j));
            for (int r = 0; r < kRows; ++r) {
              const __mmask16 better = _mm512_cmp_ps_mask(acc[r], vb[r], _CMP_LT_OQ);
              vb[r] = _mm512_mask_mov_ps(vb[r], better, acc[r]);
              vj[r] = _mm512_mask_mov_epi32(vj[r], better, jv);
            }
          }
          for (int r = 0; r < kRows; ++r) vbest[rb + r] = vb[r], vblock[rb + r] = vj[r];
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        alignas(64) float bv[W];
        alignas(64) int32_t bj[W];
        _mm512_store_ps(bv, vbest[r]);
        _mm512_store_si512(reinterpret_cast<__m512i*>(bj), vblock[r]);
        float bestv = inf;
        int64_t besti = -1;
        for (int64_t l = 0; l < W; ++l) {
          if (bj[l] < 0) continue;
          const int64_t li = bj[l] + l;
          if (bv[l] < bestv || (bv[l] == bestv && li < besti)) bestv = bv[l], besti = li;
        }
        finish_row(bestv, besti, z + (r0 + r) * d, d, best + r0 + r, best_idx + r0 + r);
      }
    }
  });
}

// Wider D (>= kPanelMinD): a GEMM-style register block. The codebook is packed in panels of
// kPanel = 64 codes, each [D][64] contiguous (one stream of 256 B per coordinate), and a
// block of kPanelRows = 6 rows x 4 vectors keeps 24 accumulators in registers: per coordinate
// 4 codebook loads and 6 broadcasts feed 24 FMAs (the 8 x 1 block above needs 9 loads per 8
// FMAs, which holds it to ~45% of the FMA peak at D = 256). Each accumulator still sums
// ||e||^2 + sum_c (-2 z_c) e_c in coordinate order, so distances are the same bits as above.
constexpr int64_t kPanel = 64;
constexpr int kPanelRows = 6;
constexpr int64_t kPanelMinD = 32;

template <int DIM>
void nearest_panel_f32(const float* z, const float* ep, const float* enorm, int64_t n, int64_t d_runtime,
                       int64_t kp, float* best, int64_t* best_idx) {
  const int64_t d = DIM > 0 ? DIM : d_runtime;
  constexpr int64_t W = 16, V = kPanel / W, R = kPanelRows, kChunk = 8 * R;
  const int64_t panels = kp / kPanel;
  // panels per L2 tile (~512 KiB): every row block of a chunk passes over the tile
  const int64_t tile = std::max<int64_t>(1, (int64_t(512) << 10) / (kPanel * d * 4));
  const float inf = std::numeric_limits<float>::infinity();
  at::parallel_for(0, (n + kChunk - 1) / kChunk, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> zm2(kChunk * d);  // -2 z of the chunk's rows
    std::vector<__m512> vbest(kChunk * V);
    std::vector<__m512i> vblock(kChunk * V);  // per lane: start of the 16 codes its minimum is in
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      const int64_t r0 = chunk * kChunk;
      const int64_t rows = std::min(kChunk, n - r0);
      load_chunk_rows(z, r0, rows, kChunk, d, zm2.data());
      for (int64_t r = 0; r < kChunk; ++r) {
        for (int64_t v = 0; v < V; ++v) {
          vbest[r * V + v] = _mm512_set1_ps(inf);
          vblock[r * V + v] = _mm512_set1_epi32(-1);
        }
      }
      for (int64_t t0 = 0; t0 < panels; t0 += tile) {
        const int64_t t1 = std::min(panels, t0 + tile);
        for (int64_t rb = 0; rb < kChunk; rb += R) {
          const float* zr = zm2.data() + rb * d;
          for (int64_t p = t0; p < t1; ++p) {
            const float* pe = ep + p * kPanel * d;
            __m512 acc[R][V];
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v) {
              const __m512 en = _mm512_loadu_ps(enorm + p * kPanel + v * W);
#pragma GCC unroll 6
              for (int r = 0; r < R; ++r) acc[r][v] = en;
            }
            for (int64_t c = 0; c < d; ++c) {
              __m512 ev[V];
#pragma GCC unroll 4
              for (int v = 0; v < V; ++v) ev[v] = _mm512_loadu_ps(pe + c * kPanel + v * W);
#pragma GCC unroll 6
              for (int r = 0; r < R; ++r) {
                const __m512 zb = _mm512_set1_ps(zr[r * d + c]);
#pragma GCC unroll 4
                for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(zb, ev[v], acc[r][v]);
              }
            }
#pragma GCC unroll 6
            for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
              for (int v = 0; v < V; ++v) {
                __m512& vb = vbest[(rb + r) * V + v];
                __m512i& vj = vblock[(rb + r) * V + v];
                const __mmask16 better = _mm512_cmp_ps_mask(acc[r][v], vb, _CMP_LT_OQ);
                vb = _mm512_mask_mov_ps(vb, better, acc[r][v]);
                vj = _mm512_mask_mov_epi32(vj, better, _mm512_set1_epi32(static_cast<int>(p * kPanel + v * W)));
              }
            }
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        float bestv = inf;
        int64_t besti = -1;
        for (int64_t v = 0; v < V; ++v) {
          alignas(64) float bv[W];
          alignas(64) int32_t bj[W];
          _mm512_store_ps(bv, vbest[r * V + v]);
          _mm512_store_si512(reinterpret_cast<__m512i*>(bj), vblock[r * V + v]);
          for (int64_t l = 0; l < W; ++l) {
            if (bj[l] < 0) continue;
            const int64_t li = bj[l] + l;
            if (bv[l] < bestv || (bv[l] == bestv && li < besti)) bestv = bv[l], besti = li;
          }
        }
        finish_row(bestv, besti, z + (r0 + r) * d, d, best + r0 + r, best_idx + r0 + r);
      }
    }
  });
}

#endif

// Picks nearest_direct_f32 for fp32 on AVX-512 builds; false otherwise.
template <typename T>
struct DirectF32 {
  template <typename Run>
  static bool run(int64_t, const Run&) { return false; }
};
#if defined(CPU_CAPABILITY_AVX512)
template <>
struct DirectF32<float> {
  template <typename Run>
  static bool run(int64_t d, const Run& run) {
    switch (d) {
      case 4: run(nearest_direct_f32<4>); break;
      case 8: run(nearest_direct_f32<8>); break;
      case 16: run(nearest_direct_f32<16>); break;
      case 32: run(nearest_direct_f32<32>); break;
      default: run(nearest_direct_f32<0>);
    }
    return true;
  }
};
#endif

}  // namespace

std::tuple<at::Tensor, at::Tensor> vq_nearest_exact_cpu(const at::Tensor& z_in, const at::Tensor& e_in,
                                                        c10::string_view metric) {
  check_vq_nearest(z_in, e_in, metric);
  auto [z, e] = vq_math_inputs(z_in, e_in, metric);
  const int64_t n = z.size(0), k = e.size(0);
  // fp32 goes to a blocked direct kernel at every D (AVX-512: nearest_panel_f32 /
  // nearest_direct_f32; other builds: nearest_panel_vec above D = 32, nearest_direct below)
  const bool f32_direct = z.scalar_type() == at::kFloat;
  if ((z.size(1) <= kDirectMaxD || f32_direct) && k < (int64_t(1) << 24)) {  // writes every row's result
    auto idx = at::empty({n}, z.options().dtype(at::kLong));
    auto best = at::empty({n}, z.options());
    if (n == 0) return {idx, best};
    const auto enorm = (e * e).sum(1).contiguous();
    // fp32: the codebook packed in panels and a GEMM-style register block (AVX-512 at D >= 32;
    // other builds at every D, with a lighter per-row minimum at D <= 32)
#if defined(CPU_CAPABILITY_AVX512)
    const int64_t panel = kPanel;
    const bool panels_fit = z.size(1) >= kPanelMinD && k >= kPanel;
#else
    const int64_t panel = 2 * Vectorized<float>::size();
    const bool panels_fit = true;
#endif
    if (f32_direct && panels_fit) {
      const auto [panels, en] = pack_panels(e, enorm, panel);
      const auto run = [&](auto kernel) {
        kernel(z.const_data_ptr<float>(), panels.const_data_ptr<float>(), en.const_data_ptr<float>(), n,
               z.size(1), en.size(0), best.mutable_data_ptr<float>(), idx.mutable_data_ptr<int64_t>());
      };
#if defined(CPU_CAPABILITY_AVX512)
      switch (z.size(1)) {
        case 32: run(nearest_panel_f32<32>); break;
        case 64: run(nearest_panel_f32<64>); break;
        case 256: run(nearest_panel_f32<256>); break;
        default: run(nearest_panel_f32<0>);
      }
#else
      static_assert(kPanelV == 2, "nearest_small_vec and nearest_panel_vec share the panel width");
      switch (z.size(1)) {
        case 4: run(nearest_small_vec<4>); break;
        case 8: run(nearest_small_vec<8>); break;
        case 16: run(nearest_small_vec<16>); break;
        case 32: run(nearest_small_vec<32>); break;
        case 64: run(nearest_panel_vec<64>); break;
        case 256: run(nearest_panel_vec<256>); break;
        default: z.size(1) <= kDirectMaxD ? run(nearest_small_vec<0>) : run(nearest_panel_vec<0>);
      }
#endif
      return {idx, best};
    }
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "vq_nearest_cpu_direct", [&] {
      constexpr int64_t W = Vectorized<scalar_t>::size();
      const int64_t kp = (k + W - 1) / W * W;
      auto et = at::zeros({z.size(1), kp}, z.options());
      et.narrow(1, 0, k).copy_(e.t());
      auto en = at::full({kp}, std::numeric_limits<double>::infinity(), z.options());
      en.narrow(0, 0, k).copy_(enorm);
      const auto run = [&](auto kernel) {
        kernel(z.const_data_ptr<scalar_t>(), et.const_data_ptr<scalar_t>(), en.const_data_ptr<scalar_t>(),
               n, z.size(1), kp, best.mutable_data_ptr<scalar_t>(), idx.mutable_data_ptr<int64_t>());
      };
      if (DirectF32<scalar_t>::run(z.size(1), run)) return;
      switch (z.size(1)) {  // the common small latent sizes get an unrolled kernel
        case 4: run(nearest_direct<scalar_t, 4>); break;
        case 8: run(nearest_direct<scalar_t, 8>); break;
        case 16: run(nearest_direct<scalar_t, 16>); break;
        case 32: run(nearest_direct<scalar_t, 32>); break;
        default: run(nearest_direct<scalar_t, 0>);
      }
    });
    return {idx, best};
  }
  auto idx = at::zeros({n}, z.options().dtype(at::kLong));
  auto best = at::full({n}, std::numeric_limits<double>::infinity(), z.options());
  if (n == 0) return {idx, best};
  const auto enorm = (e * e).sum(1).contiguous();
  // Row block x codebook tile: one multithreaded BLAS GEMM into a reused buffer, then the SIMD
  // epilogue over the rows in parallel. (Per-thread single-threaded GEMMs on cache-sized tiles
  // measured slower here.)
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "vq_nearest_cpu", [&] {
    auto tile = at::empty({std::min(n, kTileN), std::min(k, kTileK)}, z.options());
    int64_t* pidx = idx.mutable_data_ptr<int64_t>();
    scalar_t* pbest = best.mutable_data_ptr<scalar_t>();
    const scalar_t* pen = enorm.const_data_ptr<scalar_t>();
    for (int64_t n0 = 0; n0 < n; n0 += kTileN) {
      const int64_t nb = std::min(kTileN, n - n0);
      const auto zb = z.narrow(0, n0, nb);
      for (int64_t k0 = 0; k0 < k; k0 += kTileK) {
        const int64_t kb = std::min(kTileK, k - k0);
        auto s = (nb == tile.size(0) && kb == tile.size(1)) ? tile : at::empty({nb, kb}, z.options());
        at::mm_out(s, zb, e.narrow(0, k0, kb).t());
        const scalar_t* ps = s.const_data_ptr<scalar_t>();
        at::parallel_for(0, nb, 16, [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) {
            const auto [v, i] = tile_row_min<scalar_t>(ps + r * kb, pen + k0, kb);
            if (i >= 0 && v < pbest[n0 + r]) {
              pbest[n0 + r] = v;
              pidx[n0 + r] = k0 + i;
            }
          }
        });
      }
    }
  });
  return {idx, vq_finish(best, idx, (z * z).sum(1))};
}

namespace {

// -- vq_quantize ---------------------------------------------------------------------------------

constexpr int64_t kRowGrain = 64;

std::tuple<at::Tensor, at::Tensor, at::Tensor> vq_quantize_cpu(const at::Tensor& z_in, const at::Tensor& e_in,
                                                               double beta, bool legacy) {
  check_vq_nearest(z_in, e_in, "l2");  // _check_quantize: the search's checks, then beta
  check_vq_beta(beta);
  auto [idx, dist] = vq_nearest_cpu(z_in, e_in, "l2");  // the certified fast search where it runs
  const auto z = z_in.contiguous();
  const auto e = e_in.contiguous();
  const int64_t n = z.size(0), d = z.size(1);
  auto zq = at::empty({n, d}, z.options());
  auto sq = at::empty({n}, z.options().dtype(opmath_dtype(z.scalar_type())));
  FASTGEN_DISPATCH_FLOATS(z.scalar_type(), "vq_quantize_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* pz = z.const_data_ptr<scalar_t>();
    const scalar_t* pe = e.const_data_ptr<scalar_t>();
    const int64_t* pi = idx.const_data_ptr<int64_t>();
    scalar_t* pq = zq.mutable_data_ptr<scalar_t>();
    A* psq = sq.mutable_data_ptr<A>();
    at::parallel_for(0, n, kRowGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* zr = pz + r * d;
        const scalar_t* er = pe + pi[r] * d;
        scalar_t* qr = pq + r * d;
        A acc = 0;
        for (int64_t c = 0; c < d; ++c) {
          const A diff = static_cast<A>(er[c]) - static_cast<A>(zr[c]);
          qr[c] = vq_st_value<scalar_t, A>(zr[c], er[c]);
          acc += diff * diff;
        }
        psq[r] = acc;
      }
    });
  });
  // both terms of taming's loss have the value mse; the weights only split the gradients
  const double weight = n * d != 0 ? (1.0 + beta) / static_cast<double>(n * d) : std::numeric_limits<double>::quiet_NaN();
  return {zq, (sq.sum() * weight).to(z.scalar_type()), idx};
}

// Rows grouped by code (a counting sort): rows of code c are order[starts[c] .. starts[c + 1]),
// in increasing row order, so every per-code sum below runs in a fixed order.
struct CodeGroups {
  std::vector<int64_t> starts, order;
};

CodeGroups group_rows(const at::Tensor& indices, int64_t k) {
  const auto idx = indices.contiguous();
  const int64_t n = idx.size(0);
  const int64_t* pi = idx.const_data_ptr<int64_t>();
  CodeGroups g;
  g.starts.assign(k + 1, 0);
  g.order.resize(n);
  for (int64_t r = 0; r < n; ++r) {
    if (pi[r] < 0 || pi[r] >= k) check_vq_indices_range(idx, k);  // raises (the entry points checked already)
    ++g.starts[pi[r] + 1];
  }
  std::partial_sum(g.starts.begin(), g.starts.end(), g.starts.begin());
  std::vector<int64_t> pos(g.starts.begin(), g.starts.end() - 1);
  for (int64_t r = 0; r < n; ++r) g.order[pos[pi[r]]++] = r;
  return g;
}

// emit(code, count, sums) with sums[c] = sum over the code's rows of z[row, c] (minus sub[code, c]
// when sub is given), accumulated in A, rows in order. Codes run in parallel.
template <typename T, typename A, typename Emit>
void for_each_code_sum(const T* z, const T* sub, int64_t d, const CodeGroups& g, const Emit& emit) {
  const int64_t k = static_cast<int64_t>(g.starts.size()) - 1;
  at::parallel_for(0, k, 16, [&](int64_t k0, int64_t k1) {
    std::vector<A> acc(d);
    for (int64_t code = k0; code < k1; ++code) {
      std::fill(acc.begin(), acc.end(), A(0));
      if (sub == nullptr) {
        for (int64_t r = g.starts[code]; r < g.starts[code + 1]; ++r) {
          const T* row = z + g.order[r] * d;
          for (int64_t c = 0; c < d; ++c) acc[c] += static_cast<A>(row[c]);
        }
      } else {  // per-row differences: sum(z) - count * e would cancel catastrophically
        const T* e = sub + code * d;
        for (int64_t r = g.starts[code]; r < g.starts[code + 1]; ++r) {
          const T* row = z + g.order[r] * d;
          for (int64_t c = 0; c < d; ++c) acc[c] += static_cast<A>(row[c]) - static_cast<A>(e[c]);
        }
      }
      emit(code, g.starts[code + 1] - g.starts[code], acc.data());
    }
  });
}

std::tuple<at::Tensor, at::Tensor> vq_quantize_backward_cpu(const at::Tensor& gzq_in, const at::Tensor& grad_loss,
                                                            const at::Tensor& z_in, const at::Tensor& e_in,
                                                            const at::Tensor& indices, double beta, bool legacy) {
  check_vq_quantize_backward(gzq_in, grad_loss, z_in, e_in, indices, beta);
  const auto z = z_in.contiguous();
  const auto e = e_in.contiguous();
  const auto gzq = gzq_in.contiguous();
  const auto idx = indices.contiguous();
  const int64_t n = z.size(0), d = z.size(1), k = e.size(0);
  const double scale = n * d != 0 ? 2.0 * grad_loss.item<double>() / static_cast<double>(n * d) : 0.0;
  const double c_z = scale * (legacy ? 1.0 : beta), c_e = scale * (legacy ? beta : 1.0);
  const auto groups = group_rows(idx, k);  // validates the indices before any gather
  auto dz = at::empty({n, d}, z.options());
  auto dcode = at::empty({k, d}, e.options());
  FASTGEN_DISPATCH_FLOATS(z.scalar_type(), "vq_quantize_backward_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* pz = z.const_data_ptr<scalar_t>();
    const scalar_t* pe = e.const_data_ptr<scalar_t>();
    const scalar_t* pg = gzq.const_data_ptr<scalar_t>();
    const int64_t* pi = idx.const_data_ptr<int64_t>();
    scalar_t* pdz = dz.mutable_data_ptr<scalar_t>();
    scalar_t* pdc = dcode.mutable_data_ptr<scalar_t>();
    const A cz = static_cast<A>(c_z), ce = static_cast<A>(c_e);
    at::parallel_for(0, n, kRowGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* er = pe + pi[r] * d;
        for (int64_t c = 0; c < d; ++c) {
          const int64_t i = r * d + c;
          pdz[i] = static_cast<scalar_t>(static_cast<A>(pg[i]) +
                                         cz * (static_cast<A>(pz[i]) - static_cast<A>(er[c])));
        }
      }
    });
    for_each_code_sum<scalar_t, A>(pz, pe, d, groups, [&](int64_t code, int64_t, const A* sums) {
      for (int64_t c = 0; c < d; ++c) pdc[code * d + c] = static_cast<scalar_t>(-ce * sums[c]);
    });
  });
  return {dz, dcode};
}

// -- vq_code_sums / vq_ema_update -----------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> vq_code_sums_cpu(const at::Tensor& z_in, const at::Tensor& indices,
                                                    int64_t num_codes) {
  check_vq_code_sums(z_in, indices, num_codes);
  const auto z = z_in.contiguous();
  const int64_t d = z.size(1);
  const auto groups = group_rows(indices, num_codes);
  const auto opts = z.options().dtype(opmath_dtype(z.scalar_type()));
  auto counts = at::empty({num_codes}, opts);
  auto sums = at::empty({num_codes, d}, opts);
  FASTGEN_DISPATCH_FLOATS(z.scalar_type(), "vq_code_sums_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    A* pc = counts.mutable_data_ptr<A>();
    A* ps = sums.mutable_data_ptr<A>();
    for_each_code_sum<scalar_t, A>(z.const_data_ptr<scalar_t>(), nullptr, d, groups,
                                   [&](int64_t code, int64_t count, const A* s) {
                                     pc[code] = static_cast<A>(count);
                                     std::copy(s, s + d, ps + code * d);
                                   });
  });
  return {counts, sums};
}

std::tuple<at::Tensor, at::Tensor> vq_ema_update_cpu(const at::Tensor& z_in, const at::Tensor& indices,
                                                     at::Tensor cluster_size, at::Tensor embed_sum,
                                                     double decay, double eps) {
  check_vq_ema(z_in, indices, cluster_size, embed_sum, decay, eps);
  const auto z = z_in.contiguous();
  const int64_t d = z.size(1), k = embed_sum.size(0);
  const auto groups = group_rows(indices, k);
  auto counts = at::empty({k}, z.options().dtype(opmath_dtype(z.scalar_type())));
  FASTGEN_DISPATCH_FLOATS(z.scalar_type(), "vq_ema_update_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    using T = scalar_t;
    A* pc = counts.mutable_data_ptr<A>();
    FASTGEN_DISPATCH_FLOATS(embed_sum.scalar_type(), "vq_ema_update_cpu_buffers", [&] {
      using B = scalar_t;  // the buffers' dtype
      using M = at::opmath_type<B>;
      B* pcs = cluster_size.mutable_data_ptr<B>();
      B* pes = embed_sum.mutable_data_ptr<B>();
      const M dec = static_cast<M>(decay);
      // the batch statistics and the EMA of both buffers in one pass per code
      for_each_code_sum<T, A>(z.const_data_ptr<T>(), nullptr, d, groups, [&](int64_t code, int64_t count, const A* s) {
        pc[code] = static_cast<A>(count);
        pcs[code] = static_cast<B>(vq_ema<M>(static_cast<M>(pcs[code]), static_cast<M>(count), dec));
        for (int64_t c = 0; c < d; ++c)
          pes[code * d + c] = static_cast<B>(vq_ema<M>(static_cast<M>(pes[code * d + c]), static_cast<M>(s[c]), dec));
      });
    });
  });
  return vq_ema_finish(counts, cluster_size, embed_sum, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("vq_nearest_native", &vq_nearest_cpu);
  m.impl("vq_quantize_native", &vq_quantize_cpu);
  m.impl("vq_quantize_backward_native", &vq_quantize_backward_cpu);
  m.impl("vq_code_sums_native", &vq_code_sums_cpu);
  m.impl("vq_ema_update_native", &vq_ema_update_cpu);
}

}  // namespace fastgen
