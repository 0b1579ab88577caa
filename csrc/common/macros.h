#pragma once
// Shared by the CPU (.cpp) and CUDA (.cu) kernels: the same inline math runs on both, so the
// CPU tests exercise the formulas the GPU runs.
#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTGEN_HD __host__ __device__ __forceinline__
#else
#define FASTGEN_HD inline
#endif

namespace fastgen {

// Overloads instead of std:: so device code picks the single-precision intrinsic for float.
FASTGEN_HD float fexp(float x) { return ::expf(x); }
FASTGEN_HD double fexp(double x) { return ::exp(x); }

}  // namespace fastgen
