#pragma once
// Philox normals for a run of consecutive offsets on the CPU, SIMD-friendly: the ten rounds run
// over a block of lanes (32x32 -> 64-bit products the compiler vectorizes), Box-Muller runs on
// at::vec (Sleef log / cos, as torch's own float32 log / cos). Same words and uniforms as
// common/philox.h, bit for bit; every lane takes the same path, so a value does not depend on
// where a run starts (kernels may split their elements any way they like).
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

#include "common/philox.h"

namespace fastgen {
namespace philox {

constexpr int64_t kCpuBlock = 256;  // a multiple of every Vectorized<float>::size()

// out[j] = randn(seed, base + j) for j < kCpuBlock (the whole block is always computed).
inline void randn_block(uint64_t seed, uint64_t base, float* out) {
  alignas(64) uint32_t c0[kCpuBlock], c1[kCpuBlock], c2[kCpuBlock], c3[kCpuBlock];
  for (int64_t j = 0; j < kCpuBlock; ++j) {
    const uint64_t off = base + static_cast<uint64_t>(j);
    c0[j] = static_cast<uint32_t>(off);
    c1[j] = static_cast<uint32_t>(off >> 32);
    c2[j] = 0u;
    c3[j] = 0u;
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < kRounds; ++r) {
    for (int64_t j = 0; j < kCpuBlock; ++j) {
      const uint64_t pb = static_cast<uint64_t>(kRoundB) * c2[j];
      const uint64_t pa = static_cast<uint64_t>(kRoundA) * c0[j];
      const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1[j] ^ k0;
      const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3[j] ^ k1;
      c1[j] = static_cast<uint32_t>(pb);
      c3[j] = static_cast<uint32_t>(pa);
      c0[j] = n0;
      c2[j] = n2;
    }
    k0 += kKeyA;
    k1 += kKeyB;
  }
  alignas(64) float u1[kCpuBlock], u2[kCpuBlock];
  for (int64_t j = 0; j < kCpuBlock; ++j) {
    u1[j] = uint_to_uniform(c0[j]);
    u2[j] = uint_to_uniform(c1[j]);
  }
  using V = at::vec::Vectorized<float>;
  const V lo(1.0e-7f), two_pi(6.283185307179586f), minus_two(-2.0f);
  for (int64_t j = 0; j < kCpuBlock; j += V::size()) {
    const V a = at::vec::maximum(V::loadu(u1 + j), lo);
    const V th = two_pi * V::loadu(u2 + j);
    const V r = (minus_two * a.log()).sqrt();
    (r * th.cos()).store(out + j);
  }
}

// out[j] = randn(seed, base + j) for j < n, converted to T (float or double).
template <typename T>
void randn_run(uint64_t seed, uint64_t base, int64_t n, T* out) {
  alignas(64) float block[kCpuBlock];
  for (int64_t j = 0; j < n; j += kCpuBlock) {
    randn_block(seed, base + static_cast<uint64_t>(j), block);
    const int64_t m = std::min(kCpuBlock, n - j);
    for (int64_t q = 0; q < m; ++q) out[j + q] = static_cast<T>(block[q]);
  }
}

}  // namespace philox
}  // namespace fastgen
