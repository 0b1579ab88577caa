// CPU flash attention: torch's own fused CPU flash-attention kernels (tiled, online softmax,
// vectorized, multithreaded) are a good CPU implementation, so this backend calls them and
// adds what fastgen's op promises on top: grouped-query attention, a key padding mask,
// queries that see no key (out 0, lse -inf, no gradient) and a gradient through lse.
// With dropout, whose mask must be fastgen's counter-based one (common/philox.h) so every
// backend drops the same probabilities, it runs blocked math attention instead: chunks of
// query rows, so memory is O(B * H * chunk * Lk), never the whole Lq x Lk per head.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/attention.h"
#include "common/checks.h"
#include "common/philox.h"

namespace fastgen {
namespace {

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

// -- dropout: blocked math attention -------------------------------------------------------------

// Query rows per chunk: about 2^22 scores per chunk over all (batch, head) pairs.
int64_t dropout_chunk(int64_t bh, int64_t lk) {
  return std::max<int64_t>(1, (int64_t(1) << 22) / std::max<int64_t>(1, bh * lk));
}

// Multiplier of each probability in query rows [i0, i0 + rows): 1 / (1 - p) where kept, 0 where
// dropped; element (b, h, i, j) is kept iff philox rand(seed, ((b * H + h) * Lq + i) * Lk + j) >= p.
at::Tensor dropout_multiplier(int64_t bh, int64_t lq, int64_t i0, int64_t rows, int64_t lk, double dropout_p,
                              uint64_t seed, const at::TensorOptions& opts) {
  auto mult = at::empty({bh, rows, lk}, opts.dtype(at::kFloat));
  float* pm = mult.mutable_data_ptr<float>();
  const float keep_scale = dropout_p < 1 ? static_cast<float>(1.0 / (1.0 - dropout_p)) : 0.f;
  const float p = static_cast<float>(dropout_p);
  at::parallel_for(0, bh * rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t head = r / rows, i = i0 + r % rows;
      const uint64_t base = static_cast<uint64_t>((head * lq + i) * lk);
      for (int64_t j = 0; j < lk; ++j)
        pm[r * lk + j] = philox::rand(seed, base + static_cast<uint64_t>(j)) >= p ? keep_scale : 0.f;
    }
  });
  return mult;
}

// Scaled, masked scores of query rows [i0, i0 + rows) in the math dtype: (B, H, rows, Lk).
at::Tensor chunk_scores(const at::Tensor& qm, const at::Tensor& km, int64_t i0, int64_t rows, double scale,
                        bool causal, const c10::optional<at::Tensor>& kpm) {
  auto s = at::matmul(qm.narrow(2, i0, rows), km.transpose(-1, -2)).mul_(scale);
  const int64_t lk = km.size(2);
  if (causal) {
    const auto i = at::arange(i0, i0 + rows, s.options().dtype(at::kLong)).view({rows, 1});
    const auto j = at::arange(lk, s.options().dtype(at::kLong)).view({1, lk});
    s.masked_fill_(j > i, -std::numeric_limits<double>::infinity());
  }
  if (kpm.has_value()) s.masked_fill_(kpm->view({kpm->size(0), 1, 1, lk}), -std::numeric_limits<double>::infinity());
  return s;
}

std::tuple<at::Tensor, at::Tensor> flash_attention_dropout_cpu(const at::Tensor& q, const at::Tensor& k,
                                                               const at::Tensor& v, bool causal, double scale,
                                                               const c10::optional<at::Tensor>& kpm,
                                                               double dropout_p, uint64_t seed) {
  const int64_t group = q.size(1) / k.size(1), b = q.size(0), h = q.size(1), lq = q.size(2), lk = k.size(2);
  const auto math = opmath_dtype(q.scalar_type());
  const auto qm = q.to(math), km = expand_heads(k, group).to(math), vm = expand_heads(v, group).to(math);
  auto out = at::empty({b, h, lq, q.size(3)}, q.options().dtype(math));
  auto lse = at::empty({b, h, lq}, q.options().dtype(math));
  const double inf = std::numeric_limits<double>::infinity();
  for (int64_t i0 = 0, step = dropout_chunk(b * h, lk); i0 < lq; i0 += step) {
    const int64_t rows = std::min(step, lq - i0);
    const auto s = chunk_scores(qm, km, i0, rows, scale, causal, kpm);
    auto m = std::get<0>(s.max(-1, true));
    m.masked_fill_(m == -inf, 0);  // a row that sees no key: probabilities 0, lse -inf
    const auto e = (s - m).exp_();
    const auto denom = e.sum(-1, true);
    const auto p = e / denom.clamp_min(std::numeric_limits<float>::min());
    lse.narrow(2, i0, rows).copy_(at::where(denom > 0, m + denom.log(), -inf).squeeze(-1));
    if (dropout_p > 0) {
      const auto mult = dropout_multiplier(b * h, lq, i0, rows, lk, dropout_p, seed, q.options()).view(p.sizes());
      out.narrow(2, i0, rows).copy_(at::matmul(p * mult, vm));
    } else {
      out.narrow(2, i0, rows).copy_(at::matmul(p, vm));
    }
  }
  return {out.to(q.scalar_type()).contiguous(), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_dropout_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, bool causal, double scale,
    const c10::optional<at::Tensor>& kpm, double dropout_p, uint64_t seed) {
  const int64_t group = q.size(1) / k.size(1), b = q.size(0), h = q.size(1), lq = q.size(2), lk = k.size(2);
  const auto math = opmath_dtype(q.scalar_type());
  const auto qm = q.to(math), km = expand_heads(k, group).to(math), vm = expand_heads(v, group).to(math);
  const auto dom = grad_out.to(math);
  // delta_i = dO_i . O_i - grad_lse_i (the lse gradient adds p * grad_lse to dS)
  const auto delta = (dom * out.to(math)).sum(-1, true) - grad_lse.to(math).unsqueeze(-1);
  const double inf = std::numeric_limits<double>::infinity();
  const auto lse_safe = at::where(lse == -inf, inf, lse.to(math)).unsqueeze(-1);  // p = 0 for dead rows
  auto dq = at::empty({b, h, lq, q.size(3)}, q.options().dtype(math));
  auto dk = at::zeros({b, h, lk, q.size(3)}, q.options().dtype(math));
  auto dv = at::zeros({b, h, lk, q.size(3)}, q.options().dtype(math));
  for (int64_t i0 = 0, step = dropout_chunk(b * h, lk); i0 < lq; i0 += step) {
    const int64_t rows = std::min(step, lq - i0);
    const auto p = (chunk_scores(qm, km, i0, rows, scale, causal, kpm) - lse_safe.narrow(2, i0, rows)).exp_();
    const auto mult = dropout_multiplier(b * h, lq, i0, rows, lk, dropout_p, seed, q.options()).view(p.sizes());
    const auto d_o = dom.narrow(2, i0, rows);
    dv.add_(at::matmul((p * mult).transpose(-1, -2), d_o));
    const auto dp = at::matmul(d_o, vm.transpose(-1, -2)).mul_(mult);
    const auto ds = p * (dp - delta.narrow(2, i0, rows));
    dq.narrow(2, i0, rows).copy_(at::matmul(ds, km).mul_(scale));
    dk.add_(at::matmul(ds.transpose(-1, -2), qm.narrow(2, i0, rows)).mul_(scale));
  }
  return {dq.to(q.scalar_type()).contiguous(), reduce_heads(dk, group).to(k.scalar_type()).contiguous(),
          reduce_heads(dv, group).to(v.scalar_type()).contiguous()};
}

// (checked by check_attention_options)
// A sum is one cheap vectorized pass (~0.05 ms for 512K floats, against ~3 ms for isnan().any());
// it is finite unless an element is NaN or inf (or the sum overflows: then the exact blocked
// path below runs needlessly, with the same results).
bool maybe_non_finite(const at::Tensor& t) { return !std::isfinite(t.sum().item<double>()); }

uint64_t seed_value(const c10::optional<at::Tensor>& seed) { return static_cast<uint64_t>(seed->item<int64_t>()); }

std::tuple<at::Tensor, at::Tensor> flash_attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                       const at::Tensor& v_in, bool causal, c10::optional<double> scale,
                                                       const c10::optional<at::Tensor>& key_padding_mask,
                                                       double dropout_p, const c10::optional<at::Tensor>& seed) {
  check_flash_attention(q_in, k_in, v_in, key_padding_mask, dropout_p, seed, scale);
  const auto q = head_dim_contiguous(q_in), k = head_dim_contiguous(k_in), v = head_dim_contiguous(v_in);
  const int64_t group = q.size(1) / k.size(1);
  const auto math = opmath_dtype(q.scalar_type());
  if (q.numel() == 0 || k.size(2) == 0) {
    return {at::zeros(q.sizes(), q.options()),
            at::full({q.size(0), q.size(1), q.size(2)}, -std::numeric_limits<double>::infinity(), q.options().dtype(math))};
  }
  // torch's CPU kernel gives a query whose scores are NaN, or all -inf, out 0 and lse 0; the
  // blocked math path gives the reference's NaN, or out 0 and lse -inf
  if (dropout_p > 0 || maybe_non_finite(q) || maybe_non_finite(k)) {
    const double s = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(3)));
    return flash_attention_dropout_cpu(q, k, v, causal, s, key_padding_mask, dropout_p,
                                       dropout_p > 0 ? seed_value(seed) : 0);
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
    const c10::optional<at::Tensor>& key_padding_mask, double dropout_p, const c10::optional<at::Tensor>& seed) {
  check_flash_attention_backward(grad_out, grad_lse, q_in, k_in, v_in, out, lse, key_padding_mask, dropout_p, seed,
                                 scale);
  const auto q = head_dim_contiguous(q_in), k = head_dim_contiguous(k_in), v = head_dim_contiguous(v_in);
  const int64_t group = q.size(1) / k.size(1);
  if (q.numel() == 0 || k.size(2) == 0)
    return {at::zeros_like(q), at::zeros_like(k), at::zeros_like(v)};
  if (dropout_p > 0) {
    const double s = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(3)));
    return flash_attention_dropout_backward_cpu(grad_out, grad_lse, q, k, v, out, lse, causal, s, key_padding_mask,
                                                dropout_p, seed_value(seed));
  }
  const auto ke = expand_heads(k, group), ve = expand_heads(v, group);
  const auto mask = additive_mask(key_padding_mask, q);
  // torch's kernel takes lse in fp32 for half types; queries that see nothing: lse 0, dO 0.
  // Without a padding mask every query sees key 0 (k has keys here), so nothing is masked.
  const auto lse_dtype = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor lse_in, go, g;
  if (key_padding_mask.has_value()) {
    const auto sees = sees_a_key(q, k.size(2), causal, key_padding_mask);
    lse_in = at::where(sees.squeeze(-1), lse, at::zeros({}, lse.options())).to(lse_dtype);
    go = at::where(sees, grad_out, at::zeros({}, grad_out.options())).contiguous();
    g = at::where(sees.squeeze(-1), grad_lse, at::zeros({}, grad_lse.options()));
  } else {
    lse_in = lse.to(lse_dtype);
    go = grad_out.contiguous();
    g = grad_lse;
  }
  auto [dq, dk, dv] = at::_scaled_dot_product_flash_attention_for_cpu_backward(
      go, q, ke, ve, head_dim_contiguous(out), lse_in, 0.0, causal, mask, scale);
  // d lse / d s_ij = p_ij: dQ += scale * g (P K), dK += scale * P^T (g Q), with P K the
  // attention output for values = keys and P^T (g Q) the dV of a backward with dO = g Q.
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
  check_decode(q, k_cache, v_cache, cache_seqlens, scale);
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
  // head dims unit-stride (head_dim_contiguous): torch 2.11's kernel gave NaN here for strided
  // q / caches (test_op_contract's non-contiguous case); 2.14's happens to read them right
  const auto qf = head_dim_contiguous(q.reshape({b, hkv, rows, d}));
  auto [out, lse] = at::_scaled_dot_product_flash_attention_for_cpu(
      qf, head_dim_contiguous(k_cache), head_dim_contiguous(v_cache), 0.0, false, mask, scale);
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
