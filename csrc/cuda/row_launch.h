#pragma once
// The launchers' side of csrc/cuda/reduce.cuh's RowTiling: the grid (sample, chunk) of a
// per-sample reduction over t viewed as (t.size(0), rest), checked to fit grid x.
#include <ATen/ATen.h>

#include "common/checks.h"
#include "cuda/reduce.cuh"

namespace fastgen {

struct RowLaunch : reduce::RowTiling {
  explicit RowLaunch(const at::Tensor& t) : reduce::RowTiling(t.size(0), t.numel()) {
    TORCH_CHECK_VALUE(fits(), "fastgen: batch size " + py_int(rows) + " exceeds 2^31-1");
  }
};

}  // namespace fastgen
