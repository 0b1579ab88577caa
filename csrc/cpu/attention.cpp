// CPU flash attention: torch's own fused CPU flash-attention kernels (tiled, online softmax,
// vectorized, multithreaded) are a good CPU implementation, so this backend calls them and
// adds what fastgen's op promises on top: grouped-query attention, a key padding mask,
// queries that see no key (out 0, lse -inf, no gradient) and a gradient through lse.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common/checks.h"

namespace fastgen {
namespace {

void check_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK_VALUE(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "fastgen: q, k, v must have shape (B, H, L, Dh)");
  TORCH_CHECK_VALUE(k.sizes() == v.sizes(), "fastgen: v has shape ", v.sizes(), " but k has ", k.sizes());
  TORCH_CHECK_VALUE(k.size(0) == q.size(0) && k.size(3) == q.size(3), "fastgen: k must have shape (",
                    q.size(0), ", Hkv, Lk, ", q.size(3), "), got ", k.sizes());
  TORCH_CHECK_VALUE(k.size(1) > 0 && q.size(1) % k.size(1) == 0,
                    "fastgen: the number of query heads must be a multiple of the key/value heads");
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                   "fastgen: q, k, v must share one dtype");
}

// torch's CPU flash kernels read the head dim as contiguous (its SDPA front end makes it so
// before calling them); a view with another stride there (e.g. q, k, v sliced out of one
// (B, Dh, L) projection) silently gives wrong results, so such inputs are copied first.
at::Tensor head_dim_contiguous(const at::Tensor& t) {
  return t.size(-1) <= 1 || t.stride(-1) == 1 ? t : t.contiguous();
}

at::Tensor expand_heads(const at::Tensor& t, int64_t group) {
  return group == 1 ? t : t.repeat_interleave(group, 1);
}

// dK/dV of the expanded heads summed back onto the shared kv heads, in head order.
at::Tensor reduce_heads(const at::Tensor& t, int64_t group) {
  if (group == 1) return t;
  return t.view({t.size(0), t.size(1) / group, group, t.size(2), t.size(3)}).sum(2);
}

// Additive mask (0 / -inf) of shape (B, 1, 1, Lk) from a key padding mask (True = padded).
c10::optional<at::Tensor> additive_mask(const c10::optional<at::Tensor>& kpm, const at::Tensor& q) {
  if (!kpm.has_value()) return c10::nullopt;
  TORCH_CHECK_VALUE(kpm->scalar_type() == at::kBool && kpm->dim() == 2 && kpm->size(0) == q.size(0),
                    "fastgen: key_padding_mask must be a bool tensor of shape (B, Lk)");
  return at::zeros({kpm->size(0), 1, 1, kpm->size(1)}, q.options())
      .masked_fill_(kpm->view({kpm->size(0), 1, 1, kpm->size(1)}), -std::numeric_limits<double>::infinity());
}

// (B, 1, Lq, 1) bool: does query i see at least one key? Causal (top-left) query i sees key j
// iff j <= i, so it sees one iff the first unpadded key is <= i.
at::Tensor sees_a_key(const at::Tensor& q, int64_t lk, bool causal, const c10::optional<at::Tensor>& kpm) {
  const int64_t b = q.size(0), lq = q.size(2);
  at::Tensor first;
  if (kpm.has_value()) {  // index of the first unpadded key, lk if none
    const auto unpadded = kpm->logical_not();
    first = at::where(unpadded.any(1), unpadded.to(at::kByte).argmax(1), at::full({}, lk, q.options().dtype(at::kLong)));
  } else {
    first = at::full({b}, lk > 0 ? 0 : 1, q.options().dtype(at::kLong));
  }
  const auto rows = at::arange(lq, q.options().dtype(at::kLong));
  auto sees = (first < lk).view({b, 1}).expand({b, lq});
  if (causal) sees = sees & (first.view({b, 1}) <= rows.view({1, lq}));
  return sees.view({b, 1, lq, 1});
}

std::tuple<at::Tensor, at::Tensor> flash_attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                       const at::Tensor& v_in, bool causal, c10::optional<double> scale,
                                                       const c10::optional<at::Tensor>& key_padding_mask) {
  check_attention(q_in, k_in, v_in);
  const auto q = head_dim_contiguous(q_in), k = head_dim_contiguous(k_in), v = head_dim_contiguous(v_in);
  const int64_t group = q.size(1) / k.size(1);
  const auto math = opmath_dtype(q.scalar_type());
  if (q.numel() == 0 || k.size(2) == 0) {
    return {at::zeros(q.sizes(), q.options()),
            at::full({q.size(0), q.size(1), q.size(2)}, -std::numeric_limits<double>::infinity(), q.options().dtype(math))};
  }
  auto [out, lse] = at::_scaled_dot_product_flash_attention_for_cpu(
      q, expand_heads(k, group), expand_heads(v, group), 0.0, causal, additive_mask(key_padding_mask, q), scale);
  if (!key_padding_mask.has_value()) return {out.contiguous(), lse.to(math).contiguous()};  // every query sees key 0
  const auto sees = sees_a_key(q, k.size(2), causal, key_padding_mask);
  out = at::where(sees, out, at::zeros({}, out.options()));
  lse = at::where(sees.squeeze(-1), lse.to(math), at::full({}, -std::numeric_limits<double>::infinity(), lse.options().dtype(math)));
  return {out.contiguous(), lse.contiguous()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& grad_lse, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out, const at::Tensor& lse, bool causal, c10::optional<double> scale,
    const c10::optional<at::Tensor>& key_padding_mask) {
  check_attention(q_in, k_in, v_in);
  const auto q = head_dim_contiguous(q_in), k = head_dim_contiguous(k_in), v = head_dim_contiguous(v_in);
  const int64_t group = q.size(1) / k.size(1);
  if (q.numel() == 0 || k.size(2) == 0)
    return {at::zeros_like(q), at::zeros_like(k), at::zeros_like(v)};
  const auto sees = sees_a_key(q, k.size(2), causal, key_padding_mask);
  const auto ke = expand_heads(k, group), ve = expand_heads(v, group);
  const auto mask = additive_mask(key_padding_mask, q);
  // torch's kernel takes lse in fp32 for half types; queries that see nothing: lse 0, dO 0
  const auto lse_in = at::where(sees.squeeze(-1), lse, at::zeros({}, lse.options()))
                          .to(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  const auto go = at::where(sees, grad_out, at::zeros({}, grad_out.options())).contiguous();
  auto [dq, dk, dv] = at::_scaled_dot_product_flash_attention_for_cpu_backward(
      go, q, ke, ve, head_dim_contiguous(out), lse_in, 0.0, causal, mask, scale);
  // d lse / d s_ij = p_ij: dQ += scale * g (P K), dK += scale * P^T (g Q), with P K the
  // attention output for values = keys and P^T (g Q) the dV of a backward with dO = g Q.
  const auto g = at::where(sees.squeeze(-1), grad_lse, at::zeros({}, grad_lse.options()));
  if (g.ne(0).any().item<bool>()) {
    const double s = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(3)));
    const auto gq = (g.unsqueeze(-1).to(q.scalar_type()) * q).contiguous();
    auto [pk, lse2] = at::_scaled_dot_product_flash_attention_for_cpu(q, ke, ke, 0.0, causal, mask, scale);
    auto [unused_q, unused_k, ptgq] = at::_scaled_dot_product_flash_attention_for_cpu_backward(
        gq, q, ke, ke, pk, lse2, 0.0, causal, mask, scale);
    dq = dq + s * g.unsqueeze(-1).to(q.scalar_type()) * pk;
    dk = dk + s * ptgq;
  }
  return {dq.contiguous(), reduce_heads(dk, group).contiguous(), reduce_heads(dv, group).contiguous()};
}

// Decoding: the per-sequence lengths become an additive mask over the cache for torch's kernel.
// GQA without copying the cache: the `group` query heads that share a kv head all see the same
// keys, so they are folded into the query dimension of that kv head (row r = g * Lq + i).
at::Tensor decode_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& cache_seqlens, c10::optional<double> scale) {
  check_attention(q, k_cache, v_cache);
  TORCH_CHECK_VALUE(cache_seqlens.dim() == 1 && cache_seqlens.size(0) == q.size(0),
                    "fastgen: cache_seqlens must have shape (B,)");
  const int64_t b = q.size(0), h = q.size(1), lq = q.size(2), d = q.size(3);
  const int64_t hkv = k_cache.size(1), lmax = k_cache.size(2), group = h / hkv, rows = group * lq;
  if (q.numel() == 0 || lmax == 0) return at::zeros(q.sizes(), q.options());
  const auto opts = q.options().dtype(at::kLong);
  // row r is query i = r % lq, which sees keys j < cache_seqlens[b] - (lq - 1 - i)
  const auto i = at::arange(rows, opts).remainder(lq);
  const auto limit = cache_seqlens.to(at::kLong).view({b, 1}) - (lq - 1 - i).view({1, rows});  // [B, rows]
  const auto visible = at::arange(lmax, opts).view({1, 1, lmax}) < limit.unsqueeze(-1);      // [B, rows, Lmax]
  const auto mask = at::zeros({b, 1, rows, lmax}, q.options())
                        .masked_fill_(visible.logical_not().unsqueeze(1), -std::numeric_limits<double>::infinity());
  const auto qf = q.reshape({b, hkv, rows, d});
  auto [out, lse] = at::_scaled_dot_product_flash_attention_for_cpu(qf, k_cache, v_cache, 0.0, false, mask, scale);
  const auto sees = (limit > 0).view({b, 1, rows, 1});
  return at::where(sees, out, at::zeros({}, out.options())).reshape({b, h, lq, d}).contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("decode_attention_native", &decode_attention_cpu);
  m.impl("flash_attention_native", &flash_attention_cpu);
  m.impl("flash_attention_backward_native", &flash_attention_backward_cpu);
}

}  // namespace fastgen
