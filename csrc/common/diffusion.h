#pragma once
// Diffusion sampler math shared by the CPU and CUDA kernels (and mirrored by kernels/diffusion.py).
//
// DDPM and DDIM steps are affine in (x, m, noise) once the step's scalars are known
// (x = sample, m = model output, a = abar_t, a_prev = abar of the step's target timestep):
//   x0   = (X x + M m) S         epsilon: X = 1, M = -sqrt(1-a), S = 1/sqrt(a)
//                                sample:  X = 0, M = 1, S = 1
//                                v:       X = sqrt(a), M = -sqrt(1-a), S = 1
//   (epsilon keeps the 1/sqrt(a) outside: at zero terminal SNR, a = 0, x0 is +-inf like
//   diffusers' division, which clipping then bounds, instead of inf - inf = NaN)
//   eps  = EX x + EM m           (the noise the prediction implies, before any clipping)
//   x0  <- clamp(x0, -s, s) / s  (dynamic threshold, per sample) or clamp(x0, -r, r) (clip)
//   prev = A x0 + B x + C m + D noise  (no C m term where C = 0 by construction: uses_m)
// DDPM (posterior q(x_prev | x_t, x0)): alpha = a / a_prev, beta = 1 - alpha,
//   A = sqrt(a_prev) beta / (1-a), B = sqrt(alpha) (1-a_prev) / (1-a), C = 0,
//   D = std for t > 0 else 0, std from variance_type (posterior variance clamped at 1e-20, or beta).
// DDIM: sigma = eta sqrt((1-a_prev)/(1-a) (1 - a/a_prev)), dir = sqrt(1 - a_prev - sigma^2),
//   prev = sqrt(a_prev) x0 + dir eps + sigma noise (dir^2 computed without cancellation, below), eps from (x, m) or, with
//   use_clipped_model_output, re-derived from the clipped x0: eps = (x - sqrt(a) x0) / sqrt(1-a).
// `T` is the math type: float (double for fp64 samples).
#include "common/macros.h"

namespace fastgen {
namespace diffusion {

enum Prediction : int { kEpsilon = 0, kSample = 1, kVPrediction = 2 };
enum Variance : int { kFixedSmall = 0, kFixedSmallLog = 1, kFixedLarge = 2, kFixedLargeLog = 3 };

FASTGEN_HD float dsqrt(float x) { return ::sqrtf(x); }
FASTGEN_HD double dsqrt(double x) { return ::sqrt(x); }
FASTGEN_HD float dlog(float x) { return ::logf(x); }
FASTGEN_HD double dlog(double x) { return ::log(x); }

template <typename T>
struct StepCoeffs {
  T X, M, S, A, B, C, D;
  // C m is left out where C is 0 by construction (DDPM; DDIM with use_clipped_model_output), as
  // the reference has no such term: 0 * inf would turn an infinite m that clipping bounded into NaN.
  bool uses_m;
};

template <typename T>
FASTGEN_HD StepCoeffs<T> denoise_coeffs(bool ddpm, int prediction, int variance, T a, T a_prev,
                                        long long t, T eta, bool use_clipped) {
  const T b = T(1) - a, sa = dsqrt(a), sb = dsqrt(b);
  StepCoeffs<T> c;
  c.uses_m = !ddpm && !use_clipped;
  T EX, EM;
  if (prediction == kEpsilon) {
    c.X = T(1); c.M = -sb; c.S = T(1) / sa; EX = T(0); EM = T(1);
  } else if (prediction == kSample) {
    c.X = T(0); c.M = T(1); c.S = T(1); EX = T(1) / sb; EM = -sa / sb;
  } else {
    c.X = sa; c.M = -sb; c.S = T(1); EX = sb; EM = sa;
  }
  if (ddpm) {
    const T alpha = a / a_prev, beta = T(1) - alpha;
    c.A = dsqrt(a_prev) * beta / b;
    c.B = dsqrt(alpha) * (T(1) - a_prev) / b;
    c.C = T(0);
    T var = (T(1) - a_prev) / b * beta;
    var = var < T(1e-20) ? T(1e-20) : var;
    T sd;
    if (variance == kFixedSmall) sd = dsqrt(var);
    else if (variance == kFixedSmallLog) sd = fexp(T(0.5) * dlog(var));
    else if (variance == kFixedLarge) sd = dsqrt(beta);
    else sd = fexp(T(0.5) * dlog(beta));
    c.D = t > 0 ? sd : T(0);
  } else {
    // sigma^2 = eta^2 (1 - a_prev) r with r = (1 - a / a_prev) / (1 - a) and
    // dir^2 = 1 - a_prev - sigma^2 = (1 - a_prev) ((1 - eta^2) + eta^2 (1 - r)). Both r and
    // 1 - r are formed as products of differences of table values (exact or nearly, by
    // Sterbenz), never as 1 - (something near 1): the plain difference loses everything when
    // dir^2 is tiny (eta near 1 with a near 0, or a_prev near 1) and its square root turns an
    // ulp into ~1e-4. At zero terminal SNR (a = 0, eta = 1) dir is exactly 0.
    const T denom = a_prev * b;
    const T r = (a_prev - a) / denom;
    const T one_minus_r = a * (T(1) - a_prev) / denom;
    const T sigma = eta * dsqrt((T(1) - a_prev) * r);
    const T dir2 = (T(1) - a_prev) * ((T(1) - eta * eta) + eta * eta * one_minus_r);
    const T dir = dsqrt(dir2 > T(0) ? dir2 : T(0));  // < 0 only for eta > 1
    if (use_clipped) {
      c.A = dsqrt(a_prev) - dir * sa / sb; c.B = dir / sb; c.C = T(0);
    } else {
      c.A = dsqrt(a_prev); c.B = dir * EX; c.C = dir * EM;
    }
    c.D = sigma;
  }
  return c;
}

// NaN-propagating like torch.clamp (a NaN fails both comparisons and passes through).
template <typename T>
FASTGEN_HD T clamp_range(T v, T lo, T hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// Flow matching steps as out = P x + Q v + Q2 v_next + R noise, from s = sigmas[i], s_next = sigmas[i+1]:
//   Euler: x + (s_next - s) v;  Heun: x + (s_next - s) (v + v_next) / 2;
//   stochastic: (1 - s_next) (x - s v) + s_next noise.
template <typename T>
struct FlowCoeffs {
  T P, Q, Q2, R;
};

template <typename T>
FASTGEN_HD FlowCoeffs<T> flow_coeffs(T s, T s_next, bool heun, bool stochastic) {
  const T dt = s_next - s;
  if (heun) return {T(1), T(0.5) * dt, T(0.5) * dt, T(0)};
  if (stochastic) return {T(1) - s_next, -(T(1) - s_next) * s, T(0), s_next};
  return {T(1), dt, T(0), T(0)};
}

}  // namespace diffusion
}  // namespace fastgen
