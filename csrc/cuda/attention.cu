// CUDA flash attention, one warp per query row (forward, dQ) or key row (dK/dV): lanes split
// the head dim (up to 256 = 8 per lane), dot products reduce with shuffles in a fixed order,
// the softmax is online (running max and sum). No Lq x Lk matrix, no atomics: deterministic.
// Any float dtype, fp32 math (fp64 for fp64). This is the plain-FMA kernel; a tensor-core
// version for fp16/bf16 at head dims 64/128 (attention_mma.cuh) takes the forward there on sm_80+.
// Layout (B, H, L, Dh) with unit last stride; GQA: query head h reads kv head h / group;
// causal is top-left aligned (query i sees keys j <= i); key_padding_mask True = padded key.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <limits>

#include "common/attention.h"
#include "common/checks.h"
#include "common/dispatch.h"
#include "common/philox.h"
#include "attention_mma.cuh"
#include "cuda/device_guard.h"
#include "cuda/launch.h"

namespace fastgen {
namespace {

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
    const A alpha = exp(m - m_new), p = exp(s - m_new);
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

// q, k, v as check_attention (common/attention.h) accepted them, with unit last stride.
Geometry geometry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK_VALUE(q.size(3) <= 32 * kMaxPerLane, "fastgen: head dim must be <= 256");
  TORCH_CHECK_VALUE(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "fastgen: unit last stride expected");
  return {q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3),
          q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
          v.stride(0), v.stride(1), v.stride(2)};
}

at::Tensor unit_last(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// (checked by check_attention_options)
const bool* padding_ptr(const c10::optional<at::Tensor>& kpm, at::Tensor& holder) {
  if (!kpm.has_value()) return nullptr;
  holder = kpm->contiguous();
  return holder.const_data_ptr<bool>();
}

unsigned warp_blocks(int64_t rows) { return static_cast<unsigned>((rows + kWarps - 1) / kWarps); }

// (checked by check_attention_options)
Dropout dropout_args(double dropout_p, const c10::optional<at::Tensor>& seed) {
  if (!(dropout_p > 0)) return {nullptr, 0.f, 1.f};
  return {seed->const_data_ptr<int64_t>(), static_cast<float>(dropout_p),
          dropout_p < 1 ? static_cast<float>(1.0 / (1.0 - dropout_p)) : 0.f};
}

// The tensor-core forward: fp16/bf16, head dim 64 or 128, sm_80+. FASTGEN_ATTENTION_MMA=0 turns it
// off (to compare with the FMA kernel).
bool mma_applies(const at::Tensor& q, const Geometry& g) {
  static const bool enabled = [] {
    const char* env = std::getenv("FASTGEN_ATTENTION_MMA");
    return env == nullptr || std::string(env) != "0";
  }();
  const auto dtype = q.scalar_type();
  return enabled && (dtype == at::kHalf || dtype == at::kBFloat16) && (g.d == 64 || g.d == 128) &&
         at::cuda::getCurrentDeviceProperties()->major >= 8;
}

template <typename T, int D>
void launch_mma(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const bool* pad, at::Tensor& out,
                at::Tensor& lse, const Geometry& g, double scale, bool causal, const Dropout& drop) {
  namespace mm = mma_attention;
  const auto aligned = [](const at::Tensor& t) {
    return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0 && t.stride(0) % 8 == 0 &&
           t.stride(1) % 8 == 0 && t.stride(2) % 8 == 0;
  };
  mm::Params prm{q.const_data_ptr(), k.const_data_ptr(), v.const_data_ptr(), pad, out.mutable_data_ptr(),
                 lse.mutable_data_ptr<float>(), g.h, g.hkv, g.lq, g.lk, g.sqb, g.sqh, g.sqm, g.skb, g.skh, g.skn,
                 g.svb, g.svh, g.svn, static_cast<float>(scale) * mm::kLog2e, drop.seed, drop.p, drop.scale, causal,
                 aligned(q) && aligned(k) && aligned(v)};
  constexpr size_t bytes = mm::Smem<D>::bytes;
  auto kernel = mm::attn_fwd_mma_kernel<T, D>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  const dim3 grid(static_cast<unsigned>(g.b * g.h), static_cast<unsigned>((g.lq + mm::kRows - 1) / mm::kRows));
  FASTGEN_LAUNCH(grid, mm::kThreads, bytes, at::cuda::getCurrentCUDAStream(), mm::attn_fwd_mma_kernel<T, D>)(prm);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_mma(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const bool* pad, at::Tensor& out,
                at::Tensor& lse, const Geometry& g, double scale, bool causal, const Dropout& drop) {
  if (g.d == 64) {
    launch_mma<T, 64>(q, k, v, pad, out, lse, g, scale, causal, drop);
  } else {
    launch_mma<T, 128>(q, k, v, pad, out, lse, g, scale, causal, drop);
  }
}

std::tuple<at::Tensor, at::Tensor> flash_attention_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                        const at::Tensor& v_in, bool causal, c10::optional<double> scale,
                                                        const c10::optional<at::Tensor>& key_padding_mask,
                                                        double dropout_p, const c10::optional<at::Tensor>& seed) {
  check_flash_attention(q_in, k_in, v_in, key_padding_mask, dropout_p, seed, scale);
  const auto guard = device_guard(q_in, "q");
  const auto q = unit_last(q_in), k = unit_last(k_in), v = unit_last(v_in);
  const Geometry g = geometry(q, k, v);
  const auto math = opmath_dtype(q.scalar_type());
  auto out = at::empty({g.b, g.h, g.lq, g.d}, q.options());
  auto lse = at::empty({g.b, g.h, g.lq}, q.options().dtype(math));
  const int64_t rows = g.b * g.h * g.lq;
  if (rows == 0) return {out, lse};
  at::Tensor pad_holder;
  const bool* pad = padding_ptr(key_padding_mask, pad_holder);
  const double s = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(g.d));
  const Dropout drop = dropout_args(dropout_p, seed);
  if (mma_applies(q, g)) {
    if (q.scalar_type() == at::kHalf) {
      launch_mma<__half>(q, k, v, pad, out, lse, g, s, causal, drop);
    } else {
      launch_mma<__nv_bfloat16>(q, k, v, pad, out, lse, g, s, causal, drop);
    }
    return {out, lse};
  }
  FASTGEN_DISPATCH_FLOATS(q.scalar_type(), "flash_attention_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    FASTGEN_LAUNCH(warp_blocks(rows), 32 * kWarps, 0, at::cuda::getCurrentCUDAStream(), attn_fwd_kernel<scalar_t, A>)(
        q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), pad, nullptr,
        out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<A>(), g, static_cast<A>(s), causal, drop);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& grad_lse, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out, const at::Tensor& lse, bool causal, c10::optional<double> scale,
    const c10::optional<at::Tensor>& key_padding_mask, double dropout_p, const c10::optional<at::Tensor>& seed) {
  check_flash_attention_backward(grad_out, grad_lse, q_in, k_in, v_in, out, lse, key_padding_mask, dropout_p, seed,
                                 scale);
  const auto guard = device_guard(q_in, "q");
  const auto q = unit_last(q_in), k = unit_last(k_in), v = unit_last(v_in);
  const Geometry g = geometry(q, k, v);
  const auto math = opmath_dtype(q.scalar_type());
  auto dq = at::empty({g.b, g.h, g.lq, g.d}, q.options());
  auto dk = at::empty({g.b, g.hkv, g.lk, g.d}, q.options());
  auto dv = at::empty({g.b, g.hkv, g.lk, g.d}, q.options());
  if (g.b * g.h * g.lq == 0 || g.lk == 0) return {dq.zero_(), dk.zero_(), dv.zero_()};
  const auto dout = grad_out.contiguous();
  // delta_i = sum_d dO * O; a gradient on lse adds p * grad_lse to dS: subtract it from delta
  const auto delta = ((dout.to(math) * out.to(math)).sum(-1) - grad_lse.to(math)).contiguous();
  const auto lse_m = lse.to(math).contiguous();
  at::Tensor pad_holder;
  const bool* pad = padding_ptr(key_padding_mask, pad_holder);
  const double s = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(g.d));
  auto stream = at::cuda::getCurrentCUDAStream();
  const Dropout drop = dropout_args(dropout_p, seed);
  FASTGEN_DISPATCH_FLOATS(q.scalar_type(), "flash_attention_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    FASTGEN_LAUNCH(warp_blocks(g.b * g.hkv * g.lk), 32 * kWarps, 0, stream, attn_bwd_dkdv_kernel<scalar_t, A>)(
        q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), pad,
        dout.const_data_ptr<scalar_t>(), lse_m.const_data_ptr<A>(), delta.const_data_ptr<A>(),
        dk.mutable_data_ptr<scalar_t>(), dv.mutable_data_ptr<scalar_t>(), g, static_cast<A>(s), causal, drop);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    FASTGEN_LAUNCH(warp_blocks(g.b * g.h * g.lq), 32 * kWarps, 0, stream, attn_bwd_dq_kernel<scalar_t, A>)(
        q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), pad,
        dout.const_data_ptr<scalar_t>(), lse_m.const_data_ptr<A>(), delta.const_data_ptr<A>(),
        dq.mutable_data_ptr<scalar_t>(), g, static_cast<A>(s), causal, drop);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dq, dk, dv};
}

// Decoding: the forward kernel with per-sequence key limits (one warp per new query; the
// split-KV version is the Triton kernel).
at::Tensor decode_attention_cuda(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                 const at::Tensor& cache_seqlens, c10::optional<double> scale) {
  check_decode(q_in, k_in, v_in, cache_seqlens);
  check_scale(scale);
  const auto guard = device_guard(q_in, "q");
  const auto q = unit_last(q_in), k = unit_last(k_in), v = unit_last(v_in);
  const Geometry g = geometry(q, k, v);
  const auto seqlens = cache_seqlens.to(at::kLong).contiguous();
  auto out = at::empty({g.b, g.h, g.lq, g.d}, q.options());
  auto lse = at::empty({g.b, g.h, g.lq}, q.options().dtype(opmath_dtype(q.scalar_type())));
  const int64_t rows = g.b * g.h * g.lq;
  if (rows == 0) return out;
  const double s = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(g.d));
  FASTGEN_DISPATCH_FLOATS(q.scalar_type(), "decode_attention_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    FASTGEN_LAUNCH(warp_blocks(rows), 32 * kWarps, 0, at::cuda::getCurrentCUDAStream(), attn_fwd_kernel<scalar_t, A>)(
        q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), nullptr,
        seqlens.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<A>(), g,
        static_cast<A>(s), false, Dropout{nullptr, 0.f, 1.f});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

FASTGEN_CUDA_LIBRARY_IMPL(m) {
  m.impl("decode_attention_native", &decode_attention_cuda);
  m.impl("flash_attention_native", &flash_attention_cuda);
  m.impl("flash_attention_backward_native", &flash_attention_backward_cuda);
}

}  // namespace fastgen
