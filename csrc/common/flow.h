#pragma once
// Normalizing-flow math shared by the CPU (.cpp) and CUDA (.cu) kernels. Every formula is a
// template on T, which is the math type (float, or double for fp64 inputs) on the GPU and in
// the CPU's scalar tails, and at::vec::Vectorized<float|double> in the CPU's SIMD loops: the CPU
// file declares the Vectorized overloads of fexp/flog1p/ftanh/fatan/vabs/vmin/vmax before
// including this header, so the CPU tests run the formulas the GPU runs.
//
// Affine coupling, with log s from raw by scale function FN (see fastgen/ops/reference.py):
//   kExp      log s = raw
//   kSigmoid  log s = log sigmoid(raw + 2) = min(u, 0) - log1p(exp(-|u|)),  u = raw + 2
//   kTanhExp  log s = clamp * tanh(raw / clamp)
//   kAtanExp  log s = clamp * gain * atan(raw / clamp),  gain = 0.636
//   forward: y = x * exp(log s) + t        inverse: y = (x - t) * exp(-log s)
//   logdet[b] = +-sum of log s over the sample (the caller reduces).
#include "common/macros.h"

namespace fastgen {

FASTGEN_HD float flog1p(float x) { return ::log1pf(x); }
FASTGEN_HD double flog1p(double x) { return ::log1p(x); }
FASTGEN_HD float ftanh(float x) { return ::tanhf(x); }
FASTGEN_HD double ftanh(double x) { return ::tanh(x); }
FASTGEN_HD float fatan(float x) { return ::atanf(x); }
FASTGEN_HD double fatan(double x) { return ::atan(x); }
FASTGEN_HD float vabs(float x) { return ::fabsf(x); }
FASTGEN_HD double vabs(double x) { return ::fabs(x); }
// NaN in, NaN out is enough here: every caller also feeds the argument to exp or log1p.
FASTGEN_HD float vmin(float a, float b) { return a < b ? a : b; }
FASTGEN_HD double vmin(double a, double b) { return a < b ? a : b; }
FASTGEN_HD float vmax(float a, float b) { return a > b ? a : b; }
FASTGEN_HD double vmax(double a, double b) { return a > b ? a : b; }
// u >= 0 ? a : b (NaN u: b)
FASTGEN_HD float vselect_nonneg(float u, float a, float b) { return u >= 0.0f ? a : b; }
FASTGEN_HD double vselect_nonneg(double u, double a, double b) { return u >= 0.0 ? a : b; }

enum CouplingScaleFn : int { kExp = 0, kSigmoid = 1, kTanhExp = 2, kAtanExp = 3 };
constexpr double kAtanClampGain = 0.636;  // FrEIA's soft-clamp constant: part of the spec

// Scalars the coupling formulas need, broadcast once per span (T may be a SIMD vector).
template <typename T>
struct CouplingParams {
  T clamp, gain, zero, one, two;
  template <typename M>
  FASTGEN_HD explicit CouplingParams(M clamp_)
      : clamp(clamp_), gain(M(kAtanClampGain)), zero(M(0)), one(M(1)), two(M(2)) {}
};

// log s, the factor f with y = x * f + t (forward: f = s) or y = (x - t) * f (inverse: f = 1/s),
// and, with GRAD, d = d log s / d raw: computed together so the transcendentals are shared.
template <int FN, bool INVERSE, bool GRAD, typename T>
FASTGEN_HD void coupling_scale(const T& r, const CouplingParams<T>& p, T* log_s, T* f, T* d) {
  if constexpr (FN == kExp) {
    *log_s = r;
    if constexpr (GRAD) *d = p.one;
  } else if constexpr (FN == kSigmoid) {
    // with e = exp(-|u|) in (0, 1]: s = sigmoid(u) = (u >= 0 ? 1 : e) / (1 + e),
    // 1 - s = sigmoid(-u) = (u >= 0 ? e : 1) / (1 + e), log s = min(u, 0) - log1p(e): one exp
    // and one log per element, and f straight from s (no exp of log s), all overflow-free
    const T u = r + p.two;
    const T e = fexp(p.zero - vabs(u));
    const T den = p.one + e;
    const T num = vselect_nonneg(u, p.one, e);
    *log_s = vmin(u, p.zero) - flog1p(e);
    if constexpr (GRAD) *d = vselect_nonneg(u, e, p.one) / den;
    if constexpr (INVERSE) {
      *f = den / num;
    } else {
      *f = num / den;
    }
    return;
  } else if constexpr (FN == kTanhExp) {
    const T th = ftanh(r / p.clamp);
    *log_s = p.clamp * th;
    if constexpr (GRAD) *d = p.one - th * th;
  } else {
    const T q = r / p.clamp;
    *log_s = p.clamp * p.gain * fatan(q);
    if constexpr (GRAD) *d = p.gain / (p.one + q * q);
  }
  if constexpr (INVERSE) {
    *f = fexp(p.zero - *log_s);
  } else {
    *f = fexp(*log_s);
  }
}

template <int FN, bool INVERSE, typename T>
FASTGEN_HD T coupling_forward(const T& x, const T& t, const T& r, const CouplingParams<T>& p, T* log_s) {
  T f;
  coupling_scale<FN, INVERSE, false>(r, p, log_s, &f, static_cast<T*>(nullptr));
  if constexpr (INVERSE) {
    return (x - t) * f;
  } else {
    return x * f + t;
  }
}

// Gradients of y (g, per element) and of logdet (gl, per sample) w.r.t. x and raw; d shift is
// g (forward) or -dx (inverse) and is formed by the caller. With d = d log s / d raw:
//   forward: dx = g * s,  draw = (g * x * s + gl) * d
//   inverse: dx = g / s,  draw = -(g * y + gl) * d,  y = (x - t) / s
template <int FN, bool INVERSE, typename T>
FASTGEN_HD void coupling_backward(const T& g, const T& gl, const T& x, const T& t, const T& r,
                                  const CouplingParams<T>& p, T* dx, T* dr) {
  T ls, f, d;
  coupling_scale<FN, INVERSE, true>(r, p, &ls, &f, &d);
  *dx = g * f;
  if constexpr (INVERSE) {
    *dr = (p.zero - (g * ((x - t) * f) + gl)) * d;
  } else {
    *dr = (g * x * f + gl) * d;
  }
}

}  // namespace fastgen

namespace fastgen {

// ActNorm per element, with the channel's scale = exp(log_scale) (forward) or exp(-log_scale)
// (inverse) computed once per channel:
//   forward: y = (x + loc) * scale        inverse: y = x * scale - loc
// The backward needs only per-channel sums of g and g * x (see flow_host.h: actnorm_finish).
template <bool INVERSE, typename T>
FASTGEN_HD T actnorm_forward(const T& x, const T& loc, const T& scale) {
  if constexpr (INVERSE) {
    return x * scale - loc;
  } else {
    return (x + loc) * scale;
  }
}

// Flow NLL: -log p(z) = sum_j prior_term(z_j) + const, with
//   kGaussian: term = z^2 / 2                    (const = D log(2 pi) / 2)
//   kLogistic: term = |z| + 2 log1p(exp(-|z|))   (= softplus(z) + softplus(-z), const = 0)
// and d term / dz = z or tanh(z / 2).
enum FlowPrior : int { kGaussian = 0, kLogistic = 1 };

template <typename T>
struct PriorConsts {
  T zero, half, two;
  template <typename M>
  FASTGEN_HD explicit PriorConsts(M) : zero(M(0)), half(M(0.5)), two(M(2)) {}
};

template <int PRIOR, typename T>
FASTGEN_HD T prior_term(const T& z, const PriorConsts<T>& k) {
  if constexpr (PRIOR == kGaussian) {
    return k.half * z * z;
  } else {
    const T a = vabs(z);
    return a + k.two * flog1p(fexp(k.zero - a));
  }
}

template <int PRIOR, typename T>
FASTGEN_HD T prior_term_grad(const T& z, const PriorConsts<T>& k) {
  if constexpr (PRIOR == kGaussian) {
    return z;
  } else {
    return ftanh(k.half * z);
  }
}

}  // namespace fastgen
