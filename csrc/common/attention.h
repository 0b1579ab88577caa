#pragma once
// Argument checks of the attention entry points, shared by the CPU and CUDA kernels: the same
// exception types, words and order as fastgen/ops/attention.py's checks (_check, _check_backward,
// _check_decode). Every tensor argument is checked to lie on q's device. The head-dim range
// [1, 256] is the CUDA kernels' limit only (max_head_dim below): the CPU kernels take any head dim,
// so a direct torch.ops.fastgen.*_native call on CPU tensors does (the op's Python check rejects it).
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include "common/checks.h"

namespace fastgen {
// No head-dim limit (the CPU kernels); the CUDA kernels pass kAttentionMaxHeadDim.
constexpr int64_t kNoHeadDimLimit = std::numeric_limits<int64_t>::max();
constexpr int64_t kAttentionMaxHeadDim = 256;

// _check's tensor part: q (B, H, Lq, Dh), k and v (B, Hkv, Lk, Dh) float tensors with H a multiple
// of Hkv, k and v of q's dtype and on q's device.
inline void check_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const char* k_name = "k", const char* v_name = "v",
                            int64_t max_head_dim = kNoHeadDimLimit) {
  const std::string pre = "fastgen: ";
  using Named = std::pair<const char*, const at::Tensor*>;
  const Named qkv[] = {{"q", &q}, {k_name, &k}, {v_name, &v}};
  for (const auto& [name, t] : qkv) {
    check_float_tensor(*t, name);
    TORCH_CHECK_VALUE(t->dim() == 4, pre + name + " must have shape (B, H, L, Dh), got " + py_shape(t->sizes()));
  }
  const int64_t b = q.size(0), h = q.size(1), d = q.size(3);
  TORCH_CHECK_VALUE(k.size(0) == b && k.size(3) == d, pre + k_name + " must have shape (" + py_int(b) +
                    ", Hkv, Lk, " + py_int(d) + "), got " + py_shape(k.sizes()));
  TORCH_CHECK_VALUE(v.sizes() == k.sizes(), pre + v_name + " has shape " + py_shape(v.sizes()) + " but " + k_name +
                    " has " + py_shape(k.sizes()));
  TORCH_CHECK_VALUE(k.size(1) > 0 && h % k.size(1) == 0, pre + "the number of query heads (" + py_int(h) +
                    ") must be a multiple of the number of key/value heads (" + py_int(k.size(1)) + ")");
  // the Python check's [1, 256]; here only the kernel's own limit (see the top of this file)
  TORCH_CHECK_VALUE(d <= max_head_dim, pre + "head dim must be in [1, " + py_int(max_head_dim) + "], got " +
                    py_int(d));
  for (const auto& [name, t] : {qkv[1], qkv[2]}) {
    TORCH_CHECK_TYPE(t->scalar_type() == q.scalar_type(), pre + name + " has dtype " + py_dtype(t->scalar_type()) +
                     " but q has " + py_dtype(q.scalar_type()));
    check_same_device(q, "q", *t, name);
  }
}

// scale = None (1 / sqrt(Dh)) or a finite positive number.
inline void check_scale(const std::optional<double>& scale) {
  TORCH_CHECK_VALUE(!scale.has_value() || (*scale > 0 && *scale < std::numeric_limits<double>::infinity()),
                    "fastgen: scale must be a finite positive number, got " +
                        py_float(scale.value_or(0.0)));
}

// _check_dropout_p (NaN fails too).
inline void check_dropout_p(double dropout_p) {
  TORCH_CHECK_VALUE(dropout_p >= 0 && dropout_p <= 1,
                    "fastgen: dropout_p must be in [0, 1], got " + py_float(dropout_p));
}

// flash_attention's optional arguments: the key padding mask (True = padded) and, with dropout,
// the Philox seed (read on the device by the CUDA kernels; unused without dropout).
inline void check_attention_options(const at::Tensor& q, const at::Tensor& k,
                                    const std::optional<at::Tensor>& key_padding_mask, double dropout_p,
                                    const std::optional<at::Tensor>& seed) {
  if (key_padding_mask.has_value()) {
    const auto& m = *key_padding_mask;
    TORCH_CHECK_VALUE(m.scalar_type() == at::kBool && m.dim() == 2 && m.size(0) == q.size(0) &&
                          m.size(1) == k.size(2),
                      "fastgen: key_padding_mask must be a bool tensor of shape (" + py_int(q.size(0)) + ", " +
                          py_int(k.size(2)) + ") (True = padded key), got " + py_dtype(m.scalar_type()) +
                          " of shape " + py_shape(m.sizes()));
    check_same_device(q, "q", m, "key_padding_mask");
  }
  check_dropout_p(dropout_p);
  if (dropout_p > 0) {
    TORCH_CHECK_VALUE(seed.has_value(), "fastgen: dropout_p > 0 needs a seed (an int64 tensor with one value)");
    TORCH_CHECK_VALUE(seed->scalar_type() == at::kLong && seed->numel() == 1,
                      "fastgen: seed must be an int64 tensor with one value, got " + py_dtype(seed->scalar_type()) +
                          " of shape " + py_shape(seed->sizes()));
    check_same_device(q, "q", *seed, "seed");
  }
}

// The backward's extra tensors: grad_out and out like q, grad_lse and lse (B, H, Lq).
inline void check_attention_backward(const at::Tensor& grad_out, const at::Tensor& grad_lse, const at::Tensor& q,
                                     const at::Tensor& out, const at::Tensor& lse) {
  check_same_float_tensor(q, "q", grad_out, "grad_out");
  check_same_float_tensor(q, "q", out, "out");
  const std::pair<const char*, const at::Tensor*> rows[] = {{"grad_lse", &grad_lse}, {"lse", &lse}};
  for (const auto& [name, t] : rows) {
    check_float_tensor(*t, name);
    TORCH_CHECK_VALUE(t->sizes() == q.sizes().slice(0, 3), std::string("fastgen: ") + name + " must have shape " +
                      py_shape(q.sizes().slice(0, 3)) + ", got " + py_shape(t->sizes()));
    check_same_device(q, "q", *t, name);
  }
}

// _check_decode: _check (k_cache / v_cache, scale) first, then cache_seqlens.
inline void check_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                         const at::Tensor& cache_seqlens, const std::optional<double>& scale,
                         int64_t max_head_dim = kNoHeadDimLimit) {
  check_attention(q, k_cache, v_cache, "k_cache", "v_cache", max_head_dim);
  check_scale(scale);
  TORCH_CHECK_VALUE((cache_seqlens.scalar_type() == at::kInt || cache_seqlens.scalar_type() == at::kLong) &&
                        cache_seqlens.dim() == 1 && cache_seqlens.size(0) == q.size(0),
                    "fastgen: cache_seqlens must be an int32/int64 tensor of shape (" + py_int(q.size(0)) +
                        ",), got " + py_dtype(cache_seqlens.scalar_type()) + " of shape " +
                        py_shape(cache_seqlens.sizes()));
  check_same_device(q, "q", cache_seqlens, "cache_seqlens");
  // lengths in [0, Lmax] (_checks.in_range): checked for host tensors only (on a GPU reading
  // them would be a sync)
  if (cache_seqlens.device().is_cpu() && cache_seqlens.numel() > 0) {
    const auto [lo_t, hi_t] = at::aminmax(cache_seqlens);
    const int64_t lo = lo_t.item<int64_t>(), hi = hi_t.item<int64_t>(), lmax = k_cache.size(2);
    TORCH_CHECK_VALUE(lo >= 0 && hi <= lmax, "fastgen: cache_seqlens must be in [0, " + py_int(lmax + 1) +
                      "), got " + py_int(lo < 0 ? lo : hi));
  }
}

// Every check of flash_attention's entry points, in _check's order (the CUDA ones pass their
// head-dim limit).
inline void check_flash_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const std::optional<at::Tensor>& key_padding_mask, double dropout_p,
                                  const std::optional<at::Tensor>& seed, const std::optional<double>& scale,
                                  int64_t max_head_dim = kNoHeadDimLimit) {
  check_attention(q, k, v, "k", "v", max_head_dim);
  check_scale(scale);
  check_attention_options(q, k, key_padding_mask, dropout_p, seed);
}

inline void check_flash_attention_backward(const at::Tensor& grad_out, const at::Tensor& grad_lse, const at::Tensor& q,
                                           const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                           const at::Tensor& lse, const std::optional<at::Tensor>& key_padding_mask,
                                           double dropout_p, const std::optional<at::Tensor>& seed,
                                           const std::optional<double>& scale,
                                           int64_t max_head_dim = kNoHeadDimLimit) {
  check_flash_attention(q, k, v, key_padding_mask, dropout_p, seed, scale, max_head_dim);
  check_attention_backward(grad_out, grad_lse, q, out, lse);
}

}  // namespace fastgen
