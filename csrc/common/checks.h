#pragma once
// Argument checks shared by the CPU and CUDA entry points; they raise ValueError / TypeError
// (TORCH_CHECK_VALUE / _TYPE) naming the argument. Where they run (fastgen/ops/_registry.py):
// - ops registered with native_checks=True: on the cpu backend these checks are the only ones
//   before the kernel (the Python check is skipped), so they must be complete for such an op.
//   Tracing (the fake), the reference / triton / cuda_emu backends and CUDA tensors run the
//   Python check first (NATIVE_CHECK_DEVICES in _registry.py says why not CUDA).
// - other ops: the Python check runs first on every backend; these guard direct
//   torch.ops.fastgen.*_native callers.
// Either way a check here raises the Python check's exception type and exact words, in its
// order: tests/test_op_contract.py calls each C++ op directly on every generated bad input and
// compares, and checks that every backend rejects the same bad inputs with the same words.
#include <torch/library.h>
#include <ATen/core/Tensor.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

namespace fastgen {

// Python's spelling of shapes, dtypes and devices. Every C++ message reads exactly like the
// Python check's (fastgen/ops/_checks.py words them): "(3, 4)", "(3,)", "torch.int32", "cuda:0".
// Integers go through std::to_string and devices through Device::str(), not through an
// ostream in this library's code (see NATIVE_CHECK_DEVICES in fastgen/ops/_registry.py): every
// message of csrc/ is built as a std::string from these, none from TORCH_CHECK's variadic
// ostream formatting of numbers, shapes or devices.
inline std::string py_int(int64_t v) { return std::to_string(v); }

inline std::string py_shape(c10::IntArrayRef sizes) {
  std::string out = "(";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(sizes[i]);
  }
  return out + (sizes.size() == 1 ? ",)" : ")");
}

inline std::string py_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kComplexHalf: return "torch.complex32";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    case at::kBool: return "torch.bool";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    default: {
      std::string name = c10::toString(t);
      for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      return "torch." + name;
    }
  }
}

inline std::string py_device(const at::Device& d) { return d.str(); }

// repr(v) of a Python float, as f"{v}" / f"{v!r}" print it: "0.25", "-1.0", "1e-05", "1.5e+16",
// "inf", "nan". The shortest digits that read back as v, in fixed notation for decimal exponents
// -4 <= e < 16 (with ".0" when whole), else in exponent notation with at least two digits.
inline std::string py_float(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  char buf[64];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*e", prec - 1, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s(buf);  // [-]d[.ddd]e(+|-)XX
  const bool neg = s[0] == '-';
  if (neg) s.erase(0, 1);
  const size_t epos = s.find('e');
  const int exp10 = std::atoi(s.c_str() + epos + 1);
  std::string digits;
  for (size_t i = 0; i < epos; ++i)
    if (s[i] != '.') digits += s[i];
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  const int decpt = exp10 + 1;  // v = 0.digits * 10**decpt
  const int nd = static_cast<int>(digits.size());
  std::string out;
  if (decpt <= -4 || decpt > 16) {
    out = digits.substr(0, 1);
    if (nd > 1) out += "." + digits.substr(1);
    std::snprintf(buf, sizeof buf, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    out += buf;
  } else if (decpt <= 0) {
    out = "0." + std::string(static_cast<size_t>(-decpt), '0') + digits;
  } else if (decpt >= nd) {
    out = digits + std::string(static_cast<size_t>(decpt - nd), '0') + ".0";
  } else {
    out = digits.substr(0, static_cast<size_t>(decpt)) + "." + digits.substr(static_cast<size_t>(decpt));
  }
  return neg ? "-" + out : out;
}

// f"{v:g}" of a Python float (C's %g, with nan unsigned as Python prints it).
inline std::string py_format_g(double v) {
  if (std::isnan(v)) return "nan";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// repr(s) of a Python str ('l2', "it's", 'a\\nb'): single quotes unless s holds ' and no ",
// backslash escapes for the quote, the backslash and control characters; bytes >= 0x80 (UTF-8)
// are kept as they are.
inline std::string py_str(c10::string_view s) {
  const bool dq = s.find('\'') != c10::string_view::npos && s.find('"') == c10::string_view::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (const char ch : s) {
    const auto u = static_cast<unsigned char>(ch);
    if (ch == q || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (ch == '\n') {
      out += "\\n";
    } else if (ch == '\r') {
      out += "\\r";
    } else if (ch == '\t') {
      out += "\\t";
    } else if (u < 0x20 || u == 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", u);
      out += hex;
    } else {
      out += ch;
    }
  }
  return out + q;
}

// The dtypes fastgen's kernels take (FLOAT_DTYPES in fastgen/ops/_checks.py).
inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

// The integer dtypes the index arguments take (_INT_DTYPES in fastgen/ops/diffusion.py).
inline bool is_index_dtype(at::ScalarType t) {
  return t == at::kChar || t == at::kByte || t == at::kShort || t == at::kInt || t == at::kLong;
}

// _checks.float_tensor
inline void check_float_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), std::string("fastgen: ") + name +
                   " must be float16, bfloat16, float32 or float64, got " + py_dtype(t.scalar_type()));
}

// Every tensor argument of a kernel must lie on its main input's device: a CUDA kernel handed
// host memory or another GPU's memory faults or reads garbage, a CPU kernel handed device memory
// crashes. CUDA entry points check this before their device guard (which is set from the main
// input, so a host main input next to a CUDA argument is reported here, by name).
inline void check_same_device(const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                              const char* name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), std::string("fastgen: ") + name + " is on " +
                    py_device(t.device()) + " but " + ref_name + " is on " + py_device(ref.device()));
}

inline void check_same_device(const at::Tensor& ref, const char* ref_name,
                              const std::optional<at::Tensor>& t, const char* name) {
  if (t.has_value()) check_same_device(ref, ref_name, *t, name);
}

// _checks.like: t matches ref in dtype (a float one), shape and device.
inline void check_same_float_tensor(const at::Tensor& ref, const char* ref_name,
                                    const at::Tensor& t, const char* name) {
  check_float_tensor(t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), std::string("fastgen: ") + name + " has dtype " +
                   py_dtype(t.scalar_type()) + " but " + ref_name + " has " + py_dtype(ref.scalar_type()));
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), std::string("fastgen: ") + name + " has shape " +
                    py_shape(t.sizes()) + " but " + ref_name + " has " + py_shape(ref.sizes()));
  check_same_device(ref, ref_name, t, name);
}

// _checks.per_sample: a float vector with one entry per sample of ref, on ref's device.
inline void check_per_sample(const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                             const char* name) {
  check_float_tensor(t, name);
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == ref.size(0), std::string("fastgen: ") + name +
                    " must have shape (" + py_int(ref.size(0)) + ",), got " + py_shape(t.sizes()));
  check_same_device(ref, ref_name, t, name);
}

// Per-sample scalars of a rank>=1 tensor: the dtype the reductions are kept in.
inline at::ScalarType opmath_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace fastgen
