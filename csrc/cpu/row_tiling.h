#pragma once
// Per-sample work on a (rows, cols) view split into (row, chunk) tasks of at most kChunk
// elements, so a few large samples still use every core. A reduction writes one partial per
// task and reduce_rows sums them per row in chunk order: results do not depend on the thread
// count. (The CUDA launchers' tiling is csrc/cuda/reduce.cuh's RowTiling.)
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <vector>

namespace fastgen {

struct RowTasks {
  static constexpr int64_t kChunk = 1 << 14;  // elements per task
  int64_t rows, cols, chunks_per_row, tasks, grain;
  explicit RowTasks(const at::Tensor& t) {
    rows = t.size(0);
    cols = rows == 0 ? 0 : t.numel() / rows;
    chunks_per_row = std::max<int64_t>(1, (cols + kChunk - 1) / kChunk);
    tasks = rows * chunks_per_row;
    grain = std::max<int64_t>(1, kChunk / std::max<int64_t>(1, std::min(cols, kChunk)));
  }
  int64_t row(int64_t task) const { return task / chunks_per_row; }
  int64_t start(int64_t task) const { return (task % chunks_per_row) * kChunk; }  // within the row
  int64_t offset(int64_t task) const { return row(task) * cols + start(task); }    // in the tensor
  int64_t length(int64_t task) const { return std::min(kChunk, cols - start(task)); }

  // out[r] = sign * sum of the row's partials, in chunk order.
  void reduce_rows(const std::vector<double>& partial, at::Tensor& out, double sign) const {
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fastgen_reduce_rows", [&] {
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      for (int64_t r = 0; r < rows; ++r) {
        double s = 0;
        for (int64_t c = 0; c < chunks_per_row; ++c) s += partial[r * chunks_per_row + c];
        o[r] = static_cast<scalar_t>(sign * s);
      }
    });
  }
};

}  // namespace fastgen
