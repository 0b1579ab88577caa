// CPU entry points of invertible_conv1x1 (math and the device-generic path:
// csrc/common/invconv_host.h). Glow's layers have 12 to 48 channels, where BLAS and a dozen ATen
// ops per call cost more than the arithmetic: up to kSmallC channels the C x C weight build and
// the gradient chain are plain loops, and the per-sample products run in at::vec register blocks
// (4 channels x one vector of positions) over tiles of kPosBlock positions. Wider layers take
// the host path (BLAS GEMMs).
// The weight gradient sums fixed chunks of (sample, position block) in order: the result does
// not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "common/dispatch.h"
#include "common/invconv_host.h"

namespace fastgen {
namespace {

constexpr int64_t kSmallC = 64;
constexpr int64_t kPosBlock = 256;   // positions per task of the products
constexpr int64_t kGradChunks = 16;  // fixed partial sums of the weight gradient

template <typename T>
std::vector<T> host_vector(const at::Tensor& t) {
  const auto v = t.to(c10::CppTypeToScalarType<T>::value).contiguous();
  const T* p = v.template const_data_ptr<T>();
  return std::vector<T>(p, p + v.numel());
}

// a @ b and a^T for row-major c x c matrices.
template <typename T>
std::vector<T> small_matmul(const std::vector<T>& a, const std::vector<T>& b, int64_t c) {
  std::vector<T> out(c * c, T(0));
  for (int64_t i = 0; i < c; ++i)
    for (int64_t k = 0; k < c; ++k)
      for (int64_t j = 0; j < c; ++j) out[i * c + j] += a[i * c + k] * b[k * c + j];
  return out;
}

template <typename T>
std::vector<T> small_transpose(const std::vector<T>& a, int64_t c) {
  std::vector<T> out(c * c);
  for (int64_t i = 0; i < c; ++i)
    for (int64_t j = 0; j < c; ++j) out[j * c + i] = a[i * c + j];
  return out;
}

// Row-major C x C matrices in the math type T.
template <typename T>
struct SmallLU {
  int64_t c = 0;
  std::vector<T> perm, lo, up, scale, m;  // m: the applied matrix (W, or W^-1 for the inverse)
};

template <typename T>
SmallLU<T> small_parts(const at::Tensor& perm, const at::Tensor& lower, const at::Tensor& upper,
                       const at::Tensor& sign, const at::Tensor& log_s, bool inverse) {
  SmallLU<T> r;
  const int64_t c = lower.size(0);
  r.c = c;
  r.perm = host_vector<T>(perm);
  const auto lower_v = host_vector<T>(lower), upper_v = host_vector<T>(upper);
  const auto sign_v = host_vector<T>(sign), ls_v = host_vector<T>(log_s);
  r.scale.resize(c);
  for (int64_t i = 0; i < c; ++i) r.scale[i] = sign_v[i] * std::exp(ls_v[i]);
  r.lo.assign(c * c, T(0));
  r.up.assign(c * c, T(0));
  for (int64_t i = 0; i < c; ++i) {
    for (int64_t j = 0; j < c; ++j) {
      r.lo[i * c + j] = j < i ? lower_v[i * c + j] : T(i == j);
      r.up[i * c + j] = j > i ? upper_v[i * c + j] : (i == j ? r.scale[i] : T(0));
    }
  }
  auto w = small_matmul(r.perm, small_matmul(r.lo, r.up, c), c);
  if (inverse) {
    const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
    const auto inv = at::linalg_inv(at::from_blob(w.data(), {c, c}, opts)).contiguous();
    r.m.assign(inv.template const_data_ptr<T>(), inv.template const_data_ptr<T>() + c * c);
  } else {
    r.m = std::move(w);
  }
  return r;
}

// y[n] = m @ x[n] over (N, C, S) contiguous, math in T.
template <typename scalar_t, typename T>
void apply_rows(const std::vector<T>& m, const scalar_t* x, scalar_t* y, int64_t n, int64_t c, int64_t s) {
  using V = at::vec::Vectorized<T>;
  const int64_t blocks = (s + kPosBlock - 1) / kPosBlock;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, c * c * std::min(s, kPosBlock)));
  at::parallel_for(0, n * blocks, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> xs(c * kPosBlock), acc(4 * kPosBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / blocks, j0 = (task % blocks) * kPosBlock;
      const int64_t len = std::min(kPosBlock, s - j0);
      const scalar_t* xi = x + i * c * s + j0;
      for (int64_t k = 0; k < c; ++k)
        for (int64_t j = 0; j < len; ++j) xs[k * len + j] = static_cast<T>(xi[k * s + j]);
      // 4 output channels at a time share each load of x and give 4 independent FMA chains
      int64_t o = 0;
      for (; o + 4 <= c; o += 4) {
        const T* m0 = m.data() + o * c;
        int64_t j = 0;
        for (; j + V::size() <= len; j += V::size()) {
          V s0(T(0)), s1(T(0)), s2(T(0)), s3(T(0));
          for (int64_t k = 0; k < c; ++k) {
            const V xv = V::loadu(xs.data() + k * len + j);
            s0 = at::vec::fmadd(V(m0[k]), xv, s0);
            s1 = at::vec::fmadd(V(m0[c + k]), xv, s1);
            s2 = at::vec::fmadd(V(m0[2 * c + k]), xv, s2);
            s3 = at::vec::fmadd(V(m0[3 * c + k]), xv, s3);
          }
          s0.store(acc.data() + j);
          s1.store(acc.data() + kPosBlock + j);
          s2.store(acc.data() + 2 * kPosBlock + j);
          s3.store(acc.data() + 3 * kPosBlock + j);
        }
        for (; j < len; ++j) {
          for (int64_t q = 0; q < 4; ++q) {
            T sum = 0;
            for (int64_t k = 0; k < c; ++k) sum += m0[q * c + k] * xs[k * len + j];
            acc[q * kPosBlock + j] = sum;
          }
        }
        for (int64_t q = 0; q < 4; ++q) {
          scalar_t* yo = y + (i * c + o + q) * s + j0;
          for (j = 0; j < len; ++j) yo[j] = static_cast<scalar_t>(acc[q * kPosBlock + j]);
        }
      }
      for (; o < c; ++o) {
        const T* mo = m.data() + o * c;
        int64_t j = 0;
        for (; j + V::size() <= len; j += V::size()) {
          V sum(T(0));
          for (int64_t k = 0; k < c; ++k) sum = at::vec::fmadd(V(mo[k]), V::loadu(xs.data() + k * len + j), sum);
          sum.store(acc.data() + j);
        }
        for (; j < len; ++j) {
          T sum = 0;
          for (int64_t k = 0; k < c; ++k) sum += mo[k] * xs[k * len + j];
          acc[j] = sum;
        }
        scalar_t* yo = y + (i * c + o) * s + j0;
        for (j = 0; j < len; ++j) yo[j] = static_cast<scalar_t>(acc[j]);
      }
    }
  });
}

// vacc[(o + p) * c + k + q] += sum over the first `body` positions of g row o + p times x row k + q,
// for an NO x NK block of (output, input) channels held in registers (NO + NK loads per NO * NK FMAs).
template <int NO, int NK, typename T>
inline void wgrad_block(const T* gs, const T* xs, int64_t len, int64_t body, int64_t o, int64_t k, int64_t c,
                        at::vec::Vectorized<T>* vacc) {
  using V = at::vec::Vectorized<T>;
  V a[NO][NK];
  for (int p = 0; p < NO; ++p)
    for (int q = 0; q < NK; ++q) a[p][q] = vacc[(o + p) * c + k + q];
  for (int64_t j = 0; j < body; j += V::size()) {
    V gv[NO], xv[NK];
    for (int p = 0; p < NO; ++p) gv[p] = V::loadu(gs + (o + p) * len + j);
    for (int q = 0; q < NK; ++q) xv[q] = V::loadu(xs + (k + q) * len + j);
    for (int p = 0; p < NO; ++p)
      for (int q = 0; q < NK; ++q) a[p][q] = at::vec::fmadd(gv[p], xv[q], a[p][q]);
  }
  for (int p = 0; p < NO; ++p)
    for (int q = 0; q < NK; ++q) vacc[(o + p) * c + k + q] = a[p][q];
}

// sum_n G[n] X[n]^T (C x C) in fixed chunks of (sample, position block), added in order. Each
// chunk keeps one vector accumulator per (o, k) across its units and reduces it once at the end.
template <typename scalar_t, typename T>
std::vector<T> weight_grad(const scalar_t* g, const scalar_t* x, int64_t n, int64_t c, int64_t s) {
  using V = at::vec::Vectorized<T>;
  const int64_t blocks = (s + kPosBlock - 1) / kPosBlock, units = n * blocks;
  // enough chunks to share the work, few enough that their reductions stay cheap; a function
  // of the shape only, so the sum's order never depends on the thread count
  const int64_t work = n * s * c * c;
  const int64_t chunks = std::max<int64_t>(1, std::min({units, kGradChunks, work / (1 << 16)}));
  std::vector<T> partial(chunks * c * c, T(0));
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> gs(c * kPosBlock), xs(c * kPosBlock);
    std::vector<V> vacc(c * c);
    for (int64_t q = begin; q < end; ++q) {
      T* out = partial.data() + q * c * c;
      std::fill(vacc.begin(), vacc.end(), V(T(0)));
      for (int64_t unit = q * units / chunks; unit < (q + 1) * units / chunks; ++unit) {
        const int64_t i = unit / blocks, j0 = (unit % blocks) * kPosBlock;
        const int64_t len = std::min(kPosBlock, s - j0);
        for (int64_t k = 0; k < c; ++k) {
          for (int64_t j = 0; j < len; ++j) {
            gs[k * len + j] = static_cast<T>(g[(i * c + k) * s + j0 + j]);
            xs[k * len + j] = static_cast<T>(x[(i * c + k) * s + j0 + j]);
          }
        }
        const int64_t body = len - len % V::size();
        int64_t o = 0;
        for (; o + 4 <= c; o += 4) {
          int64_t k = 0;
          for (; k + 4 <= c; k += 4) wgrad_block<4, 4>(gs.data(), xs.data(), len, body, o, k, c, vacc.data());
          for (; k < c; ++k) wgrad_block<4, 1>(gs.data(), xs.data(), len, body, o, k, c, vacc.data());
        }
        for (; o < c; ++o) {
          int64_t k = 0;
          for (; k + 4 <= c; k += 4) wgrad_block<1, 4>(gs.data(), xs.data(), len, body, o, k, c, vacc.data());
          for (; k < c; ++k) wgrad_block<1, 1>(gs.data(), xs.data(), len, body, o, k, c, vacc.data());
        }
        if (body < len) {
          for (o = 0; o < c; ++o) {
            for (int64_t k = 0; k < c; ++k) {
              T tail = 0;
              for (int64_t j = body; j < len; ++j) tail += gs[o * len + j] * xs[k * len + j];
              out[o * c + k] += tail;
            }
          }
        }
      }
      for (int64_t e = 0; e < c * c; ++e)
        out[e] += at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, vacc[e]);
    }
  });
  std::vector<T> d_m(c * c);
  for (int64_t e = 0; e < c * c; ++e) {
    double total = 0;
    for (int64_t q = 0; q < chunks; ++q) total += static_cast<double>(partial[q * c * c + e]);
    d_m[e] = static_cast<T>(total);
  }
  return d_m;
}

template <typename T>
at::Tensor matrix_tensor(const std::vector<T>& v, int64_t rows, int64_t cols, at::ScalarType out) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  return at::from_blob(const_cast<T*>(v.data()), {rows, cols}, opts).to(out, false, true);
}

bool small_layer(const at::Tensor& x) {
  return x.size(1) <= kSmallC && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble ||
                                  x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16);
}

std::tuple<at::Tensor, at::Tensor> invconv_cpu(const at::Tensor& x_in, const at::Tensor& perm,
                                               const at::Tensor& lower, const at::Tensor& upper,
                                               const at::Tensor& sign, const at::Tensor& log_s, bool inverse) {
  check_invconv(x_in, perm, lower, upper, sign, log_s);
  if (!small_layer(x_in)) return invconv_forward(x_in, perm, lower, upper, sign, log_s, inverse);
  const auto x = x_in.contiguous();
  const ActnormShape sh(x);
  const int64_t n = sh.n, c = sh.c, s = sh.s;
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto t = opmath_dtype(x.scalar_type());
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "fastgen_invconv", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto parts = small_parts<T>(perm, lower, upper, sign, log_s, inverse);
    if (x.numel()) apply_rows<scalar_t, T>(parts.m, x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), n, c, s);
  });
  double total = 0;
  {
    const auto ls = log_s.to(at::kDouble).contiguous();
    const double* p = ls.const_data_ptr<double>();
    for (int64_t i = 0; i < c; ++i) total += p[i];
  }
  total *= inverse ? -static_cast<double>(s) : static_cast<double>(s);
  auto logdet = at::empty({n}, x.options().dtype(t));
  logdet.fill_(t == at::kDouble ? total : static_cast<double>(static_cast<float>(total)));
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> invconv_backward_cpu(
    const at::Tensor& gy_in, const at::Tensor& gl, const at::Tensor& x_in, const at::Tensor& perm,
    const at::Tensor& lower, const at::Tensor& upper, const at::Tensor& sign, const at::Tensor& log_s,
    bool inverse) {
  check_invconv(x_in, perm, lower, upper, sign, log_s);
  if (!small_layer(x_in)) return invconv_backward(gy_in, gl, x_in, perm, lower, upper, sign, log_s, inverse);
  check_invconv_grads(gy_in, gl, x_in);
  const auto x = x_in.contiguous(), gy = gy_in.contiguous();
  const ActnormShape sh(x);
  const int64_t n = sh.n, c = sh.c, s = sh.s;
  auto d_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto pt = log_s.scalar_type();
  at::Tensor d_lower, d_upper, d_ls;
  double gl_total = 0;
  {
    const auto g = gl.to(at::kDouble).contiguous();
    const double* p = g.const_data_ptr<double>();
    for (int64_t i = 0; i < n; ++i) gl_total += p[i];
  }
  gl_total *= inverse ? -static_cast<double>(s) : static_cast<double>(s);
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "fastgen_invconv_backward", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto parts = small_parts<T>(perm, lower, upper, sign, log_s, inverse);
    const auto mt = small_transpose(parts.m, c);
    std::vector<T> d_m(c * c, T(0));
    if (x.numel()) {
      apply_rows<scalar_t, T>(mt, gy.const_data_ptr<scalar_t>(), d_x.mutable_data_ptr<scalar_t>(), n, c, s);
      d_m = weight_grad<scalar_t, T>(gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), n, c, s);
    }
    std::vector<T> d_w = d_m;  // d W = d M, or -M^T d M M^T for the inverse
    if (inverse) {
      d_w = small_matmul(small_matmul(mt, d_m, c), mt, c);
      for (auto& v : d_w) v = -v;
    }
    const auto a = small_matmul(small_transpose(parts.perm, c), d_w, c);  // P^T d W
    auto dl = small_matmul(a, small_transpose(parts.up, c), c);          // d L = A U^T
    auto du = small_matmul(small_transpose(parts.lo, c), a, c);          // d U = L^T A
    std::vector<T> dls(c);
    for (int64_t i = 0; i < c; ++i) {
      dls[i] = du[i * c + i] * parts.scale[i] + static_cast<T>(gl_total);
      for (int64_t j = 0; j < c; ++j) {
        if (j >= i) dl[i * c + j] = T(0);
        if (j <= i) du[i * c + j] = T(0);
      }
    }
    d_lower = matrix_tensor(dl, c, c, pt);
    d_upper = matrix_tensor(du, c, c, pt);
    d_ls = matrix_tensor(dls, 1, c, pt).view({c});
  });
  return {d_x, d_lower, d_upper, d_ls};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("invertible_conv1x1_native", &invconv_cpu);
  m.impl("invertible_conv1x1_backward_native", &invconv_backward_cpu);
}

}  // namespace fastgen
