#pragma once
// Math shared by the CPU (.cpp) and CUDA (.cu) kernels of bias_act; group_norm_silu's SiLU
// (common/norm.h) is its act_forward / act_slope<Act::kSilu> too.
// `T` is the math type: float for fp16/bf16/fp32 inputs, double for fp64 — or, on the CPU, an
// at::vec::Vectorized of those (cpu/gan.cpp declares the SIMD overloads of fexp / ferf /
// fselect_* before including this file, so these templates run on vectors too).
#include "common/macros.h"

namespace fastgen {

FASTGEN_HD float ferf(float x) { return ::erff(x); }
FASTGEN_HD double ferf(double x) { return ::erf(x); }
// y > 0 ? pos : other  (a NaN y takes `other`)
FASTGEN_HD float fselect_pos(float y, float pos, float other) { return y > 0.f ? pos : other; }
FASTGEN_HD double fselect_pos(double y, double pos, double other) { return y > 0.0 ? pos : other; }
// y <= 0 ? nonpos : other  (a NaN y takes `other`: relu and leaky_relu keep NaN, as torch does)
FASTGEN_HD float fselect_nonpos(float y, float nonpos, float other) { return y <= 0.f ? nonpos : other; }
FASTGEN_HD double fselect_nonpos(double y, double nonpos, double other) { return y <= 0.0 ? nonpos : other; }

// ---- bias_act: out = act(x + b) * gain, dx = g * act'(x + b) * gain -------------------------
enum class Act : int { kLeakyRelu = 0, kRelu = 1, kSilu = 2, kGelu = 3 };

constexpr double kSqrtHalf = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

template <Act A, typename T>
FASTGEN_HD T act_forward(T y, T alpha) {
  if constexpr (A == Act::kLeakyRelu) {
    return fselect_nonpos(y, y * alpha, y);
  } else if constexpr (A == Act::kRelu) {
    return fselect_nonpos(y, T(0), y);
  } else if constexpr (A == Act::kSilu) {
    return y / (T(1) + fexp(T(0) - y));
  } else {
    return T(0.5) * y * (T(1) + ferf(y * T(kSqrtHalf)));  // exact gelu
  }
}

// d act / dy. relu/leaky_relu take the slope of the y <= 0 side at 0, as torch does.
template <Act A, typename T>
FASTGEN_HD T act_slope(T y, T alpha) {
  if constexpr (A == Act::kLeakyRelu) {
    return fselect_pos(y, T(1), alpha);
  } else if constexpr (A == Act::kRelu) {
    return fselect_pos(y, T(1), T(0));
  } else if constexpr (A == Act::kSilu) {
    const T s = T(1) / (T(1) + fexp(T(0) - y));
    return s * (T(1) + y * (T(1) - s));
  } else {
    return T(0.5) * (T(1) + ferf(y * T(kSqrtHalf))) + y * fexp(T(-0.5) * y * y) * T(kInvSqrt2Pi);
  }
}

}  // namespace fastgen
