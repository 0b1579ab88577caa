#pragma once
// Counter-based Philox4x32-10, shared by every CPU and CUDA kernel that makes its own random
// numbers (diffusion noise, attention dropout). Spec: fastgen/ops/_philox.py, which is Triton's
// tl.randint4x / tl.rand / tl.randn: the value at (seed, offset) is the same on every backend
// and independent of how a kernel tiles its elements (kernels pass the flat element index).
//   key = (seed lo, seed hi), counter = (offset lo, offset hi, 0, 0), 10 rounds;
//   uniform: word as int32, negative -> ~x, float(x) * 4.6566127342e-10 in float32;
//   normal: Box-Muller on the uniforms of words 0 and 1, u1 clamped at 1e-7.
// Integers and uniforms are bit-exact across backends; normals go through logf / cos / sqrtf,
// so they agree to the last ulps of the math library (glibc, CUDA, numpy) only.
#include <cstdint>

#include "common/macros.h"

namespace fastgen {
namespace philox {

constexpr uint32_t kKeyA = 0x9E3779B9u;
constexpr uint32_t kKeyB = 0xBB67AE85u;
constexpr uint32_t kRoundA = 0xD2511F53u;
constexpr uint32_t kRoundB = 0xCD9E8D57u;
constexpr int kRounds = 10;

struct Words {
  uint32_t w0, w1, w2, w3;
};

FASTGEN_HD uint32_t mulhi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

FASTGEN_HD Words philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < kRounds; ++r) {
    const uint32_t p0 = c0, p2 = c2;
    c0 = mulhi(kRoundB, p2) ^ c1 ^ k0;
    c2 = mulhi(kRoundA, p0) ^ c3 ^ k1;
    c1 = kRoundB * p2;
    c3 = kRoundA * p0;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return {c0, c1, c2, c3};
}

// The four words at `offset` for a 64-bit seed (an int64's bit pattern).
FASTGEN_HD Words randint4x(uint64_t seed, uint64_t offset) {
  return philox4x32(static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32), 0u, 0u,
                    static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

FASTGEN_HD float uint_to_uniform(uint32_t w) {
  int32_t x = static_cast<int32_t>(w);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * 4.6566127342e-10f;
}

// cos(th) for th in [0, 2 pi]. On the GPU not through cosf: its reduction for huge arguments
// (Payne-Hanek) keeps an array in the kernel's stack frame, which the hot diffusion step kernels
// must not have (scripts/cuda_resources.py). th = pi (y + rem / pi) with y = th / pi rounded and
// rem = th - pi y to about 2^-48, so cos(th) = cospi(y) - rem sinpi(y) (rem^2 is below an ulp),
// within half an ulp of cos(th) like cosf, and sincospif's reduction is exact and local-free.
FASTGEN_HD float cos_0_2pi(float th) {
#if defined(__CUDA_ARCH__)
  const float y = th * 0.318309886183790672f;
  float rem = fmaf(-y, 3.14159274101257324f, th);  // float(pi)
  rem = fmaf(y, 8.74227766e-8f, rem);             // float(pi) - pi
  float s, c;
  sincospif(y, &s, &c);
  return fmaf(-rem, s, c);
#else
  return ::cosf(th);
#endif
}

FASTGEN_HD float box_muller(float u1, float u2) {
  u1 = u1 > 1.0e-7f ? u1 : 1.0e-7f;
  const float th = 6.283185307179586f * u2;
  const float r = ::sqrtf(-2.0f * ::logf(u1));
  return r * cos_0_2pi(th);
}

FASTGEN_HD float rand(uint64_t seed, uint64_t offset) {
  return uint_to_uniform(randint4x(seed, offset).w0);
}

FASTGEN_HD float randn(uint64_t seed, uint64_t offset) {
  const Words w = randint4x(seed, offset);
  return box_muller(uint_to_uniform(w.w0), uint_to_uniform(w.w1));
}

}  // namespace philox
}  // namespace fastgen
