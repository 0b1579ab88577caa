// Every native kernel schema, defined once. The public ops (torch.ops.fastgen.<name>, with
// backend choice, fake and autograd) are defined by the Python registry in
// fastgen/ops/_registry.py and call these `*_native` kernels for the "cpu" and "cuda" backends.
// Kernels: csrc/cpu/*.cpp (CPU key) and csrc/cuda/*.cu (CUDA key).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// A real Python module so `import fastgen._C` loads this library (and runs the registrations).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "fastgen native kernels",
                                          -1, nullptr};
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
#ifdef FASTGEN_WITH_CUDA
  PyModule_AddIntConstant(m, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(m, "WITH_CUDA", 0);
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

TORCH_LIBRARY(fastgen, m) {
  // gaussian_reparam_kl: z = mu + exp(logvar/2) * eps, kl[b] = -1/2 sum(1 + logvar - mu^2 - exp(logvar))
  m.def("gaussian_reparam_kl_native(Tensor mu, Tensor logvar, Tensor eps) -> (Tensor, Tensor)");
  m.def("gaussian_reparam_kl_backward_native(Tensor grad_z, Tensor grad_kl, Tensor mu, "
        "Tensor logvar, Tensor eps) -> (Tensor, Tensor)");
  // vq_nearest: per row of z [N, D], the nearest of codebook [K, D] -> (indices int64 [N],
  // squared distances [N]); metric "l2" or "cosine"; never builds the N x K matrix.
  m.def("vq_nearest_native(Tensor z, Tensor codebook, str metric) -> (Tensor, Tensor)");
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
        "bool use_clipped_model_output) -> (Tensor, Tensor)");
  m.def("ddpm_step_native(Tensor model_output, Tensor sample, Tensor noise, Tensor timestep, "
        "Tensor alphas_cumprod, Tensor alphas_cumprod_prev, Tensor threshold, "
        "Tensor model_output_uncond, float guidance_scale, str prediction_type, "
        "str variance_type, bool clip_sample, float clip_sample_range) -> (Tensor, Tensor)");
  m.def("flow_euler_step_native(Tensor model_output, Tensor sample, Tensor noise, Tensor step_index, "
        "Tensor sigmas, Tensor model_output_uncond, float guidance_scale) -> Tensor");
  m.def("flow_heun_step_native(Tensor model_output, Tensor model_output_next, Tensor sample, "
        "Tensor step_index, Tensor sigmas) -> Tensor");
}
