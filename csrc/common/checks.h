#pragma once
// Argument checks shared by the CPU and CUDA entry points; they raise ValueError / TypeError
// (TORCH_CHECK_VALUE / _TYPE) naming the argument. Where they run (fastgen/ops/_registry.py):
// - ops registered with native_checks=True: on the cpu backend these checks are the only ones
//   before the kernel (the Python check is skipped; it runs only after a rejection here, to
//   raise the Python wording where the two differ). They must be complete for such an op.
//   Tracing (the fake), the reference / triton / cuda_emu backends and CUDA tensors run the
//   Python check first (NATIVE_CHECK_DEVICES in _registry.py says why not CUDA).
// - other ops: the Python check runs first on every backend; these guard what it does not cover
//   and direct torch.ops.fastgen.*_native callers.
// tests/test_op_contract.py checks that every backend rejects the same bad inputs with the same words.
#include <torch/library.h>
#include <ATen/core/Tensor.h>

#include <optional>

namespace fastgen {

// Every tensor argument of a kernel must lie on its main input's device: a CUDA kernel handed
// host memory or another GPU's memory faults or reads garbage, a CPU kernel handed device memory
// crashes. CUDA entry points check this before their device guard (which is set from the main
// input, so a host main input next to a CUDA argument is reported here, by name).
inline void check_same_device(const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                              const char* name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), "fastgen: ", name, " is on ", t.device(), " but ",
                    ref_name, " is on ", ref.device());
}

inline void check_same_device(const at::Tensor& ref, const char* ref_name,
                              const std::optional<at::Tensor>& t, const char* name) {
  if (t.has_value()) check_same_device(ref, ref_name, *t, name);
}

inline void check_same_float_tensor(const at::Tensor& ref, const char* ref_name,
                                    const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "fastgen: ", name,
                   " must be a floating-point tensor, got ", t.scalar_type());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "fastgen: ", name, " has dtype ",
                   t.scalar_type(), " but ", ref_name, " has ", ref.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), "fastgen: ", name, " has shape ", t.sizes(),
                    " but ", ref_name, " has shape ", ref.sizes());
  check_same_device(ref, ref_name, t, name);
}

// Per-sample scalars of a rank>=1 tensor: the dtype the reductions are kept in.
inline at::ScalarType opmath_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace fastgen
