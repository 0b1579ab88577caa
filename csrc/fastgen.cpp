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
