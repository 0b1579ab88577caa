#pragma once
// Flash attention kernels on CUDA cores (FMA), one warp per query row (forward, dQ) or key row
// (dK/dV); the launchers are csrc/cuda/attention.cu, the tensor-core forward attention_mma.cuh.
// No ATen: the nvcc build and the cuda_emu build (csrc/emu/) compile this same source.
#include <cmath>
#include <cstdint>

#include "common/philox.h"
#include "cuda/kernel.h"

namespace fastgen {
namespace {  // internal linkage, as before the split: only csrc/cuda/attention.cu includes this file

constexpr int kMaxPerLane = 8;  // head dim <= 256
constexpr int kWarps = 4;

struct Geometry {
  int64_t b, h, hkv, lq, lk, d;
  int64_t sqb, sqh, sqm, skb, skh, skn, svb, svh, svn;  // strides (elements)
};

// Attention dropout: probability (b, h, i, j) is kept iff philox rand(seed, ((b*H + h)*Lq + i)*Lk + j)
// >= p (common/philox.h, the same mask on every backend); kept ones are scaled by `scale`.
struct Dropout {
  const int64_t* seed;  // device, one value; nullptr: no dropout
  float p, scale;
  // multiplier of probability (row, j), row = (b * H + h) * Lq + i
  __device__ __forceinline__ float mult(uint64_t seed_value, int64_t row, int64_t lk, int64_t j) const {
    return philox::rand(seed_value, static_cast<uint64_t>(row * lk + j)) >= p ? scale : 0.f;
  }
};

template <typename A>
__device__ __forceinline__ A warp_sum(A x) {
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

__device__ __forceinline__ bool visible(int64_t i, int64_t j, bool causal, const bool* pad) {
  return (!causal || j <= i) && (pad == nullptr || !pad[j]);
}

// lanes own dims lane, lane + 32, ...: load a row of a (B, H, L, Dh) tensor into registers
template <typename T, typename A>
__device__ __forceinline__ void load_row(const T* row, int64_t d, A (&x)[kMaxPerLane]) {
#pragma unroll
  for (int t = 0; t < kMaxPerLane; ++t) {
    const int64_t c = threadIdx.x % 32 + 32 * t;
    x[t] = c < d ? static_cast<A>(row[c]) : A(0);
  }
}

template <typename A>
__device__ __forceinline__ A dot(const A (&x)[kMaxPerLane], const A (&y)[kMaxPerLane]) {
  A s = 0;
#pragma unroll
  for (int t = 0; t < kMaxPerLane; ++t) s += x[t] * y[t];
  return warp_sum(s);
}

template <typename T, typename A>
__global__ void attn_fwd_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                const bool* __restrict__ kpm, const int64_t* __restrict__ seqlens,
                                T* __restrict__ out, A* __restrict__ lse, Geometry g, A scale, bool causal,
                                Dropout drop) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;  // (b, h, i)
  if (row >= g.b * g.h * g.lq) return;
  const int64_t i = row % g.lq, bh = row / g.lq, h = bh % g.h, b = bh / g.h, hk = h / (g.h / g.hkv);
  A qr[kMaxPerLane], acc[kMaxPerLane] = {}, kr[kMaxPerLane], vr[kMaxPerLane];
  load_row(q + b * g.sqb + h * g.sqh + i * g.sqm, g.d, qr);
  const T* kb = k + b * g.skb + hk * g.skh;
  const T* vb = v + b * g.svb + hk * g.svh;
  const bool* pad = kpm == nullptr ? nullptr : kpm + b * g.lk;
  A m = -INFINITY, l = 0;
  const uint64_t seed_value = drop.seed == nullptr ? 0 : static_cast<uint64_t>(*drop.seed);
  int64_t hi = causal ? (i + 1 < g.lk ? i + 1 : g.lk) : g.lk;
  if (seqlens != nullptr) {  // decoding: query i is at position seqlens[b] - lq + i, bottom-right causal
    const int64_t limit = seqlens[b] - (g.lq - 1 - i);
    hi = limit < 0 ? 0 : (limit < g.lk ? limit : g.lk);
  }
  for (int64_t j = 0; j < hi; ++j) {
    if (!visible(i, j, causal, pad)) continue;
    load_row(kb + j * g.skn, g.d, kr);
    const A s = dot(qr, kr) * scale;
    const A m_new = s > m ? s : m;
    // a row whose scores so far are all -inf (infinite inputs) stays at l = 0: exp(-inf - -inf)
    // would be NaN; out 0 and lse -inf, as the reference and the tensor-core kernel give
    const A base = m_new == -INFINITY ? A(0) : m_new;
    const A alpha = exp(m - base), p = exp(s - base);
    const A p_kept = drop.seed == nullptr ? p : p * static_cast<A>(drop.mult(seed_value, row, g.lk, j));
    load_row(vb + j * g.svn, g.d, vr);
#pragma unroll
    for (int t = 0; t < kMaxPerLane; ++t) acc[t] = acc[t] * alpha + p_kept * vr[t];
    l = l * alpha + p;  // the softmax sum before dropout
    m = m_new;
  }
  T* orow = out + row * g.d;
#pragma unroll
  for (int t = 0; t < kMaxPerLane; ++t) {
    const int64_t c = threadIdx.x % 32 + 32 * t;
    if (c < g.d) orow[c] = static_cast<T>(l != 0 ? acc[t] / l : A(0));  // l == 0: no key seen; NaN propagates
  }
  if (threadIdx.x % 32 == 0) lse[row] = l > 0 ? m + log(l) : static_cast<A>(-INFINITY);  // NaN l: -inf, as the reference
}

// One warp per key row j of kv head hk: dV_j = sum_i p_ij dO_i, dK_j = scale * sum_i dS_ij q_i over
// the queries of every head in the group, in order.
template <typename T, typename A>
__global__ void attn_bwd_dkdv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                     const bool* __restrict__ kpm, const T* __restrict__ dout,
                                     const A* __restrict__ lse, const A* __restrict__ delta, T* __restrict__ dk,
                                     T* __restrict__ dv, Geometry g, A scale, bool causal, Dropout drop) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;  // (b, hk, j)
  if (row >= g.b * g.hkv * g.lk) return;
  const int64_t j = row % g.lk, bhk = row / g.lk, hk = bhk % g.hkv, b = bhk / g.hkv, group = g.h / g.hkv;
  A kr[kMaxPerLane], vr[kMaxPerLane], qr[kMaxPerLane], dor[kMaxPerLane], dka[kMaxPerLane] = {}, dva[kMaxPerLane] = {};
  load_row(k + b * g.skb + hk * g.skh + j * g.skn, g.d, kr);
  load_row(v + b * g.svb + hk * g.svh + j * g.svn, g.d, vr);
  const bool* pad = kpm == nullptr ? nullptr : kpm + b * g.lk;
  const uint64_t seed_value = drop.seed == nullptr ? 0 : static_cast<uint64_t>(*drop.seed);
  if (pad == nullptr || !pad[j]) {
    for (int64_t hh = hk * group; hh < (hk + 1) * group; ++hh) {
      const int64_t bh = b * g.h + hh;
      for (int64_t i = causal ? j : 0; i < g.lq; ++i) {
        const A l = lse[bh * g.lq + i];
        if (l == -INFINITY) continue;
        load_row(q + b * g.sqb + hh * g.sqh + i * g.sqm, g.d, qr);
        load_row(dout + (bh * g.lq + i) * g.d, g.d, dor);
        const A p = exp(dot(qr, kr) * scale - l);
        const A mult = drop.seed == nullptr ? A(1) : static_cast<A>(drop.mult(seed_value, bh * g.lq + i, g.lk, j));
        const A ds = p * (mult * dot(dor, vr) - delta[bh * g.lq + i]);
#pragma unroll
        for (int t = 0; t < kMaxPerLane; ++t) {
          dva[t] += p * mult * dor[t];
          dka[t] += ds * qr[t];
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kMaxPerLane; ++t) {
    const int64_t c = threadIdx.x % 32 + 32 * t;
    if (c < g.d) {
      dk[row * g.d + c] = static_cast<T>(dka[t] * scale);
      dv[row * g.d + c] = static_cast<T>(dva[t]);
    }
  }
}

template <typename T, typename A>
__global__ void attn_bwd_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                   const bool* __restrict__ kpm, const T* __restrict__ dout,
                                   const A* __restrict__ lse, const A* __restrict__ delta, T* __restrict__ dq,
                                   Geometry g, A scale, bool causal, Dropout drop) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;  // (b, h, i)
  if (row >= g.b * g.h * g.lq) return;
  const int64_t i = row % g.lq, bh = row / g.lq, h = bh % g.h, b = bh / g.h, hk = h / (g.h / g.hkv);
  A qr[kMaxPerLane], dor[kMaxPerLane], kr[kMaxPerLane], vr[kMaxPerLane], dqa[kMaxPerLane] = {};
  const A l = lse[row];
  if (l != -INFINITY) {
    load_row(q + b * g.sqb + h * g.sqh + i * g.sqm, g.d, qr);
    load_row(dout + row * g.d, g.d, dor);
    const A dl = delta[row];
    const uint64_t seed_value = drop.seed == nullptr ? 0 : static_cast<uint64_t>(*drop.seed);
    const bool* pad = kpm == nullptr ? nullptr : kpm + b * g.lk;
    const int64_t hi = causal ? (i + 1 < g.lk ? i + 1 : g.lk) : g.lk;
    for (int64_t j = 0; j < hi; ++j) {
      if (!visible(i, j, causal, pad)) continue;
      load_row(k + b * g.skb + hk * g.skh + j * g.skn, g.d, kr);
      load_row(v + b * g.svb + hk * g.svh + j * g.svn, g.d, vr);
      const A p = exp(dot(qr, kr) * scale - l);
      const A mult = drop.seed == nullptr ? A(1) : static_cast<A>(drop.mult(seed_value, row, g.lk, j));
      const A ds = p * (mult * dot(dor, vr) - dl);
#pragma unroll
      for (int t = 0; t < kMaxPerLane; ++t) dqa[t] += ds * kr[t];
    }
  }
#pragma unroll
  for (int t = 0; t < kMaxPerLane; ++t) {
    const int64_t c = threadIdx.x % 32 + 32 * t;
    if (c < g.d) dq[row * g.d + c] = static_cast<T>(dqa[t] * scale);
  }
}

}  // namespace
}  // namespace fastgen
