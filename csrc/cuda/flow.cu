// CUDA kernels for the normalizing-flow ops (math in csrc/common/flow.h).
// Per-sample reductions: grid x = sample, y = chunk of its elements; each block writes one
// partial and the partials are summed per sample afterwards in a fixed order (deterministic,
// no atomics).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/flow_host.h"

namespace fastgen {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMinChunk = 8192;  // elements per block
constexpr int64_t kMaxGridY = 65535;

template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : T(0);
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

struct Launch {
  int64_t rows, cols, chunk, chunks;
  explicit Launch(const at::Tensor& t) {
    rows = t.size(0);
    cols = rows == 0 ? 0 : t.numel() / rows;
    chunk = std::max(kMinChunk, (cols + kMaxGridY - 1) / kMaxGridY);
    chunks = std::max<int64_t>(1, (cols + chunk - 1) / chunk);
    TORCH_CHECK_VALUE(rows <= INT32_MAX, "fastgen: batch size ", rows, " exceeds 2^31-1");
  }
  dim3 grid() const { return dim3(static_cast<unsigned>(rows), static_cast<unsigned>(chunks)); }
};

// -- affine coupling ----------------------------------------------------------------------------

template <int FN, bool INVERSE, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
coupling_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ t,
                        const scalar_t* __restrict__ r, scalar_t* __restrict__ y,
                        acc_t* __restrict__ partial, int64_t cols, int64_t chunk, acc_t clamp) {
  const int64_t row = blockIdx.x;
  const int64_t start = blockIdx.y * chunk;
  const int64_t end = min(cols, start + chunk);
  const int64_t base = row * cols;
  const CouplingParams<acc_t> p(clamp);
  acc_t acc = 0;
  for (int64_t i = base + start + threadIdx.x; i < base + end; i += kThreads) {
    acc_t ls;
    y[i] = static_cast<scalar_t>(coupling_forward<FN, INVERSE, acc_t>(
        static_cast<acc_t>(x[i]), static_cast<acc_t>(t[i]), static_cast<acc_t>(r[i]), p, &ls));
    acc += ls;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[row * gridDim.y + blockIdx.y] = INVERSE ? -acc : acc;
}

template <int FN, bool INVERSE, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
coupling_backward_kernel(const scalar_t* __restrict__ gy, const acc_t* __restrict__ gl,
                         const scalar_t* __restrict__ x, const scalar_t* __restrict__ t,
                         const scalar_t* __restrict__ r, scalar_t* __restrict__ dx,
                         scalar_t* __restrict__ dr, int64_t cols, int64_t chunk, acc_t clamp) {
  const int64_t row = blockIdx.x;
  const int64_t start = blockIdx.y * chunk;
  const int64_t end = min(cols, start + chunk);
  const int64_t base = row * cols;
  const CouplingParams<acc_t> p(clamp);
  const acc_t g = gl[row];
  for (int64_t i = base + start + threadIdx.x; i < base + end; i += kThreads) {
    acc_t a, b;
    // the forward direction never reads shift
    const acc_t ti = INVERSE ? static_cast<acc_t>(t[i]) : acc_t(0);
    coupling_backward<FN, INVERSE, acc_t>(static_cast<acc_t>(gy[i]), g, static_cast<acc_t>(x[i]), ti,
                                          static_cast<acc_t>(r[i]), p, &a, &b);
    dx[i] = static_cast<scalar_t>(a);
    dr[i] = static_cast<scalar_t>(b);
  }
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_cuda(const at::Tensor& x_in, const at::Tensor& t_in,
                                                        const at::Tensor& r_in, c10::string_view scale_fn,
                                                        double clamp, bool inverse) {
  check_coupling(x_in, t_in, r_in, clamp);
  const int fn = parse_scale_fn(scale_fn);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous(), t = t_in.contiguous(), r = r_in.contiguous();
  const Launch l(x);
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto acc_dtype = opmath_dtype(x.scalar_type());
  if (l.rows == 0) return {y, at::empty({0}, x.options().dtype(acc_dtype))};
  auto partial = at::empty({l.rows, l.chunks}, x.options().dtype(acc_dtype));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_coupling_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_coupling(fn, inverse, [&](auto fn_c, auto inv_c) {
      coupling_forward_kernel<decltype(fn_c)::value, decltype(inv_c)::value, scalar_t, acc_t>
          <<<l.grid(), kThreads, 0, stream>>>(
              x.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
              y.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), l.cols, l.chunk,
              static_cast<acc_t>(clamp));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  auto logdet = l.chunks == 1 ? partial.view({l.rows}) : partial.sum(1);
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_backward_cuda(
    const at::Tensor& gy_in, const at::Tensor& gl_in, const at::Tensor& x_in, const at::Tensor& t_in,
    const at::Tensor& r_in, c10::string_view scale_fn, double clamp, bool inverse) {
  check_coupling(x_in, t_in, r_in, clamp);
  check_same_float_tensor(x_in, "x_b", gy_in, "grad_y");
  check_per_sample(x_in, "x_b", gl_in, "grad_logdet");
  const int fn = parse_scale_fn(scale_fn);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous(), t = t_in.contiguous(), r = r_in.contiguous();
  const auto gy = gy_in.contiguous();
  const Launch l(x);
  auto dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto dr = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (l.rows == 0 || l.cols == 0) return {dx, dr};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_coupling_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto gl = gl_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    dispatch_coupling(fn, inverse, [&](auto fn_c, auto inv_c) {
      coupling_backward_kernel<decltype(fn_c)::value, decltype(inv_c)::value, scalar_t, acc_t>
          <<<l.grid(), kThreads, 0, stream>>>(
              gy.const_data_ptr<scalar_t>(), gl.const_data_ptr<acc_t>(), x.const_data_ptr<scalar_t>(),
              t.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
              dr.mutable_data_ptr<scalar_t>(), l.cols, l.chunk, static_cast<acc_t>(clamp));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {dx, dr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CUDA, m) {
  m.impl("affine_coupling_native", &affine_coupling_cuda);
  m.impl("affine_coupling_backward_native", &affine_coupling_backward_cuda);
}

}  // namespace fastgen
