// CPU kernels for the normalizing-flow ops: affine coupling, actnorm, invertible_conv1x1 and
// flow_nll (math in csrc/common/flow.h and csrc/common/invconv_host.h).
// Element-wise work is split into (sample, chunk) tasks so a few large samples still use every
// core; per-sample sums come from per-task partials added in a fixed order, so results do not
// depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace fastgen {
// SIMD overloads of the shared formulas' primitives (Sleef), declared before common/flow.h so
// its templates find them.
template <typename T>
inline at::vec::Vectorized<T> fexp(const at::vec::Vectorized<T>& x) { return x.exp(); }
// log1p of the sigmoid's exp(-|u|) in (0, 1]: Sleef's float log1p costs three exps here, so
// floats use Goldberg's log(1 + x) * x / ((1 + x) - 1), exact to a few ulps; doubles keep log1p.
inline at::vec::Vectorized<float> flog1p(const at::vec::Vectorized<float>& x) {
  using V = at::vec::Vectorized<float>;
  const V one(1.0f);
  const V u = one + x;
  const V den = u - one;
  const V safe = V::blendv(den, one, den == V(0.0f));
  return V::blendv(u.log() * (x / safe), x, den == V(0.0f));
}
inline at::vec::Vectorized<double> flog1p(const at::vec::Vectorized<double>& x) { return x.log1p(); }
template <typename T>
inline at::vec::Vectorized<T> ftanh(const at::vec::Vectorized<T>& x) { return x.tanh(); }
template <typename T>
inline at::vec::Vectorized<T> fatan(const at::vec::Vectorized<T>& x) { return x.atan(); }
template <typename T>
inline at::vec::Vectorized<T> vselect_nonneg(const at::vec::Vectorized<T>& u, const at::vec::Vectorized<T>& a,
                                             const at::vec::Vectorized<T>& b) {
  return at::vec::Vectorized<T>::blendv(b, a, u >= at::vec::Vectorized<T>(T(0)));
}
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

#include "common/dispatch.h"
#include "common/flow_host.h"
#include "common/invconv_host.h"
#include "cpu/row_tiling.h"
#include "cpu/vec_lanes.h"

namespace fastgen {
namespace {

constexpr int64_t kChunk = RowTasks::kChunk;  // elements per task
constexpr int64_t kBlock = 512;      // elements per float accumulator flush (keeps sums accurate)

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
  const int fn = check_coupling(x_in, t_in, r_in, scale_fn, clamp);
  const auto x = x_in.contiguous(), t = t_in.contiguous(), r = r_in.contiguous();
  const RowTasks tl(x);
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto logdet = at::empty({tl.rows}, x.options().dtype(opmath_dtype(x.scalar_type())));
  if (tl.rows == 0) return {y, logdet};
  std::vector<double> partial(tl.tasks, 0.0);
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "affine_coupling_cpu", [&] {
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
  const int fn = check_coupling_backward(gy_in, gl_in, x_in, t_in, r_in, scale_fn, clamp);
  const auto x = x_in.contiguous(), t = t_in.contiguous(), r = r_in.contiguous();
  const auto gy = gy_in.contiguous();
  const auto gl = gl_in.to(at::kDouble).contiguous();
  const RowTasks tl(x);
  auto dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto dr = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (tl.rows == 0) return {dx, dr};
  const double* pg = gl.const_data_ptr<double>();
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "affine_coupling_backward_cpu", [&] {
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

// -- actnorm ------------------------------------------------------------------------------------
// Two layouts of x viewed as (N, C, S): NCHW planes (S > 1) are SIMD over s, one task per
// (n, c) plane; (N, D) rows (S == 1) are SIMD over the channels, tasks over blocks of rows.
// Backward per-channel sums of g and g * x: one partial per plane / row block, added over n
// (blocks) in a fixed order.

template <bool INVERSE, typename scalar_t>
void actnorm_plane(const scalar_t* x, scalar_t* y, int64_t n, at::opmath_type<scalar_t> loc,
                   at::opmath_type<scalar_t> scale) {
  using L = VecLanes<scalar_t>;
  using VecM = typename L::VecM;
  const VecM lv(loc), sv(scale);
  int64_t i = 0;
  for (; i + L::step <= n; i += L::step) {
    VecM xv[L::parts], out[L::parts];
    L::load(x + i, xv);
    for (int p = 0; p < L::parts; ++p) out[p] = actnorm_forward<INVERSE>(xv[p], lv, sv);
    L::store(y + i, out);
  }
  for (; i < n; ++i) y[i] = static_cast<scalar_t>(actnorm_forward<INVERSE>(
      static_cast<at::opmath_type<scalar_t>>(x[i]), loc, scale));
}

// dx of one plane; returns (sum g, sum g * x).
template <typename scalar_t>
std::pair<double, double> actnorm_plane_backward(const scalar_t* g, const scalar_t* x, scalar_t* dx,
                                                 int64_t n, at::opmath_type<scalar_t> scale) {
  using L = VecLanes<scalar_t>;
  using opmath_t = typename L::opmath_t;
  using VecM = typename L::VecM;
  const VecM sv(scale);
  double sum_g = 0, sum_gx = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    VecM ag(opmath_t(0)), agx(opmath_t(0));
    opmath_t tg = 0, tgx = 0;
    int64_t i = b0;
    for (; i + L::step <= b1; i += L::step) {
      VecM gv[L::parts], xv[L::parts], out[L::parts];
      L::load(g + i, gv);
      L::load(x + i, xv);
      for (int p = 0; p < L::parts; ++p) {
        out[p] = gv[p] * sv;
        ag = ag + gv[p];
        agx = agx + gv[p] * xv[p];
      }
      L::store(dx + i, out);
    }
    for (; i < b1; ++i) {
      const opmath_t gi = g[i];
      dx[i] = static_cast<scalar_t>(gi * scale);
      tg += gi;
      tgx += gi * static_cast<opmath_t>(x[i]);
    }
    sum_g += static_cast<double>(L::sum(ag) + tg);
    sum_gx += static_cast<double>(L::sum(agx) + tgx);
  }
  return {sum_g, sum_gx};
}

// One row of an (N, D) input; with `sums`, also accumulates g and g * x per channel.
template <bool INVERSE, bool BACKWARD, typename scalar_t>
void actnorm_row(const scalar_t* in, const scalar_t* x, scalar_t* out, int64_t c,
                 const at::opmath_type<scalar_t>* loc, const at::opmath_type<scalar_t>* scale,
                 at::opmath_type<scalar_t>* sum_g, at::opmath_type<scalar_t>* sum_gx) {
  using L = VecLanes<scalar_t>;
  using opmath_t = typename L::opmath_t;
  using VecM = typename L::VecM;
  constexpr int64_t m = VecM::size();
  int64_t i = 0;
  for (; i + L::step <= c; i += L::step) {
    VecM iv[L::parts], res[L::parts];
    L::load(in + i, iv);
    for (int p = 0; p < L::parts; ++p) {
      const VecM sv = VecM::loadu(scale + i + p * m);
      if constexpr (BACKWARD) {
        res[p] = iv[p] * sv;
      } else {
        res[p] = actnorm_forward<INVERSE>(iv[p], VecM::loadu(loc + i + p * m), sv);
      }
    }
    L::store(out + i, res);
    if constexpr (BACKWARD) {
      VecM xv[L::parts];
      L::load(x + i, xv);
      for (int p = 0; p < L::parts; ++p) {
        (VecM::loadu(sum_g + i + p * m) + iv[p]).store(sum_g + i + p * m);
        (VecM::loadu(sum_gx + i + p * m) + iv[p] * xv[p]).store(sum_gx + i + p * m);
      }
    }
  }
  for (; i < c; ++i) {
    const opmath_t v = in[i];
    if constexpr (BACKWARD) {
      out[i] = static_cast<scalar_t>(v * scale[i]);
      sum_g[i] += v;
      sum_gx[i] += v * static_cast<opmath_t>(x[i]);
    } else {
      out[i] = static_cast<scalar_t>(actnorm_forward<INVERSE>(v, loc[i], scale[i]));
    }
  }
}

struct RowBlocks {
  int64_t rows_per_task, tasks;
  RowBlocks(int64_t n, int64_t c)
      : rows_per_task(std::max<int64_t>(1, kChunk / std::max<int64_t>(1, c))),
        tasks((n + rows_per_task - 1) / rows_per_task) {}
};

// Per-channel math-type scale (exp(+-log_scale)) and loc, and sum(log_scale) in double: plain
// loops, because on the small activations of a Glow step a handful of ATen calls on C-vectors
// cost as much as the kernel.
template <typename scalar_t>
struct ActnormChannels {
  using opmath_t = at::opmath_type<scalar_t>;
  std::vector<opmath_t> scale, loc;
  double log_scale_sum = 0;
  ActnormChannels(const at::Tensor& loc_in, const at::Tensor& ls_in, bool inverse) {
    const auto l = loc_in.contiguous(), ls = ls_in.contiguous();
    const scalar_t* pl = l.const_data_ptr<scalar_t>();
    const scalar_t* ps = ls.const_data_ptr<scalar_t>();
    const int64_t c = ls.numel();
    scale.resize(c);
    loc.resize(c);
    for (int64_t i = 0; i < c; ++i) {
      const opmath_t v = static_cast<opmath_t>(ps[i]);
      scale[i] = fexp(inverse ? -v : v);
      loc[i] = static_cast<opmath_t>(pl[i]);
      log_scale_sum += static_cast<double>(v);
    }
  }
};

std::tuple<at::Tensor, at::Tensor> actnorm_cpu(const at::Tensor& x_in, const at::Tensor& loc_in,
                                               const at::Tensor& ls_in, bool inverse) {
  check_actnorm(x_in, loc_in, ls_in);
  const ActnormShape sh(x_in);
  const auto x = x_in.contiguous();
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto logdet = at::empty({sh.n}, x.options().dtype(opmath_dtype(x.scalar_type())));
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "actnorm_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const ActnormChannels<scalar_t> ch(loc_in, ls_in, inverse);
    const opmath_t total = static_cast<opmath_t>((inverse ? -1.0 : 1.0) * static_cast<double>(sh.s) * ch.log_scale_sum);
    std::fill_n(logdet.mutable_data_ptr<opmath_t>(), sh.n, total);
    if (x.numel() == 0) return;
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    const opmath_t* ps = ch.scale.data();
    const opmath_t* pl = ch.loc.data();
    auto run = [&](auto inv_c) {
      constexpr bool INV = decltype(inv_c)::value;
      if (sh.s > 1) {
        at::parallel_for(0, sh.n * sh.c, std::max<int64_t>(1, kChunk / sh.s), [&](int64_t b, int64_t e) {
          for (int64_t plane = b; plane < e; ++plane) {
            const int64_t c = plane % sh.c;
            actnorm_plane<INV>(px + plane * sh.s, py + plane * sh.s, sh.s, pl[c], ps[c]);
          }
        });
      } else {
        const RowBlocks rb(sh.n, sh.c);
        at::parallel_for(0, rb.tasks, 1, [&](int64_t b, int64_t e) {
          for (int64_t task = b; task < e; ++task)
            for (int64_t r = task * rb.rows_per_task; r < std::min(sh.n, (task + 1) * rb.rows_per_task); ++r)
              actnorm_row<INV, false, scalar_t>(px + r * sh.c, nullptr, py + r * sh.c, sh.c, pl, ps, nullptr, nullptr);
        });
      }
    };
    if (inverse) run(std::true_type{});
    else run(std::false_type{});
  });
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> actnorm_backward_cpu(
    const at::Tensor& gy_in, const at::Tensor& gl_in, const at::Tensor& x_in, const at::Tensor& loc_in,
    const at::Tensor& ls_in, bool inverse) {
  check_actnorm_backward(gy_in, gl_in, x_in, loc_in, ls_in);
  const ActnormShape sh(x_in);
  const auto x = x_in.contiguous(), gy = gy_in.contiguous();
  auto dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto d_loc = at::empty_like(loc_in, at::MemoryFormat::Contiguous);
  auto d_ls = at::empty_like(ls_in, at::MemoryFormat::Contiguous);
  const auto gl = gl_in.to(at::kDouble).contiguous();
  double gl_total = 0;
  for (int64_t i = 0; i < sh.n; ++i) gl_total += gl.const_data_ptr<double>()[i];
  gl_total *= static_cast<double>(sh.s);
  std::vector<double> sum_g(sh.c, 0.0), sum_gx(sh.c, 0.0);
  FASTGEN_DISPATCH_FLOATS(x.scalar_type(), "actnorm_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const ActnormChannels<scalar_t> ch(loc_in, ls_in, inverse);
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pg = gy.const_data_ptr<scalar_t>();
    scalar_t* pdx = dx.mutable_data_ptr<scalar_t>();
    const opmath_t* ps = ch.scale.data();
    if (x.numel() == 0) {
    } else if (sh.s > 1) {
      std::vector<std::pair<double, double>> partial(sh.n * sh.c);
      at::parallel_for(0, sh.n * sh.c, std::max<int64_t>(1, kChunk / sh.s), [&](int64_t b, int64_t e) {
        for (int64_t plane = b; plane < e; ++plane)
          partial[plane] = actnorm_plane_backward(pg + plane * sh.s, px + plane * sh.s,
                                                  pdx + plane * sh.s, sh.s, ps[plane % sh.c]);
      });
      for (int64_t n = 0; n < sh.n; ++n)
        for (int64_t c = 0; c < sh.c; ++c) {
          sum_g[c] += partial[n * sh.c + c].first;
          sum_gx[c] += partial[n * sh.c + c].second;
        }
    } else {
      const RowBlocks rb(sh.n, sh.c);
      std::vector<opmath_t> acc(rb.tasks * sh.c * 2, opmath_t(0));
      at::parallel_for(0, rb.tasks, 1, [&](int64_t b, int64_t e) {
        for (int64_t task = b; task < e; ++task) {
          opmath_t* ag = acc.data() + task * sh.c * 2;
          for (int64_t r = task * rb.rows_per_task; r < std::min(sh.n, (task + 1) * rb.rows_per_task); ++r)
            actnorm_row<false, true, scalar_t>(pg + r * sh.c, px + r * sh.c, pdx + r * sh.c, sh.c, nullptr, ps,
                                               ag, ag + sh.c);
        }
      });
      for (int64_t task = 0; task < rb.tasks; ++task)
        for (int64_t c = 0; c < sh.c; ++c) {
          sum_g[c] += acc[task * sh.c * 2 + c];
          sum_gx[c] += acc[task * sh.c * 2 + sh.c + c];
        }
    }
    // finishing, as kernels/flow.py:actnorm_finish:
    //   forward: d loc = s * sum g,  d log_scale = s * (sum g x + loc * sum g) + S * sum_b gl
    //   inverse: d loc = -sum g,     d log_scale = -(1/s) * sum g x - S * sum_b gl
    scalar_t* o_loc = d_loc.mutable_data_ptr<scalar_t>();
    scalar_t* o_ls = d_ls.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < sh.c; ++c) {
      const double f = ch.scale[c];
      if (inverse) {
        o_loc[c] = static_cast<scalar_t>(-sum_g[c]);
        o_ls[c] = static_cast<scalar_t>(-f * sum_gx[c] - gl_total);
      } else {
        o_loc[c] = static_cast<scalar_t>(f * sum_g[c]);
        o_ls[c] = static_cast<scalar_t>(f * (sum_gx[c] + static_cast<double>(ch.loc[c]) * sum_g[c]) + gl_total);
      }
    }
  });
  return {dx, d_loc, d_ls};
}

// -- flow NLL -----------------------------------------------------------------------------------

template <int PRIOR, typename scalar_t>
double prior_terms_span(const scalar_t* z, int64_t n) {
  using L = VecLanes<scalar_t>;
  using opmath_t = typename L::opmath_t;
  using VecM = typename L::VecM;
  const PriorConsts<VecM> kv(opmath_t(0));
  const PriorConsts<opmath_t> ks(opmath_t(0));
  double total = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    VecM acc(opmath_t(0));
    opmath_t tail = 0;
    int64_t i = b0;
    for (; i + L::step <= b1; i += L::step) {
      VecM zv[L::parts];
      L::load(z + i, zv);
      for (int p = 0; p < L::parts; ++p) acc = acc + prior_term<PRIOR>(zv[p], kv);
    }
    for (; i < b1; ++i) tail += prior_term<PRIOR, opmath_t>(z[i], ks);
    total += static_cast<double>(L::sum(acc) + tail);
  }
  return total;
}

template <int PRIOR, typename scalar_t>
void prior_grad_span(double g, const scalar_t* z, scalar_t* dz, int64_t n) {
  using L = VecLanes<scalar_t>;
  using opmath_t = typename L::opmath_t;
  using VecM = typename L::VecM;
  const PriorConsts<VecM> kv(opmath_t(0));
  const PriorConsts<opmath_t> ks(opmath_t(0));
  const opmath_t gs = static_cast<opmath_t>(g);
  const VecM gv(gs);
  int64_t i = 0;
  for (; i + L::step <= n; i += L::step) {
    VecM zv[L::parts], out[L::parts];
    L::load(z + i, zv);
    for (int p = 0; p < L::parts; ++p) out[p] = gv * prior_term_grad<PRIOR>(zv[p], kv);
    L::store(dz + i, out);
  }
  for (; i < n; ++i) dz[i] = static_cast<scalar_t>(gs * prior_term_grad<PRIOR, opmath_t>(z[i], ks));
}

at::Tensor flow_nll_cpu(const at::Tensor& z_in, const at::Tensor& logdet, c10::string_view prior_name,
                        std::optional<int64_t> n_bins) {
  const int prior = check_flow_nll(z_in, prior_name, n_bins, logdet, "logdet");
  const auto z = z_in.contiguous();
  const RowTasks tl(z);
  auto terms = at::zeros({tl.rows}, z.options().dtype(at::kDouble));
  if (tl.rows > 0 && tl.cols > 0) {
    std::vector<double> partial(tl.tasks, 0.0);
    FASTGEN_DISPATCH_FLOATS(z.scalar_type(), "flow_nll_cpu", [&] {
      const scalar_t* pz = z.const_data_ptr<scalar_t>();
      dispatch_prior(prior, [&](auto prior_c) {
        at::parallel_for(0, tl.tasks, tl.grain, [&](int64_t b, int64_t e) {
          for (int64_t task = b; task < e; ++task)
            partial[task] = prior_terms_span<decltype(prior_c)::value>(pz + tl.offset(task), tl.length(task));
        });
      });
    });
    tl.reduce_rows(partial, terms, 1.0);
  }
  return nll_finish(terms.to(opmath_dtype(z.scalar_type())), logdet, dims_per_sample(z), prior, n_bins);
}

at::Tensor flow_nll_backward_cpu(const at::Tensor& g_in, const at::Tensor& z_in, c10::string_view prior_name,
                                 std::optional<int64_t> n_bins) {
  const int prior = check_flow_nll(z_in, prior_name, n_bins, g_in, "grad_nll");
  const auto z = z_in.contiguous();
  const RowTasks tl(z);
  auto dz = at::empty_like(z, at::MemoryFormat::Contiguous);
  if (tl.rows == 0 || tl.cols == 0) return dz;
  const auto g = (g_in.to(at::kDouble) * nll_grad_scale(dims_per_sample(z), n_bins)).contiguous();
  const double* pg = g.const_data_ptr<double>();
  FASTGEN_DISPATCH_FLOATS(z.scalar_type(), "flow_nll_backward_cpu", [&] {
    const scalar_t* pz = z.const_data_ptr<scalar_t>();
    scalar_t* pdz = dz.mutable_data_ptr<scalar_t>();
    dispatch_prior(prior, [&](auto prior_c) {
      at::parallel_for(0, tl.tasks, tl.grain, [&](int64_t b, int64_t e) {
        for (int64_t task = b; task < e; ++task)
          prior_grad_span<decltype(prior_c)::value>(pg[tl.row(task)], pz + tl.offset(task),
                                                    pdz + tl.offset(task), tl.length(task));
      });
    });
  });
  return dz;
}

// -- invertible 1x1 convolution ------------------------------------------------------------------
// The entry points of invertible_conv1x1 (math and the device-generic path:
// csrc/common/invconv_host.h). Glow's layers have 12 to 48 channels, where BLAS and a dozen ATen
// ops per call cost more than the arithmetic: up to kSmallC channels the C x C weight build and
// the gradient chain are plain loops, and the per-sample products run in at::vec register blocks
// (4 channels x one vector of positions) over tiles of kPosBlock positions. Wider layers take
// the host path (BLAS GEMMs).
// The weight gradient sums fixed chunks of (sample, position block) in order: the result does
// not depend on the thread count.

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
  m.impl("affine_coupling_native", &affine_coupling_cpu);
  m.impl("affine_coupling_backward_native", &affine_coupling_backward_cpu);
  m.impl("actnorm_native", &actnorm_cpu);
  m.impl("actnorm_backward_native", &actnorm_backward_cpu);
  m.impl("flow_nll_native", &flow_nll_cpu);
  m.impl("flow_nll_backward_native", &flow_nll_backward_cpu);
  m.impl("invertible_conv1x1_native", &invconv_cpu);
  m.impl("invertible_conv1x1_backward_native", &invconv_backward_cpu);
}

}  // namespace fastgen
