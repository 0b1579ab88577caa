#pragma once
// Math shared by the CPU (.cpp) and CUDA (.cu) kernels of group_norm_silu. Its SiLU is bias_act's
// (act_forward / act_slope<Act::kSilu> in common/gan.h).
#include "common/gan.h"
#include "common/macros.h"

namespace fastgen {

// ---- group_norm_silu --------------------------------------------------------------------------
// Per (sample, group) of m elements, with xhat = (x - mean) * rstd, y = xhat * w + b and
// gy = dL/dy (already through SiLU):  s1 = sum w * gy,  s2 = sum w * gy * xhat
// = sum_c w_c * rstd * sa_c where sa_c = sum over the channel of gy * (x - mean). Then
//   dx = rstd * w * gy + k1 * (x - mean) + k2,  k1 = -rstd^2 * s2 / m,  k2 = -rstd * s1 / m.
template <typename T>
FASTGEN_HD void group_norm_dx_coefs(T rstd, T s1, T s2, T m, T* k1, T* k2) {
  *k1 = -rstd * rstd * s2 / m;
  *k2 = -rstd * s1 / m;
}

}  // namespace fastgen
