#pragma once
// Shared by the exact vq_nearest CPU kernels (cpu/vq.cpp) and the certified two-stage search
// (cpu/vq_certified.cpp): the exact entry point and the per-row finish both must use, so that
// the two-stage search returns the exact kernels' bits.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

namespace fastgen {

// Today's exact search (every fp32 kernel: ||e||^2 + sum_c (-2 z_c) e_c as one FMA chain in
// coordinate order per (row, code), minimum with the lowest index on ties).
std::tuple<at::Tensor, at::Tensor> vq_nearest_exact_cpu(const at::Tensor& z, const at::Tensor& codebook,
                                                        c10::string_view metric);

// vq_nearest_native on CPU: the certified two-stage search where it runs (cpu/vq_certified.cpp),
// else the exact search; bit-identical results either way.
std::tuple<at::Tensor, at::Tensor> vq_nearest_cpu(const at::Tensor& z, const at::Tensor& codebook,
                                                  c10::string_view metric);

// The direct kernels write final results: distance ||z||^2 + best partial, clamped at 0, as
// vq_finish does (a row of z that is not finite, or one with no finite distance: code 0 at +inf).
template <typename T>
inline void finish_row(T bestv, int64_t besti, const T* zrow, int64_t d, T* dist, int64_t* idx) {
  // an explicit FMA: `znorm += z * z` is contracted into one or not depending on how the
  // compiler inlined the caller, which gave the kernels different bits for different D
  T znorm = 0;
  for (int64_t c = 0; c < d; ++c) znorm = std::fma(zrow[c], zrow[c], znorm);
  const T inf = std::numeric_limits<T>::infinity();
  if (!std::isfinite(znorm)) {
    *idx = 0, *dist = inf;
    return;
  }
  *idx = besti < 0 ? 0 : besti;
  *dist = besti < 0 || std::isinf(bestv) ? inf : std::max(bestv + znorm, T(0));
}

}  // namespace fastgen
