// CUDA flash attention launchers (kernels: csrc/cuda/attention.cuh, FMA, and attention_mma.cuh,
// tensor cores). The FMA kernels: one warp per query row (forward, dQ) or key row (dK/dV): lanes split
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
#include "cuda/attention_mma.cuh"
#include "cuda/device_guard.h"
#include "cuda/launch.h"
#include "cuda/attention.cuh"

namespace fastgen {
namespace {

// q, k, v as check_attention (common/attention.h) accepted them (head dim <= kAttentionMaxHeadDim),
// with unit last stride (unit_last).
static_assert(kAttentionMaxHeadDim == 32 * kMaxPerLane, "the FMA kernels' head-dim limit is the checks'");
Geometry geometry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK_VALUE(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
                    "fastgen: q, k and v must have a unit last stride");
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
  check_flash_attention(q_in, k_in, v_in, key_padding_mask, dropout_p, seed, scale, kAttentionMaxHeadDim);
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
                                 scale, kAttentionMaxHeadDim);
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
  check_decode(q_in, k_in, v_in, cache_seqlens, scale, kAttentionMaxHeadDim);
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
