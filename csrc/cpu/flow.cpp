// CPU kernels for the normalizing-flow ops (math in csrc/common/flow.h).
// Element-wise work is split into (sample, chunk) tasks so a few large samples still use every
// core; per-sample sums come from per-task partials added in a fixed order, so results do not
// depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace fastgen {
// SIMD overloads of the shared formulas' primitives (Sleef), declared before common/flow.h so
// its templates find them.
template <typename T>
inline at::vec::Vectorized<T> fexp(const at::vec::Vectorized<T>& x) { return x.exp(); }
template <typename T>
inline at::vec::Vectorized<T> flog1p(const at::vec::Vectorized<T>& x) { return x.log1p(); }
template <typename T>
inline at::vec::Vectorized<T> ftanh(const at::vec::Vectorized<T>& x) { return x.tanh(); }
template <typename T>
inline at::vec::Vectorized<T> fatan(const at::vec::Vectorized<T>& x) { return x.atan(); }
template <typename T>
inline at::vec::Vectorized<T> vabs(const at::vec::Vectorized<T>& x) { return x.abs(); }
template <typename T>
inline at::vec::Vectorized<T> vmin(const at::vec::Vectorized<T>& a, const at::vec::Vectorized<T>& b) {
  return at::vec::minimum(a, b);
}
template <typename T>
inline at::vec::Vectorized<T> vmax(const at::vec::Vectorized<T>& a, const at::vec::Vectorized<T>& b) {
  return at::vec::maximum(a, b);
}
}  // namespace fastgen

#include "common/flow_host.h"
#include "cpu/vec_lanes.h"

namespace fastgen {
namespace {

constexpr int64_t kChunk = 1 << 14;  // elements per task
constexpr int64_t kBlock = 512;      // elements per float accumulator flush (keeps sums accurate)

struct Tiling {
  int64_t rows, cols, chunks_per_row, tasks, grain;
  explicit Tiling(const at::Tensor& t) {
    rows = t.size(0);
    cols = rows == 0 ? 0 : t.numel() / rows;
    chunks_per_row = std::max<int64_t>(1, (cols + kChunk - 1) / kChunk);
    tasks = rows * chunks_per_row;
    grain = std::max<int64_t>(1, kChunk / std::max<int64_t>(1, std::min(cols, kChunk)));
  }
  int64_t row(int64_t task) const { return task / chunks_per_row; }
  int64_t offset(int64_t task) const { return row(task) * cols + (task % chunks_per_row) * kChunk; }
  int64_t length(int64_t task) const { return std::min(kChunk, cols - (task % chunks_per_row) * kChunk); }

  // out[r] = sign * sum of the row's partials, in chunk order.
  void reduce_rows(const std::vector<double>& partial, at::Tensor& out, double sign) const {
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fastgen_reduce_rows", [&] {
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      for (int64_t r = 0; r < rows; ++r) {
        double s = 0;
        for (int64_t c = 0; c < chunks_per_row; ++c) s += partial[r * chunks_per_row + c];
        o[r] = static_cast<scalar_t>(sign * s);
      }
    });
  }
};

// -- affine coupling ----------------------------------------------------------------------------

// y for n elements; returns the sum of log s over them.
template <int FN, bool INVERSE, typename scalar_t>
double coupling_forward_span(const scalar_t* x, const scalar_t* t, const scalar_t* r, scalar_t* y,
                             int64_t n, double clamp) {
  using L = VecLanes<scalar_t>;
  using opmath_t = typename L::opmath_t;
  using VecM = typename L::VecM;
  const CouplingParams<VecM> pv(static_cast<opmath_t>(clamp));
  const CouplingParams<opmath_t> ps(static_cast<opmath_t>(clamp));
  double total = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    VecM acc(opmath_t(0));
    opmath_t tail = 0;
    int64_t i = b0;
    for (; i + L::step <= b1; i += L::step) {
      VecM xv[L::parts], tv[L::parts], rv[L::parts], out[L::parts];
      L::load(x + i, xv);
      L::load(t + i, tv);
      L::load(r + i, rv);
      for (int p = 0; p < L::parts; ++p) {
        VecM ls;
        out[p] = coupling_forward<FN, INVERSE>(xv[p], tv[p], rv[p], pv, &ls);
        acc = acc + ls;
      }
      L::store(y + i, out);
    }
    for (; i < b1; ++i) {
      opmath_t ls;
      y[i] = static_cast<scalar_t>(coupling_forward<FN, INVERSE, opmath_t>(x[i], t[i], r[i], ps, &ls));
      tail += ls;
    }
    total += static_cast<double>(L::sum(acc) + tail);
  }
  return total;
}

template <int FN, bool INVERSE, typename scalar_t>
void coupling_backward_span(const scalar_t* gy, double gl, const scalar_t* x, const scalar_t* t,
                            const scalar_t* r, scalar_t* dx, scalar_t* dr, int64_t n, double clamp) {
  using L = VecLanes<scalar_t>;
  using opmath_t = typename L::opmath_t;
  using VecM = typename L::VecM;
  const CouplingParams<VecM> pv(static_cast<opmath_t>(clamp));
  const CouplingParams<opmath_t> ps(static_cast<opmath_t>(clamp));
  const opmath_t g = static_cast<opmath_t>(gl);
  const VecM gv(g);
  int64_t i = 0;
  for (; i + L::step <= n; i += L::step) {
    VecM gyv[L::parts], xv[L::parts], tv[L::parts], rv[L::parts], ox[L::parts], orr[L::parts];
    L::load(gy + i, gyv);
    L::load(x + i, xv);
    L::load(r + i, rv);
    if constexpr (INVERSE) L::load(t + i, tv);  // the forward direction never reads shift
    for (int p = 0; p < L::parts; ++p)
      coupling_backward<FN, INVERSE>(gyv[p], gv, xv[p], INVERSE ? tv[p] : xv[p], rv[p], pv, &ox[p], &orr[p]);
    L::store(dx + i, ox);
    L::store(dr + i, orr);
  }
  for (; i < n; ++i) {
    opmath_t a, b;
    const opmath_t ti = INVERSE ? static_cast<opmath_t>(t[i]) : opmath_t(0);
    coupling_backward<FN, INVERSE, opmath_t>(gy[i], g, x[i], ti, r[i], ps, &a, &b);
    dx[i] = static_cast<scalar_t>(a);
    dr[i] = static_cast<scalar_t>(b);
  }
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_cpu(const at::Tensor& x_in, const at::Tensor& t_in,
                                                       const at::Tensor& r_in, c10::string_view scale_fn,
                                                       double clamp, bool inverse) {
  check_coupling(x_in, t_in, r_in, clamp);
  const int fn = parse_scale_fn(scale_fn);
  const auto x = x_in.contiguous(), t = t_in.contiguous(), r = r_in.contiguous();
  const Tiling tl(x);
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto logdet = at::empty({tl.rows}, x.options().dtype(opmath_dtype(x.scalar_type())));
  if (tl.rows == 0) return {y, logdet};
  std::vector<double> partial(tl.tasks, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_coupling_cpu", [&] {
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pt = t.const_data_ptr<scalar_t>();
    const scalar_t* pr = r.const_data_ptr<scalar_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    dispatch_coupling(fn, inverse, [&](auto fn_c, auto inv_c) {
      at::parallel_for(0, tl.tasks, tl.grain, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t off = tl.offset(task);
          partial[task] = coupling_forward_span<decltype(fn_c)::value, decltype(inv_c)::value>(
              px + off, pt + off, pr + off, py + off, tl.length(task), clamp);
        }
      });
    });
  });
  tl.reduce_rows(partial, logdet, inverse ? -1.0 : 1.0);
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_backward_cpu(
    const at::Tensor& gy_in, const at::Tensor& gl_in, const at::Tensor& x_in, const at::Tensor& t_in,
    const at::Tensor& r_in, c10::string_view scale_fn, double clamp, bool inverse) {
  check_coupling(x_in, t_in, r_in, clamp);
  check_same_float_tensor(x_in, "x_b", gy_in, "grad_y");
  check_per_sample(x_in, "x_b", gl_in, "grad_logdet");
  const int fn = parse_scale_fn(scale_fn);
  const auto x = x_in.contiguous(), t = t_in.contiguous(), r = r_in.contiguous();
  const auto gy = gy_in.contiguous();
  const auto gl = gl_in.to(at::kDouble).contiguous();
  const Tiling tl(x);
  auto dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto dr = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (tl.rows == 0) return {dx, dr};
  const double* pg = gl.const_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_coupling_backward_cpu", [&] {
    const scalar_t* pgy = gy.const_data_ptr<scalar_t>();
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pt = t.const_data_ptr<scalar_t>();
    const scalar_t* pr = r.const_data_ptr<scalar_t>();
    scalar_t* pdx = dx.mutable_data_ptr<scalar_t>();
    scalar_t* pdr = dr.mutable_data_ptr<scalar_t>();
    dispatch_coupling(fn, inverse, [&](auto fn_c, auto inv_c) {
      at::parallel_for(0, tl.tasks, tl.grain, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t off = tl.offset(task);
          coupling_backward_span<decltype(fn_c)::value, decltype(inv_c)::value>(
              pgy + off, pg[tl.row(task)], px + off, pt + off, pr + off, pdx + off, pdr + off,
              tl.length(task), clamp);
        }
      });
    });
  });
  return {dx, dr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("affine_coupling_native", &affine_coupling_cpu);
  m.impl("affine_coupling_backward_native", &affine_coupling_backward_cpu);
}

}  // namespace fastgen
