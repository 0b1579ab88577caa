// Every native kernel schema, defined once. The public ops (torch.ops.fastgen.<name>, with
// backend choice, fake and autograd) are defined by the Python registry in
// fastgen/ops/_registry.py and call these `*_native` kernels for the "cpu" and "cuda" backends.
// Kernels: csrc/cpu/*.cpp (CPU key) and csrc/cuda/*.cu (CUDA key).
#include <Python.h>
#include <torch/library.h>

// FASTGEN_CUDA_EMU (csrc/emu/module.cpp): the same schemas in the `fastgen_emu` namespace, for
// fastgen._C_emu, the CUDA kernels built against the CPU execution model (backend "cuda_emu").
#ifdef FASTGEN_CUDA_EMU
#define FASTGEN_MODULE_INIT PyInit__C_emu
#define FASTGEN_MODULE_NAME "_C_emu"
#define FASTGEN_SCHEMA_NAMESPACE fastgen_emu
#else
#define FASTGEN_MODULE_INIT PyInit__C
#define FASTGEN_MODULE_NAME "_C"
#define FASTGEN_SCHEMA_NAMESPACE fastgen
#endif
#define FASTGEN_TORCH_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)

extern "C" {
// A real Python module so `import fastgen._C` loads this library (and runs the registrations).
PyObject* FASTGEN_MODULE_INIT(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, FASTGEN_MODULE_NAME, "fastgen native kernels",
                                          -1, nullptr};
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
#ifdef FASTGEN_WITH_CUDA
  PyModule_AddIntConstant(m, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(m, "WITH_CUDA", 0);
#endif
  // The CUDA architectures the kernels were compiled for ("8.0;9.0+PTX": SASS per entry, PTX
  // where "+PTX"), from setup.py; "" without CUDA. fastgen info checks the GPU against it.
#ifdef FASTGEN_CUDA_ARCHS
  PyModule_AddStringConstant(m, "CUDA_ARCHS", FASTGEN_CUDA_ARCHS);
#else
  PyModule_AddStringConstant(m, "CUDA_ARCHS", "");
#endif
#if defined(CPU_CAPABILITY_AVX512)
  PyModule_AddStringConstant(m, "CPU_SIMD", "AVX512");
#elif defined(CPU_CAPABILITY_AVX2)
  PyModule_AddStringConstant(m, "CPU_SIMD", "AVX2");
#else
  PyModule_AddStringConstant(m, "CPU_SIMD", "none");
#endif
  return m;
}
}

FASTGEN_TORCH_LIBRARY(FASTGEN_SCHEMA_NAMESPACE, m) {
  // gaussian_reparam_kl: z = mu + exp(logvar/2) * eps, kl[b] = -1/2 sum(1 + logvar - mu^2 - exp(logvar))
  m.def("gaussian_reparam_kl_native(Tensor mu, Tensor logvar, Tensor eps) -> (Tensor, Tensor)");
  m.def("gaussian_reparam_kl_backward_native(Tensor grad_z, Tensor grad_kl, Tensor mu, "
        "Tensor logvar, Tensor eps) -> (Tensor, Tensor)");
  // vq_nearest: per row of z [N, D], the nearest of codebook [K, D] -> (indices int64 [N],
  // squared distances [N]); metric "l2" or "cosine"; never builds the N x K matrix.
  m.def("vq_nearest_native(Tensor z, Tensor codebook, str metric) -> (Tensor, Tensor)");
  // vq_nearest_search: the same search with the CPU stage-1 mode named ('auto', 'exact', 'bf16',
  // 'bf16_emulated'; cpu/vq_certified.cpp) -> (indices, distances, per-row candidate count,
  // -1 where the row fell back to the exact kernel, 0 where the whole call ran it).
  m.def("vq_nearest_search_native(Tensor z, Tensor codebook, str metric, str mode) -> (Tensor, Tensor, Tensor)");
  // vq_cpu_bf16_isa: 0 none, 1 AVX512-BF16, 2 AMX-BF16 (what `auto` runs stage 1 on).
  m.def("vq_cpu_bf16_isa(Tensor like) -> int");
  // vq_quantize: nearest code, taming's straight-through value and loss -> (z_q, loss, indices);
  // backward -> (dz, dcodebook), dcodebook summed per code in a fixed order (no float atomics).
  m.def("vq_quantize_native(Tensor z, Tensor codebook, float beta, bool legacy) -> (Tensor, Tensor, Tensor)");
  m.def("vq_quantize_backward_native(Tensor grad_zq, Tensor grad_loss, Tensor z, Tensor codebook, "
        "Tensor indices, float beta, bool legacy) -> (Tensor, Tensor)");
  // vq_code_sums: per-code counts [K] and row sums [K, D]; vq_ema_update: the same sums fused
  // with the in-place EMA of cluster_size / embed_sum -> (codebook, perplexity).
  m.def("vq_code_sums_native(Tensor z, Tensor indices, int num_codes) -> (Tensor, Tensor)");
  m.def("vq_ema_update_native(Tensor z, Tensor indices, Tensor(a!) cluster_size, Tensor(b!) embed_sum, "
        "float decay, float eps) -> (Tensor, Tensor)");
  // flash_attention: softmax(q k^T * scale) v over (B, H, L, Dh) with GQA, top-left causal mask
  // and key padding mask (True = padded) -> (out, lse); backward -> (dq, dk, dv).
  // dropout_p > 0: probability (b, h, i, j) is kept iff philox rand(seed, ((b*H + h)*Lq + i)*Lk + j)
  // >= dropout_p (common/philox.h), kept ones scaled by 1 / (1 - dropout_p); seed: int64 (1,).
  m.def("flash_attention_native(Tensor q, Tensor k, Tensor v, bool causal, float? scale, "
        "Tensor? key_padding_mask, float dropout_p, Tensor? seed) -> (Tensor, Tensor)");
  m.def("flash_attention_backward_native(Tensor grad_out, Tensor grad_lse, Tensor q, Tensor k, Tensor v, "
        "Tensor out, Tensor lse, bool causal, float? scale, Tensor? key_padding_mask, float dropout_p, "
        "Tensor? seed) -> (Tensor, Tensor, Tensor)");
  // decode_attention: the Lq newest queries of each sequence against a KV cache holding
  // cache_seqlens[b] valid positions (bottom-right causal) -> out.
  m.def("decode_attention_native(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_seqlens, float? scale) "
        "-> Tensor");
  // flows
  // affine_coupling: y = x_b * s + shift (inverse: (x_b - shift) / s), s = exp(log s) with log s
  // from raw_scale by scale_fn; logdet[b] = +-sum log s (csrc/common/flow.h)
  m.def("affine_coupling_native(Tensor x_b, Tensor shift, Tensor raw_scale, str scale_fn, "
        "float clamp, bool inverse) -> (Tensor, Tensor)");
  m.def("affine_coupling_backward_native(Tensor grad_y, Tensor grad_logdet, Tensor x_b, "
        "Tensor shift, Tensor raw_scale, str scale_fn, float clamp, bool inverse) -> (Tensor, Tensor)");
  // actnorm: x (N, C, *spatial); y = (x + loc) * exp(log_scale) (inverse: x * exp(-log_scale) - loc),
  // logdet[b] = +-S * sum(log_scale), S = spatial size
  m.def("actnorm_native(Tensor x, Tensor loc, Tensor log_scale, bool inverse) -> (Tensor, Tensor)");
  m.def("actnorm_backward_native(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor loc, "
        "Tensor log_scale, bool inverse) -> (Tensor, Tensor, Tensor)");
  // invertible_conv1x1: y[n] = W @ x[n] (inverse: W^-1 @ x[n]) per position of x (N, C, *spatial),
  // W = perm @ (strictly-lower(lower) + I) @ (strictly-upper(upper) + diag(sign * exp(log_s))),
  // logdet[b] = +-S * sum(log_s); backward -> (dx, dlower, dupper, dlog_s) (csrc/common/invconv_host.h)
  m.def("invertible_conv1x1_native(Tensor x, Tensor perm, Tensor lower, Tensor upper, Tensor sign, "
        "Tensor log_s, bool inverse) -> (Tensor, Tensor)");
  m.def("invertible_conv1x1_backward_native(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor perm, "
        "Tensor lower, Tensor upper, Tensor sign, Tensor log_s, bool inverse) -> (Tensor, Tensor, Tensor, Tensor)");
  // flow_nll: per-sample -(log p(z) + logdet), prior 'gaussian' or 'logistic'; bits/dim with n_bins
  m.def("flow_nll_native(Tensor z, Tensor logdet, str prior, int? n_bins) -> Tensor");
  m.def("flow_nll_backward_native(Tensor grad_nll, Tensor z, str prior, int? n_bins) -> Tensor");
  // diffusion: forward noising and one sampler step, each one elementwise pass. Step scalars are
  // gathered from schedule tables by a 0-d timestep / step_index (host or device tensor).
  // model_output_uncond (or empty): classifier-free guidance u + guidance_scale (c - u), fused.
  m.def("add_noise_native(Tensor original_samples, Tensor noise, Tensor timesteps, "
        "Tensor alphas_cumprod) -> Tensor");
  m.def("get_velocity_native(Tensor sample, Tensor noise, Tensor timesteps, Tensor alphas_cumprod) -> Tensor");
  m.def("ddim_step_native(Tensor model_output, Tensor sample, Tensor noise, Tensor timestep, "
        "Tensor alphas_cumprod, Tensor alphas_cumprod_prev, Tensor threshold, "
        "Tensor model_output_uncond, float guidance_scale, float eta, "
        "str prediction_type, bool clip_sample, float clip_sample_range, "
        "bool use_clipped_model_output, Tensor? seed=None, int seed_offset=0) -> (Tensor, Tensor)");
  m.def("ddpm_step_native(Tensor model_output, Tensor sample, Tensor noise, Tensor timestep, "
        "Tensor alphas_cumprod, Tensor alphas_cumprod_prev, Tensor threshold, "
        "Tensor model_output_uncond, float guidance_scale, str prediction_type, "
        "str variance_type, bool clip_sample, float clip_sample_range, Tensor? seed=None, "
        "int seed_offset=0) -> (Tensor, Tensor)");
  m.def("flow_euler_step_native(Tensor model_output, Tensor sample, Tensor noise, Tensor step_index, "
        "Tensor sigmas, Tensor model_output_uncond, float guidance_scale) -> Tensor");
  m.def("flow_heun_step_native(Tensor model_output, Tensor model_output_next, Tensor sample, "
        "Tensor step_index, Tensor sigmas) -> Tensor");
  // gan: bias_act (x + bias along dim, activation, gain) and its backward (dx, dbias; dbias is an
  // empty tensor when bias is None).
  m.def("bias_act_native(Tensor x, Tensor? bias, str act, float alpha, float gain, int dim) -> Tensor");
  m.def("bias_act_backward_native(Tensor grad, Tensor x, Tensor? bias, str act, float alpha, "
        "float gain, int dim) -> (Tensor, Tensor)");
  // gan: group_norm_silu (GroupNorm over num_groups, optional affine, then SiLU when act) ->
  // (y, mean, rstd) with mean/rstd (N, num_groups) in the math dtype; backward -> (dx, dweight,
  // dbias), dweight/dbias empty when weight/bias is None.
  m.def("group_norm_silu_native(Tensor x, Tensor? weight, Tensor? bias, int num_groups, float eps, "
        "bool act) -> (Tensor, Tensor, Tensor)");
  m.def("group_norm_silu_backward_native(Tensor grad, Tensor x, Tensor? weight, Tensor? bias, "
        "Tensor mean, Tensor rstd, int num_groups, bool act) -> (Tensor, Tensor, Tensor)");
  // gan: info_nce_loss (NT-Xent over the 2N samples of cat(z1, z2)) -> (loss, lse[2N]) in the
  // math dtype, blockwise; backward -> (dz1, dz2) from the saved per-anchor logsumexp.
  m.def("info_nce_loss_native(Tensor z1, Tensor z2, float temperature) -> (Tensor, Tensor)");
  m.def("info_nce_loss_backward_native(Tensor grad_loss, Tensor z1, Tensor z2, Tensor lse, "
        "float temperature) -> (Tensor, Tensor)");
}
