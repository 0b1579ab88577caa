// CPU kernels for bias_act (math in csrc/common/gan.h, argument checks in csrc/common/gan_host.h).
//
// bias_act views x as (outer, C, inner), C = x.shape[dim]. When inner == 1 (a linear layer's
// (N, C) output) a row is one sample's C channels and the bias is a vector across SIMD lanes;
// otherwise a row is one (sample, channel) plane of `inner` elements and the bias a scalar.
// dbias is summed from per-task partials in a fixed order: results do not depend on the
// thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>
#include <vector>

namespace fastgen {
// SIMD overloads of the primitives the shared templates in common/*.h call; declared first so
// the templates see them (see the note in common/gan.h).
template <typename T>
inline at::vec::Vectorized<T> fexp(const at::vec::Vectorized<T>& x) { return x.exp(); }
template <typename T>
inline at::vec::Vectorized<T> ferf(const at::vec::Vectorized<T>& x) { return x.erf(); }
template <typename T>
inline at::vec::Vectorized<T> fselect_pos(const at::vec::Vectorized<T>& y, const at::vec::Vectorized<T>& pos,
                                          const at::vec::Vectorized<T>& other) {
  return at::vec::Vectorized<T>::blendv(other, pos, y > at::vec::Vectorized<T>(T(0)));
}
template <typename T>
inline at::vec::Vectorized<T> fselect_nonpos(const at::vec::Vectorized<T>& y, const at::vec::Vectorized<T>& nonpos,
                                             const at::vec::Vectorized<T>& other) {
  return at::vec::Vectorized<T>::blendv(other, nonpos, y <= at::vec::Vectorized<T>(T(0)));
}
}  // namespace fastgen

#include "cpu/vec_lanes.h"
#include "common/checks.h"
#include "common/dispatch.h"
#include "common/gan_host.h"
#include "common/gan.h"

namespace fastgen {
namespace {

// fp16/bf16 widen to two fp32 vectors (csrc/cpu/vec_lanes.h)
template <typename scalar_t>
using Lanes = VecLanes<scalar_t>;

// Bias in the math type (zeros when absent), so the inner loops never convert it.
template <typename opmath_t>
std::vector<opmath_t> math_bias(const std::optional<at::Tensor>& bias, int64_t channels) {
  std::vector<opmath_t> out(channels, opmath_t(0));
  if (bias.has_value()) {
    const at::Tensor b = bias->to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    std::copy(b.const_data_ptr<opmath_t>(), b.const_data_ptr<opmath_t>() + channels, out.begin());
  }
  return out;
}

// One row of n elements. kVecBias: bias[i] per element; else the scalar *bias for the row.
// Backward (grad != nullptr) writes dx to `out` and returns the row's sum of dx.
template <Act A, bool kVecBias, bool kBackward, typename scalar_t>
double act_row(const scalar_t* grad, const scalar_t* x, scalar_t* out, int64_t n,
               const at::opmath_type<scalar_t>* bias, at::opmath_type<scalar_t> alpha,
               at::opmath_type<scalar_t> gain, at::opmath_type<scalar_t>* lane_acc) {
  using L = Lanes<scalar_t>;
  using opmath_t = typename L::opmath_t;
  using VecM = typename L::VecM;
  constexpr int64_t kFlush = 1024;  // dx sums flush to double this often (accuracy on long rows)
  const VecM va(alpha), vg(gain), vb_scalar(kVecBias ? opmath_t(0) : *bias);
  double total = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kFlush) {
    const int64_t b1 = std::min(n, b0 + kFlush);
    VecM acc(opmath_t(0));
    opmath_t tail = 0;
    int64_t i = b0;
    for (; i + L::step <= b1; i += L::step) {
      VecM y[L::parts], g[L::parts], r[L::parts];
      L::load(x + i, y);
      if constexpr (kBackward) L::load(grad + i, g);
      for (int p = 0; p < L::parts; ++p) {
        const VecM yb = y[p] + (kVecBias ? VecM::loadu(bias + i + p * VecM::size()) : vb_scalar);
        if constexpr (kBackward) {
          r[p] = g[p] * act_slope<A>(yb, va) * vg;
          if constexpr (kVecBias) {
            opmath_t* la = lane_acc + i + p * VecM::size();
            (VecM::loadu(la) + r[p]).store(la);
          } else {
            acc = acc + r[p];
          }
        } else {
          r[p] = act_forward<A>(yb, va) * vg;
        }
      }
      L::store(out + i, r);
    }
    for (; i < b1; ++i) {
      const opmath_t yb = static_cast<opmath_t>(x[i]) + (kVecBias ? bias[i] : *bias);
      if constexpr (kBackward) {
        const opmath_t d = static_cast<opmath_t>(grad[i]) * act_slope<A>(yb, alpha) * gain;
        out[i] = static_cast<scalar_t>(d);
        if constexpr (kVecBias) lane_acc[i] += d; else tail += d;
      } else {
        out[i] = static_cast<scalar_t>(act_forward<A>(yb, alpha) * gain);
      }
    }
    if constexpr (kBackward && !kVecBias) {
      total += static_cast<double>(
          at::vec::vec_reduce_all<opmath_t>([](VecM a, VecM b) { return a + b; }, acc) + tail);
    }
  }
  return total;
}

constexpr int64_t kWork = 1 << 15;      // elements per parallel task (at least)
constexpr int64_t kRowsPerTask = 64;    // (N, C) layout: samples per dbias partial

at::Tensor bias_act_cpu(const at::Tensor& x_in, const std::optional<at::Tensor>& bias, c10::string_view act,
                        double alpha, double gain, int64_t dim) {
  check_bias_act(x_in, bias, act, alpha, gain, dim);
  const auto x = x_in.contiguous();
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return out;
  const ChannelView v(x, dim);
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "bias_act_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto b = math_bias<opmath_t>(bias, v.channels);
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const opmath_t a = static_cast<opmath_t>(alpha), g = static_cast<opmath_t>(gain);
    dispatch_act(act, [&](auto tag) {
      constexpr Act A = decltype(tag)::value;
      if (v.inner == 1) {
        const int64_t len = v.channels;
        at::parallel_for(0, v.outer, std::max<int64_t>(1, kWork / len), [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r)
            act_row<A, true, false, scalar_t>(nullptr, px + r * len, po + r * len, len, b.data(), a, g, nullptr);
        });
      } else {
        const int64_t len = v.inner;
        at::parallel_for(0, v.outer * v.channels, std::max<int64_t>(1, kWork / len), [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r)
            act_row<A, false, false, scalar_t>(nullptr, px + r * len, po + r * len, len, &b[r % v.channels], a, g,
                                               nullptr);
        });
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> bias_act_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                         const std::optional<at::Tensor>& bias,
                                                         c10::string_view act, double alpha, double gain,
                                                         int64_t dim) {
  check_bias_act_backward(grad_in, x_in, bias, act, alpha, gain, dim);
  const auto x = x_in.contiguous(), grad = grad_in.contiguous();
  auto dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const ChannelView v(x, dim);
  const bool want_db = bias.has_value();
  auto db = want_db ? at::zeros_like(*bias) : at::empty({0}, x.options());
  if (x.numel() == 0) return {dx, db};
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "bias_act_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto b = math_bias<opmath_t>(bias, v.channels);
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pg = grad.const_data_ptr<scalar_t>();
    scalar_t* pd = dx.mutable_data_ptr<scalar_t>();
    const opmath_t a = static_cast<opmath_t>(alpha), g = static_cast<opmath_t>(gain);
    std::vector<double> sums(v.channels, 0.0);
    dispatch_act(act, [&](auto tag) {
      constexpr Act A = decltype(tag)::value;
      if (v.inner == 1) {
        // Fixed blocks of `rows_per_task` samples, each with its own per-channel partial. The block
        // depends on the shape only (dbias is the same for any thread count), and is small enough
        // that a (64, 1024) activation still spreads over the cores.
        const int64_t len = v.channels;
        const int64_t rows_per_task = std::clamp<int64_t>(kWork / len, 1, kRowsPerTask);
        const int64_t tasks = (v.outer + rows_per_task - 1) / rows_per_task;
        std::vector<opmath_t> partial(want_db ? tasks * len : 0, opmath_t(0));
        at::parallel_for(0, tasks, std::max<int64_t>(1, kWork / (len * rows_per_task)), [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t) {
            opmath_t* acc = want_db ? partial.data() + t * len : nullptr;
            std::vector<opmath_t> scratch(want_db ? 0 : len);
            for (int64_t r = t * rows_per_task; r < std::min(v.outer, (t + 1) * rows_per_task); ++r)
              act_row<A, true, true, scalar_t>(pg + r * len, px + r * len, pd + r * len, len, b.data(), a, g,
                                               acc ? acc : scratch.data());
          }
        });
        for (int64_t t = 0; t < (want_db ? tasks : 0); ++t)
          for (int64_t c = 0; c < len; ++c) sums[c] += partial[t * len + c];
      } else {
        const int64_t len = v.inner, rows = v.outer * v.channels;
        std::vector<double> partial(rows, 0.0);
        at::parallel_for(0, rows, std::max<int64_t>(1, kWork / len), [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r)
            partial[r] = act_row<A, false, true, scalar_t>(pg + r * len, px + r * len, pd + r * len, len,
                                                           &b[r % v.channels], a, g, nullptr);
        });
        for (int64_t r = 0; r < rows; ++r) sums[r % v.channels] += partial[r];
      }
    });
    if (want_db) {
      auto dbd = at::from_blob(sums.data(), {v.channels}, at::TensorOptions().dtype(at::kDouble));
      db.copy_(dbd);
    }
  });
  return {dx, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("bias_act_native", &bias_act_cpu);
  m.impl("bias_act_backward_native", &bias_act_backward_cpu);
}

}  // namespace fastgen
