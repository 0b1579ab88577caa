// CPU kernel for vq_nearest. Small D: distances computed directly with SIMD across codes.
// Larger D: the codebook is walked in tiles; each tile's z @ e.T comes from BLAS (at::mm into a
// reused buffer) and a SIMD epilogue adds ||e||^2 and keeps a running (min, argmin) per row.
// Peak extra memory: one kTileN x kTileK tile (4 MiB in fp32), never N x K.
// Ties go to the lowest index: lanes keep their first minimum (strict <), lanes are merged by
// (value, index), tiles are visited in order and merged with strict <. NaN never wins a `<`.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <limits>

#include "common/vq.h"

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
        if (besti >= 0) best[r0 + r] = bestv, best_idx[r0 + r] = besti;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> vq_nearest_cpu(const at::Tensor& z_in, const at::Tensor& e_in,
                                                  c10::string_view metric) {
  check_vq_nearest(z_in, e_in, metric);
  auto [z, e] = vq_math_inputs(z_in, e_in, metric);
  const int64_t n = z.size(0), k = e.size(0);
  auto idx = at::zeros({n}, z.options().dtype(at::kLong));
  auto best = at::full({n}, std::numeric_limits<double>::infinity(), z.options());
  if (n == 0) return {idx, best};
  const auto enorm = (e * e).sum(1).contiguous();
  if (z.size(1) <= kDirectMaxD && k < (int64_t(1) << 24)) {
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
      switch (z.size(1)) {  // the common small latent sizes get an unrolled kernel
        case 4: run(nearest_direct<scalar_t, 4>); break;
        case 8: run(nearest_direct<scalar_t, 8>); break;
        case 16: run(nearest_direct<scalar_t, 16>); break;
        case 32: run(nearest_direct<scalar_t, 32>); break;
        default: run(nearest_direct<scalar_t, 0>);
      }
    });
    return {idx, vq_finish(best, idx, (z * z).sum(1))};
  }
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

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) { m.impl("vq_nearest_native", &vq_nearest_cpu); }

}  // namespace fastgen
