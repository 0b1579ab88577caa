#pragma once
// Glow's invertible 1x1 convolution with the LU-parametrized weight, as one op: the weight
// build W = P @ (strictly-lower(lower) + I) @ (strictly-upper(upper) + diag(sign * exp(log_s))),
// the per-sample product y[n] = W @ x[n] (W^-1 for the inverse) over (N, C, S) and the logdet
// +-S * sum(log_s); the backward chains d W back to lower / upper / log_s. Everything is ATen
// on the tensors' own device (BLAS / cuBLAS for the products), so the CPU and CUDA entry points
// share this host code; what the op saves over the eager module is the ~25 small autograd ops of
// the weight build, the einsum's reshapes and the logdet bookkeeping, forward and backward.
#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/flow_host.h"

namespace fastgen {

// W = P L U must be invertible: perm a permutation matrix, sign +-1 (diag(U) = sign * exp(log_s)).
// Host tensors only: on a GPU reading the values would be a sync. Same words as fastgen/ops/flow.py.
inline void check_invconv_values(const at::Tensor& perm, const at::Tensor& sign) {
  if (!perm.device().is_cpu() || !sign.device().is_cpu()) return;
  const auto s = sign.to(at::kDouble).contiguous(), p = perm.to(at::kDouble).contiguous();
  const double* ps = s.const_data_ptr<double>();
  const int64_t c = s.numel();
  for (int64_t i = 0; i < c; ++i)
    TORCH_CHECK_VALUE(ps[i] == 1 || ps[i] == -1, "fastgen: sign must hold +1 or -1 (the signs of W's diagonal), got " +
                      py_format_g(ps[i]) + " at channel " + py_int(i));
  const double* pp = p.const_data_ptr<double>();
  std::vector<int64_t> col_ones(c, 0);
  bool ok = true;
  for (int64_t i = 0; i < c; ++i) {
    int64_t row_ones = 0;
    for (int64_t j = 0; j < c; ++j) {
      const double v = pp[i * c + j];
      if (v == 1) {
        ++row_ones;
        ++col_ones[j];
      } else if (v != 0) {
        ok = false;
      }
    }
    ok = ok && row_ones == 1;
  }
  for (int64_t j = 0; j < c; ++j) ok = ok && col_ones[j] == 1;
  TORCH_CHECK_VALUE(ok, "fastgen: perm must be a permutation matrix (0/1 entries, one 1 in each row and column)");
}

// _check_invconv (inverse is typed by the schema), then the values.
inline void check_invconv(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lower,
                          const at::Tensor& upper, const at::Tensor& sign, const at::Tensor& log_s) {
  check_float_tensor(x, "x");
  TORCH_CHECK_VALUE(x.dim() >= 2, "fastgen: x must have shape (N, C, *spatial) (NCHW or (N, C)), got " +
                    py_shape(x.sizes()));
  const int64_t c = x.size(1);
  check_float_tensor(log_s, "log_s");
  auto check_param = [&](const at::Tensor& p, const char* name, bool matrix) {
    check_float_tensor(p, name);
    const std::string shape = matrix ? "(" + py_int(c) + ", " + py_int(c) + ")" : "(" + py_int(c) + ",)";
    TORCH_CHECK_VALUE(matrix ? (p.dim() == 2 && p.size(0) == c && p.size(1) == c)
                             : (p.dim() == 1 && p.size(0) == c),
                      std::string("fastgen: ") + name + " must have shape " + shape + " (C = " + py_int(c) +
                      ", the channels of x), got " + py_shape(p.sizes()));
    TORCH_CHECK_TYPE(p.scalar_type() == log_s.scalar_type(), std::string("fastgen: ") + name + " has dtype " +
                     py_dtype(p.scalar_type()) + " but log_s has " + py_dtype(log_s.scalar_type()));
    check_same_device(x, "x", p, name);
  };
  check_param(log_s, "log_s", false);
  check_param(perm, "perm", true);
  check_param(lower, "lower", true);
  check_param(upper, "upper", true);
  check_param(sign, "sign", false);
  check_invconv_values(perm, sign);
}

// The rest of _check_invconv_backward: the incoming gradients.
inline void check_invconv_grads(const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x) {
  check_same_float_tensor(x, "x", grad_y, "grad_y");
  check_per_sample(x, "x", grad_logdet, "grad_logdet");
}

struct InvconvParts {
  at::Tensor perm, lo, up, scale, m;  // math dtype; m is the applied matrix (W or W^-1)
};

inline InvconvParts invconv_parts(const at::Tensor& perm, const at::Tensor& lower, const at::Tensor& upper,
                                  const at::Tensor& sign, const at::Tensor& log_s, at::ScalarType t,
                                  bool inverse) {
  InvconvParts r;
  r.perm = perm.to(t);
  r.lo = at::tril(lower.to(t), -1);
  r.lo.diagonal().fill_(1);
  r.scale = sign.to(t) * log_s.to(t).exp();
  r.up = at::triu(upper.to(t), 1);
  r.up.diagonal().copy_(r.scale);
  const auto w = at::mm(r.perm, at::mm(r.lo, r.up));
  r.m = inverse ? at::linalg_inv(w) : w;
  return r;
}

inline at::Tensor invconv_rows(const at::Tensor& x, at::ScalarType t) {
  const ActnormShape sh(x);
  return x.to(t).reshape({sh.n, sh.c, sh.s});
}

inline std::tuple<at::Tensor, at::Tensor> invconv_forward(const at::Tensor& x, const at::Tensor& perm,
                                                          const at::Tensor& lower, const at::Tensor& upper,
                                                          const at::Tensor& sign, const at::Tensor& log_s,
                                                          bool inverse) {
  check_invconv(x, perm, lower, upper, sign, log_s);
  const auto t = opmath_dtype(x.scalar_type());
  const auto parts = invconv_parts(perm, lower, upper, sign, log_s, t, inverse);
  const auto xm = invconv_rows(x, t);
  const auto y = at::matmul(parts.m, xm).view(x.sizes()).to(x.scalar_type()).contiguous();
  const double s = static_cast<double>(xm.size(2));
  const auto total = log_s.to(t).sum() * (inverse ? -s : s);
  return {y, total.expand({x.size(0)}).contiguous()};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> invconv_backward(
    const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x, const at::Tensor& perm,
    const at::Tensor& lower, const at::Tensor& upper, const at::Tensor& sign, const at::Tensor& log_s,
    bool inverse) {
  check_invconv(x, perm, lower, upper, sign, log_s);
  check_invconv_grads(grad_y, grad_logdet, x);
  const auto t = opmath_dtype(x.scalar_type());
  const auto parts = invconv_parts(perm, lower, upper, sign, log_s, t, inverse);
  const auto xm = invconv_rows(x, t), g = invconv_rows(grad_y, t);
  const auto d_x = at::matmul(parts.m.t(), g).view(x.sizes()).to(x.scalar_type()).contiguous();
  // sum_n G[n] X[n]^T: one batched GEMM on the tensors as they lie, then a sum over n, unless
  // the (N, C, C) products would outgrow x (C > S; then tensordot's transposed copies)
  const auto d_m = xm.size(1) <= xm.size(2) ? at::bmm(g, xm.transpose(1, 2)).sum(0)
                                             : at::tensordot(g, xm, {0, 2}, {0, 2});
  const auto mt = parts.m.t();
  const auto d_w = inverse ? -at::mm(at::mm(mt, d_m), mt) : d_m;
  const auto a = at::mm(parts.perm.t(), d_w);
  const auto d_lower = at::tril(at::mm(a, parts.up.t()), -1);
  const auto d_up = at::mm(parts.lo.t(), a);
  const double s = static_cast<double>(xm.size(2));
  const auto gl_total = grad_logdet.to(t).sum() * (inverse ? -s : s);
  const auto d_ls = d_up.diagonal() * parts.scale + gl_total;
  const auto pt = log_s.scalar_type();
  return {d_x, d_lower.to(pt), at::triu(d_up, 1).to(pt), d_ls.to(pt)};
}

}  // namespace fastgen
