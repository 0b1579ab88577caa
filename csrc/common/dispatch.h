#pragma once
// The dtype dispatch of the float kernels, CPU and CUDA: fp32, fp64, fp16 and bf16 (math in
// at::opmath_type<scalar_t>).
#include <ATen/Dispatch.h>

#define FASTGEN_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
