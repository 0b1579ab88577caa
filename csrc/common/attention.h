#pragma once
// Argument checks of the attention entry points, shared by the CPU and CUDA kernels (the same
// words as fastgen/ops/attention.py's checks). Every tensor argument is checked to lie on q's
// device; the CUDA kernels add their own limits (head dim, unit last stride) on top.
#include <ATen/ATen.h>

#include <limits>
#include <optional>

#include "common/checks.h"

namespace fastgen {

// q (B, H, Lq, Dh), k and v (B, Hkv, Lk, Dh) with H a multiple of Hkv; one dtype, q's device.
inline void check_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const char* k_name = "k", const char* v_name = "v") {
  TORCH_CHECK_VALUE(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "fastgen: q, ", k_name, ", ", v_name,
                    " must have shape (B, H, L, Dh)");
  TORCH_CHECK_VALUE(k.sizes() == v.sizes(), "fastgen: ", v_name, " has shape ", v.sizes(), " but ", k_name,
                    " has ", k.sizes());
  TORCH_CHECK_VALUE(k.size(0) == q.size(0) && k.size(3) == q.size(3), "fastgen: ", k_name, " must have shape (",
                    q.size(0), ", Hkv, Lk, ", q.size(3), "), got ", k.sizes());
  TORCH_CHECK_VALUE(k.size(1) > 0 && q.size(1) % k.size(1) == 0,
                    "fastgen: the number of query heads must be a multiple of the key/value heads");
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                   "fastgen: q, ", k_name, ", ", v_name, " must share one dtype");
  check_same_device(q, "q", k, k_name);
  check_same_device(q, "q", v, v_name);
}

// flash_attention's optional arguments: the key padding mask (True = padded) and, with dropout,
// the Philox seed (read on the device by the CUDA kernels; unused without dropout).
inline void check_attention_options(const at::Tensor& q, const at::Tensor& k,
                                    const std::optional<at::Tensor>& key_padding_mask, double dropout_p,
                                    const std::optional<at::Tensor>& seed) {
  TORCH_CHECK_VALUE(dropout_p >= 0 && dropout_p <= 1, "fastgen: dropout_p must be in [0, 1], got ", dropout_p);
  if (key_padding_mask.has_value()) {
    const auto& m = *key_padding_mask;
    TORCH_CHECK_VALUE(m.scalar_type() == at::kBool && m.dim() == 2 && m.size(0) == q.size(0) &&
                          m.size(1) == k.size(2),
                      "fastgen: key_padding_mask must be a bool tensor of shape (", q.size(0), ", ", k.size(2),
                      ") (True = padded key), got ", m.scalar_type(), " of shape ", m.sizes());
    check_same_device(q, "q", m, "key_padding_mask");
  }
  if (dropout_p > 0) {
    TORCH_CHECK_VALUE(seed.has_value() && seed->numel() == 1 && seed->scalar_type() == at::kLong,
                      "fastgen: dropout_p > 0 needs seed, an int64 tensor with one value");
    check_same_device(q, "q", *seed, "seed");
  }
}

// The backward's extra tensors: grad_out and out like q, grad_lse and lse (B, H, Lq).
inline void check_attention_backward(const at::Tensor& grad_out, const at::Tensor& grad_lse, const at::Tensor& q,
                                     const at::Tensor& out, const at::Tensor& lse) {
  check_same_float_tensor(q, "q", grad_out, "grad_out");
  check_same_float_tensor(q, "q", out, "out");
  const auto per_row = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "fastgen: ", name, " must be a floating-point tensor, got ",
                     t.scalar_type());
    TORCH_CHECK_VALUE(t.dim() == 3 && t.sizes() == q.sizes().slice(0, 3), "fastgen: ", name, " must have shape (",
                      q.size(0), ", ", q.size(1), ", ", q.size(2), "), got ", t.sizes());
    check_same_device(q, "q", t, name);
  };
  per_row(grad_lse, "grad_lse");
  per_row(lse, "lse");
}

// scale = None (1 / sqrt(Dh)) or a finite positive number.
inline void check_scale(const std::optional<double>& scale) {
  TORCH_CHECK_VALUE(!scale.has_value() || (*scale > 0 && *scale < std::numeric_limits<double>::infinity()),
                    "fastgen: scale must be a finite positive number, got ", *scale);
}

inline void check_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                         const at::Tensor& cache_seqlens) {
  check_attention(q, k_cache, v_cache, "k_cache", "v_cache");
  TORCH_CHECK_VALUE((cache_seqlens.scalar_type() == at::kInt || cache_seqlens.scalar_type() == at::kLong) &&
                        cache_seqlens.dim() == 1 && cache_seqlens.size(0) == q.size(0),
                    "fastgen: cache_seqlens must be an int32/int64 tensor of shape (", q.size(0), ",), got ",
                    cache_seqlens.scalar_type(), " of shape ", cache_seqlens.sizes());
  check_same_device(q, "q", cache_seqlens, "cache_seqlens");
  // lengths in [0, Lmax]: checked for host tensors only (on a GPU reading them would be a sync)
  if (cache_seqlens.device().is_cpu() && cache_seqlens.numel() > 0) {
    const auto [lo_t, hi_t] = at::aminmax(cache_seqlens);
    const int64_t lo = lo_t.item<int64_t>(), hi = hi_t.item<int64_t>(), lmax = k_cache.size(2);
    TORCH_CHECK_VALUE(lo >= 0 && hi <= lmax, "fastgen: cache_seqlens must be in [0, ", lmax + 1, "), got ",
                      lo < 0 ? lo : hi);
  }
}

// Every check of flash_attention's entry points (the CUDA ones add their head-dim and stride limits).
inline void check_flash_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const std::optional<at::Tensor>& key_padding_mask, double dropout_p,
                                  const std::optional<at::Tensor>& seed, const std::optional<double>& scale) {
  check_attention(q, k, v);
  check_attention_options(q, k, key_padding_mask, dropout_p, seed);
  check_scale(scale);
}

inline void check_flash_attention_backward(const at::Tensor& grad_out, const at::Tensor& grad_lse, const at::Tensor& q,
                                           const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                           const at::Tensor& lse, const std::optional<at::Tensor>& key_padding_mask,
                                           double dropout_p, const std::optional<at::Tensor>& seed,
                                           const std::optional<double>& scale) {
  check_flash_attention(q, k, v, key_padding_mask, dropout_p, seed, scale);
  check_attention_backward(grad_out, grad_lse, q, out, lse);
}

}  // namespace fastgen
