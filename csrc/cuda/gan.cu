// CUDA kernels for the GAN / SimCLR family (math in csrc/common/gan.h).
//
// bias_act views x as (outer, C, inner), C = x.shape[dim]. The forward is a grid-stride
// elementwise kernel. The backward's grid is (channel tiles, row blocks): each block writes its
// dx and one partial dbias per channel; the partials are summed over row blocks afterwards
// (deterministic, no atomics).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "common/checks.h"
#include "common/gan.h"

namespace fastgen {
namespace {

constexpr int kThreads = 256;

template <typename F>
void dispatch_act(c10::string_view act, F&& f) {
  if (act == "leaky_relu") return f(std::integral_constant<Act, Act::kLeakyRelu>());
  if (act == "relu") return f(std::integral_constant<Act, Act::kRelu>());
  if (act == "silu") return f(std::integral_constant<Act, Act::kSilu>());
  if (act == "gelu") return f(std::integral_constant<Act, Act::kGelu>());
  TORCH_CHECK_VALUE(false, "fastgen: act must be one of leaky_relu, relu, silu, gelu, got '",
                    std::string(act), "'");
}

// Sum of v over the block; the result is valid in thread 0.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // warp_sums may still be read by a previous call
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : T(0);
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

struct ChannelView {
  int64_t outer, channels, inner;
  ChannelView(const at::Tensor& x, int64_t dim) {
    dim = dim < 0 ? dim + x.dim() : dim;
    channels = x.size(dim);
    inner = 1;
    for (int64_t i = dim + 1; i < x.dim(); ++i) inner *= x.size(i);
    outer = channels * inner == 0 ? 0 : x.numel() / (channels * inner);
  }
};

void check_bias_act(const at::Tensor& x, const std::optional<at::Tensor>& bias, int64_t dim) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "fastgen: x must be a floating-point tensor, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 1, "fastgen: x must have at least one dim");
  TORCH_CHECK_VALUE(dim >= -x.dim() && dim < x.dim(), "fastgen: dim ", dim, " out of range for x of shape ",
                    x.sizes());
  if (bias.has_value()) {
    const int64_t c = x.size(dim < 0 ? dim + x.dim() : dim);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == c, "fastgen: bias must have shape (", c,
                      ",), got ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == x.scalar_type(), "fastgen: bias has dtype ", bias->scalar_type(),
                     " but x has ", x.scalar_type());
    TORCH_CHECK_VALUE(bias->device() == x.device(), "fastgen: bias is on ", bias->device(), " but x is on ",
                      x.device());
  }
}

template <Act A, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
bias_act_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ bias,
                        scalar_t* __restrict__ out, int64_t numel, int64_t channels, int64_t inner,
                        acc_t alpha, acc_t gain) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    acc_t y = static_cast<acc_t>(x[i]);
    if (bias != nullptr) y += static_cast<acc_t>(bias[(i / inner) % channels]);
    out[i] = static_cast<scalar_t>(act_forward<A>(y, alpha) * gain);
  }
}

// kPlanes (inner > 1): block (c, row block) walks its rows' `inner`-long planes of channel c.
// Otherwise (inner == 1): thread t of block (tile, row block) owns channel tile*kThreads + t
// and walks the rows, so neighbouring threads read neighbouring channels.
template <Act A, bool kPlanes, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
bias_act_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                         const scalar_t* __restrict__ bias, scalar_t* __restrict__ dx,
                         acc_t* __restrict__ partial, int64_t outer, int64_t channels, int64_t inner,
                         int64_t rows_per_block, acc_t alpha, acc_t gain) {
  const int64_t r0 = blockIdx.y * rows_per_block;
  const int64_t r1 = min(outer, r0 + rows_per_block);
  acc_t acc = 0;
  if constexpr (kPlanes) {
    const int64_t c = blockIdx.x;
    const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[c]) : acc_t(0);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t base = (r * channels + c) * inner;
      for (int64_t j = threadIdx.x; j < inner; j += kThreads) {
        const acc_t d = static_cast<acc_t>(grad[base + j]) *
                        act_slope<A>(static_cast<acc_t>(x[base + j]) + b, alpha) * gain;
        dx[base + j] = static_cast<scalar_t>(d);
        acc += d;
      }
    }
    acc = block_sum(acc);
    if (partial != nullptr && threadIdx.x == 0) partial[blockIdx.y * channels + c] = acc;
  } else {
    const int64_t c = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
    if (c >= channels) return;
    const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[c]) : acc_t(0);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = r * channels + c;
      const acc_t d = static_cast<acc_t>(grad[i]) * act_slope<A>(static_cast<acc_t>(x[i]) + b, alpha) * gain;
      dx[i] = static_cast<scalar_t>(d);
      acc += d;
    }
    if (partial != nullptr) partial[blockIdx.y * channels + c] = acc;
  }
}

at::Tensor bias_act_cuda(const at::Tensor& x_in, const std::optional<at::Tensor>& bias_in, c10::string_view act,
                         double alpha, double gain, int64_t dim) {
  check_bias_act(x_in, bias_in, dim);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return out;
  const std::optional<at::Tensor> bias = bias_in.has_value() ? std::optional<at::Tensor>(bias_in->contiguous())
                                                             : std::nullopt;
  const ChannelView v(x, dim);
  const int64_t blocks = std::min<int64_t>((x.numel() + kThreads - 1) / kThreads, 65536 * 8);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_act(act, [&](auto tag) {
      constexpr Act A = decltype(tag)::value;
      bias_act_forward_kernel<A, scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), bias ? bias->const_data_ptr<scalar_t>() : nullptr,
          out.mutable_data_ptr<scalar_t>(), x.numel(), v.channels, v.inner, static_cast<acc_t>(alpha),
          static_cast<acc_t>(gain));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> bias_act_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                          const std::optional<at::Tensor>& bias_in,
                                                          c10::string_view act, double alpha, double gain,
                                                          int64_t dim) {
  check_bias_act(x_in, bias_in, dim);
  check_same_float_tensor(x_in, "x", grad_in, "grad");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous(), grad = grad_in.contiguous();
  auto dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const bool want_db = bias_in.has_value();
  if (x.numel() == 0) return {dx, want_db ? at::zeros_like(*bias_in) : at::empty({0}, x.options())};
  const std::optional<at::Tensor> bias = want_db ? std::optional<at::Tensor>(bias_in->contiguous())
                                                 : std::nullopt;
  const ChannelView v(x, dim);
  const bool planes = v.inner > 1;
  const int64_t tiles = planes ? v.channels : (v.channels + kThreads - 1) / kThreads;
  TORCH_CHECK_VALUE(tiles <= INT32_MAX, "fastgen: too many channels (", v.channels, ")");
  // About 2048 blocks in all: enough to fill the GPU, few partials to sum.
  const int64_t row_blocks = std::min<int64_t>(std::max<int64_t>(1, 2048 / tiles), std::min<int64_t>(v.outer, 65535));
  const int64_t rows_per_block = (v.outer + row_blocks - 1) / row_blocks;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>((v.outer + rows_per_block - 1) / rows_per_block));
  const auto acc_dtype = opmath_dtype(x.scalar_type());
  auto partial = want_db ? at::empty({grid.y, v.channels}, x.options().dtype(acc_dtype)) : at::Tensor();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_act(act, [&](auto tag) {
      constexpr Act A = decltype(tag)::value;
      const auto launch = [&](auto planes_tag) {
        bias_act_backward_kernel<A, decltype(planes_tag)::value, scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
            bias ? bias->const_data_ptr<scalar_t>() : nullptr, dx.mutable_data_ptr<scalar_t>(),
            want_db ? partial.mutable_data_ptr<acc_t>() : nullptr, v.outer, v.channels, v.inner, rows_per_block,
            static_cast<acc_t>(alpha), static_cast<acc_t>(gain));
      };
      if (planes) launch(std::true_type()); else launch(std::false_type());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  auto db = want_db ? partial.sum(0).to(bias_in->scalar_type()) : at::empty({0}, x.options());
  return {dx, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CUDA, m) {
  m.impl("bias_act_native", &bias_act_cuda);
  m.impl("bias_act_backward_native", &bias_act_backward_cuda);
}

}  // namespace fastgen
