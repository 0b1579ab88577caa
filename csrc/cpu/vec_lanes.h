#pragma once
// Loads and stores that give the math type's SIMD vectors for any input dtype: fp16/bf16 widen
// to two fp32 vectors per Vectorized<scalar_t>, fp32/fp64 pass through. Every CPU kernel that
// widens uses this one.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <tuple>
#include <type_traits>

namespace fastgen {

template <typename scalar_t>
struct VecLanes {
  using opmath_t = at::opmath_type<scalar_t>;
  using VecM = at::vec::Vectorized<opmath_t>;
  static constexpr bool reduced = !std::is_same_v<scalar_t, opmath_t>;
  static constexpr int parts = reduced ? 2 : 1;            // math vectors per input vector
  static constexpr int64_t step = at::vec::Vectorized<scalar_t>::size();  // elements per load

  static void load(const scalar_t* p, VecM* out) {
    if constexpr (reduced) {
      auto v = at::vec::Vectorized<scalar_t>::loadu(p);
      std::tie(out[0], out[1]) = at::vec::convert_to_float<scalar_t>(v);
    } else {
      out[0] = VecM::loadu(p);
    }
  }
  static void store(scalar_t* p, const VecM* in) {
    if constexpr (reduced) {
      at::vec::convert_from_float<scalar_t>(in[0], in[1]).store(p);
    } else {
      in[0].store(p);
    }
  }
  static opmath_t sum(const VecM& v) {
    return at::vec::vec_reduce_all<opmath_t>([](VecM a, VecM b) { return a + b; }, v);
  }
};

}  // namespace fastgen
