#pragma once
// The per-element math of the vq kernels, shared by the CPU (.cpp) and CUDA (.cuh) kernels.
// ATen-free, host + device.
#include <cmath>

#include "common/macros.h"

namespace fastgen {

// One step of the exact CUDA nearest-code kernel's dot products, a * b + c rounded once, as the
// certified search's re-rank must reproduce it. On the device nvcc contracts a * b + c into one
// FFMA / DFMA (--fmad=true, its default; the SASS of vq_nearest_kernel and vq_rerank_kernel has
// no separate multiply in the loop). Written as a plain expression rather than fmaf / fma: with
// the explicit call nvcc restructured vq_nearest_kernel<double> (80 registers and 16 B of spills
// on sm_90 instead of 114 registers and none). On the host (the CUDA execution model) an
// explicit fused multiply-add, so the model gives the GPU's bits whatever the host compiler's
// contraction rules.
template <typename T>
FASTGEN_HD T vq_fma(T a, T b, T c) {
#if defined(__CUDA_ARCH__)
  return a * b + c;
#else
  return std::fma(a, b, c);
#endif
}

// taming's straight-through value z + (e - z).detach(): each step rounded to T, as torch does it.
template <typename T, typename A>
FASTGEN_HD T vq_st_value(T z, T e) {
  const T diff = static_cast<T>(static_cast<A>(e) - static_cast<A>(z));
  return static_cast<T>(static_cast<A>(z) + static_cast<A>(diff));
}

// One EMA step of a buffer entry, in taming's order: old * decay, then + (1 - decay) * x.
template <typename A>
FASTGEN_HD A vq_ema(A old, A x, A decay) {
  return old * decay + (A(1) - decay) * x;
}

}  // namespace fastgen
