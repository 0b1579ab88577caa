#pragma once
// The error bound of the certified two-stage nearest-code search (docs/vq_certified.md has the
// long form): one derivation for the CPU kernel (cpu/vq_certified.cpp), the CUDA kernel
// (cuda/vq.cuh) and the Triton launcher (kernels/vq.py `certified_bound`: the same formula in
// Python, keep the two in step). ATen-free, host + device.
//
// p_j: the partial distance ||e_j||^2 - 2 z.e_j as an exact kernel computes it in its type T
// (unit t: 2^-24 fp32, 2^-53 fp64); a_j: the stage-1 value from bf16-rounded z and e, fp32
// accumulation (unit u = 2^-24). A = ||z|| ||e_j|| >= sum_c |z_c e_jc| (Cauchy-Schwarz),
// E = ||e_j||^2 as the value both stages read from the same tensor.
//  (1) exact kernel: either an FMA chain from E over the D products (CPU; D roundings) or an FMA
//      chain from 0 then E - 2 acc (CUDA, Triton; D + 1 roundings): both within
//      g_{D+1} (E + 2A), g_n = n t / (1 - n t).
//  (2) bf16 rounding of the inputs, z^ = z (1 + d1), e^ = e (1 + d2), |d| <= v: products of bf16
//      values are exact in fp32, |z^ e^ - z e| <= (2v + v^2) |z e|. v = 2^-8 from fp32; from fp64
//      (rounded to fp32 first, then to bf16) (1 + 2^-24)(1 + 2^-8) - 1 < 2^-8 + 2^-23.
//  (3) stage-1 accumulation in any order: g'_D (1 + v)^2 A, g' with the unit 2^-20 (16x fp32's:
//      tensor cores align and truncate inside an MMA; oneDNN / BLAS blocking).
//  (4) CPU bf16 mode only (w = 1): at::mm rounds its fp32 dot to bf16: v (1 + g'_D)(1 + v)^2 A.
//  (5) a_j = fl(E' - 2 s) in fp32: u (E' + 2 (1 + w v)(1 + g'_D)(1 + v)^2 A), where E' = E, or
//      E rounded to fp32 for fp64 inputs (one more u E, and E' <= (1 + u) E).
//  (6) subnormals flushed to zero by bf16 dot instructions (inputs, products, partial sums, each
//      moved by < 2^-126) and the exact kernel's underflows: (D + 2) 2^-123 (2 + max|z_c| + max|e_jc|).
// Sum, with A and E at their maxima over the codebook (one bound per row), times (1 + 2^-20) for
// the float64 arithmetic of the bound itself:
//   B = [2A (g_{D+1} + (2v + v^2) + g'_D (1+v)^2 + w v (1+g'_D)(1+v)^2 + u (1+v)^2 (1+g'_D)(1+w v))
//        + E (g_{D+1} + u (1 + u) + r u) + (D + 2) 2^-123 (2 + max|z| + max|e|)] (1 + 2^-20)
// (r = 1 when E is rounded to fp32). Stage 1 keeps every code with a_j <= min_i a_i + 2B, which
// holds the exact winner and every code tied with it (the proof: docs/vq_certified.md).
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/macros.h"

namespace fastgen {

struct VqBound {
  double coef_a;    // times A = ||z|| max_j ||e_j||
  double coef_e;    // times E = max_j ||e_j||^2
  double abs_coef;  // times (2 + max|z_c| + max|e_jc|)
};

// Host code (the fp64 divisions stay off the device: their slow path needs a stack frame).
// exact_unit: the exact kernel's unit roundoff; input_unit: v; bf16_out: w; en_rounded: r.
inline VqBound vq_bound(int64_t d, double exact_unit, double input_unit, bool bf16_out, bool en_rounded) {
  const double u = std::ldexp(1.0, -24), ua = std::ldexp(1.0, -20), t = exact_unit, v = input_unit;
  const double w = bf16_out ? 1.0 : 0.0;
  const double dd = static_cast<double>(d);
  const double g1 = (dd + 1) * t / (1.0 - (dd + 1) * t), ga = dd * ua / (1.0 - dd * ua);
  const double v1 = (1 + v) * (1 + v);
  VqBound b;
  b.coef_a = 2.0 * (g1 + (2 * v + v * v) + ga * v1 + w * v * (1 + ga) * v1 + u * v1 * (1 + ga) * (1 + w * v));
  b.coef_e = g1 + u * (1 + u) + (en_rounded ? u : 0.0);
  b.abs_coef = (dd + 2) * std::ldexp(1.0, -123);
  return b;
}

// v for inputs of the given exact type (fp32: 2^-8; fp64 via fp32: 2^-8 + 2^-23).
inline double vq_bf16_input_unit(bool fp64) { return std::ldexp(1.0, -8) + (fp64 ? std::ldexp(1.0, -23) : 0.0); }

// What the bound needs of the codebook: max_j ||e_j||^2 (summed in float64), max |e_jc|, and
// max_j of the E the kernels use. A codebook outside the range below runs the exact kernel.
struct VqCodebookFacts {
  double norm2_max, abs_max, en_max;
};

FASTGEN_HD bool vq_codebook_ok(const VqCodebookFacts& f) {
  // NaN fails every comparison; the limits keep every stage-1 sum far from fp32 overflow
  return f.norm2_max <= 1e300 && f.abs_max <= 1152921504606846976.0 /* 2^60 */ &&
         f.en_max <= 1.2676506002282294e30 /* 2^100 */;
}

// 2B of one row from ||z||^2 (float64) and max |z_c|; false where the bound does not cover the
// row (non-finite, |z_c| > 2^60, A > 2^100) or the codebook: that row takes the exact kernel.
FASTGEN_HD bool vq_row_two_b(const VqBound& b, double z_norm2, double z_abs_max, const VqCodebookFacts& f,
                             double* two_b) {
  const double a = ::sqrt(z_norm2) * ::sqrt(f.norm2_max);
  const double bb = (b.coef_a * a + b.coef_e * f.en_max + b.abs_coef * (2.0 + z_abs_max + f.abs_max)) *
                    (1.0 + 9.5367431640625e-07 /* 2^-20 */);
  *two_b = 2.0 * bb;
  return z_norm2 <= 1e300 && z_abs_max <= 1152921504606846976.0 && a <= 1.2676506002282294e30 &&
         bb <= 1e300 && vq_codebook_ok(f);
}

// The smallest float >= x (thresholds are rounded up).
FASTGEN_HD float vq_round_up_f32(double x) {
  float f = static_cast<float>(x);
  if (static_cast<double>(f) < x) {  // f finite here: one float up
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof(bits));
    if (f == 0.0f) bits = 1u;  // the smallest subnormal
    else bits = f > 0.0f ? bits + 1u : bits - 1u;
    std::memcpy(&f, &bits, sizeof(bits));
  }
  return f;
}

}  // namespace fastgen
