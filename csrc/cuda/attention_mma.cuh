// Tensor-core flash attention forward for fp16 / bf16 at head dims 64 and 128 (WMMA, sm_80+).
//
// One block of 4 warps owns 64 query rows (16 per warp) of one (batch, head) and walks the keys
// in tiles of 64:
//   S_w  = Q_w K_tile^T             (wmma 16x16x16, fp32 accumulate)       -> shared, per warp
//   online softmax over S_w rows    (two lanes per row, exp2, running max / sum in registers)
//   O_w  = alpha * O_w + P_w V_tile (P rounded to the input dtype, fp32 accumulate)
// The fp32 output accumulator lives in shared memory: WMMA does not say which accumulator
// element belongs to which row, and the per-row rescale needs to know. Masks (top-left causal,
// key padding, the tail of the last key tile) are applied to S before the softmax; rows that
// see no key at all get output 0 and lse -inf, as the reference defines. Dropout (Philox, the
// mask of every backend) scales or zeroes P before the P V product; the sums l stay undropped.
#pragma once

#include <cstdint>

#include "common/philox.h"
#include "cuda/kernel.h"  // __half, __nv_bfloat16 and nvcuda::wmma (CUDA's, or the CPU execution model's)

namespace fastgen {
namespace mma_attention {

namespace wmma = nvcuda::wmma;

constexpr int kRows = 64;      // query rows per block
constexpr int kCols = 64;      // keys per tile
constexpr int kWarps = kRows / 16;
constexpr int kThreads = 32 * kWarps;
constexpr int kPadT = 8;       // row padding (elements) of the 16-bit tiles: 16 B, keeps 32 B alignment
constexpr int kPadF = 4;       // row padding of the fp32 tiles
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

struct Params {
  const void* q;
  const void* k;
  const void* v;
  const bool* key_padding;  // (B, Lk) True = padded, or nullptr
  void* out;                // (B, H, Lq, D) contiguous
  float* lse;               // (B, H, Lq)
  int64_t h, hkv, lq, lk;
  int64_t sqb, sqh, sqm, skb, skh, skn, svb, svh, svn;  // strides in elements, unit last stride
  float scale_log2;         // softmax scale * log2(e)
  const int64_t* seed;      // dropout seed (device, one value), or nullptr: no dropout
  float drop_p, drop_scale; // keep iff philox rand(seed, ((b*H + h)*Lq + i)*Lk + j) >= drop_p
  bool causal;
  bool vec16;               // every row start is 16-byte aligned: load 8 elements at a time
};

template <int D>
struct Smem {
  static constexpr int ldt = D + kPadT;        // q, k, v tiles (16-bit)
  static constexpr int lds = kCols + kPadF;    // scores (fp32)
  static constexpr int ldp = kCols + kPadT;    // probabilities (16-bit)
  static constexpr int ldo = D + kPadF;        // output accumulator (fp32)
  static constexpr size_t q = sizeof(uint16_t) * kRows * ldt;
  static constexpr size_t kv = sizeof(uint16_t) * kCols * ldt;
  static constexpr size_t s = sizeof(float) * 16 * lds;   // per warp
  static constexpr size_t p = sizeof(uint16_t) * 16 * ldp;
  static constexpr size_t o = sizeof(float) * 16 * ldo;
  static constexpr size_t bytes = q + 2 * kv + kWarps * (s + p + o);
};

// rows x D tile of 16-bit values from global (row stride `stride`) into shared (row pitch ldt);
// rows at or past `valid` are zero.
template <int D>
__device__ __forceinline__ void load_tile(uint16_t* dst, const uint16_t* src, int64_t stride, int64_t valid,
                                          int rows, bool vec16) {
  constexpr int ldt = Smem<D>::ldt;
  if (vec16) {
    constexpr int chunks = D / 8;
    for (int idx = threadIdx.x; idx < rows * chunks; idx += kThreads) {
      const int r = idx / chunks, c = (idx % chunks) * 8;
      uint4 val = make_uint4(0u, 0u, 0u, 0u);
      if (r < valid) val = *reinterpret_cast<const uint4*>(src + r * stride + c);
      *reinterpret_cast<uint4*>(dst + r * ldt + c) = val;
    }
  } else {
    for (int idx = threadIdx.x; idx < rows * D; idx += kThreads) {
      const int r = idx / D, c = idx % D;
      dst[r * ldt + c] = r < valid ? src[r * stride + c] : uint16_t(0);
    }
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attn_fwd_mma_kernel(Params prm) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using S = Smem<D>;
  FASTGEN_EXTERN_SHARED(unsigned char, smem);
  uint16_t* q_s = reinterpret_cast<uint16_t*>(smem);
  uint16_t* k_s = reinterpret_cast<uint16_t*>(smem + S::q);
  uint16_t* v_s = reinterpret_cast<uint16_t*>(smem + S::q + S::kv);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  unsigned char* mine = smem + S::q + 2 * S::kv + warp * (S::s + S::p + S::o);
  float* s_w = reinterpret_cast<float*>(mine);
  T* p_w = reinterpret_cast<T*>(mine + S::s);
  float* o_w = reinterpret_cast<float*>(mine + S::s + S::p);

  const int64_t bh = blockIdx.x, b = bh / prm.h, h = bh % prm.h, hk = h / (prm.h / prm.hkv);
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * kRows;
  const uint16_t* q = static_cast<const uint16_t*>(prm.q) + b * prm.sqb + h * prm.sqh;
  const uint16_t* k = static_cast<const uint16_t*>(prm.k) + b * prm.skb + hk * prm.skh;
  const uint16_t* v = static_cast<const uint16_t*>(prm.v) + b * prm.svb + hk * prm.svh;
  const bool* pad = prm.key_padding == nullptr ? nullptr : prm.key_padding + b * prm.lk;

  load_tile<D>(q_s, q + q0 * prm.sqm, prm.sqm, prm.lq - q0, kRows, prm.vec16);
  for (int idx = lane; idx < 16 * S::ldo; idx += 32) o_w[idx] = 0.f;

  // lane pair (2r, 2r + 1) owns row r of this warp's 16; each lane half of the tile's columns
  const int r = lane / 2, half = lane % 2;
  const int64_t i = q0 + warp * 16 + r;  // query row
  float m = -INFINITY, l = 0.f;
  const uint64_t seed = prm.seed == nullptr ? 0 : static_cast<uint64_t>(*prm.seed);
  const int64_t drop_row = (bh * prm.lq + i) * prm.lk;  // philox offset of (i, key 0)

  const int64_t kv_end = prm.causal ? (q0 + kRows < prm.lk ? q0 + kRows : prm.lk) : prm.lk;
  for (int64_t j0 = 0; j0 < kv_end; j0 += kCols) {
    __syncthreads();  // the previous tile's k/v are no longer read
    load_tile<D>(k_s, k + j0 * prm.skn, prm.skn, prm.lk - j0, kCols, prm.vec16);
    load_tile<D>(v_s, v + j0 * prm.svn, prm.svn, prm.lk - j0, kCols, prm.vec16);
    __syncthreads();

    // S_w = Q_w K^T: K is stored (key, dim) row-major, i.e. K^T column-major
#pragma unroll
    for (int n = 0; n < kCols / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bt;
        wmma::load_matrix_sync(a, reinterpret_cast<const T*>(q_s + warp * 16 * S::ldt + kk * 16), S::ldt);
        wmma::load_matrix_sync(bt, reinterpret_cast<const T*>(k_s + n * 16 * S::ldt + kk * 16), S::ldt);
        wmma::mma_sync(acc, a, bt, acc);
      }
      wmma::store_matrix_sync(s_w + n * 16, acc, S::lds, wmma::mem_row_major);
    }
    __syncwarp();

    // online softmax of row r over this tile, in log2 units
    float* srow = s_w + r * S::lds + half * (kCols / 2);
    float tile_max = -INFINITY;
#pragma unroll 8
    for (int c = 0; c < kCols / 2; ++c) {
      const int64_t j = j0 + half * (kCols / 2) + c;
      const bool seen = j < prm.lk && (!prm.causal || j <= i) && (pad == nullptr || !pad[j]);
      const float t = seen ? srow[c] * prm.scale_log2 : -INFINITY;
      srow[c] = t;
      tile_max = fmaxf(tile_max, t);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    const float m_new = fmaxf(m, tile_max);
    const float base = m_new == -INFINITY ? 0.f : m_new;  // a row that has seen nothing stays at 0
    const float alpha = exp2f(m - base);
    float sum = 0.f;
    T* prow = p_w + r * S::ldp + half * (kCols / 2);
#pragma unroll 8
    for (int c = 0; c < kCols / 2; ++c) {
      const float p = exp2f(srow[c] - base);
      sum += p;  // the softmax sum before dropout
      float kept = p;
      if (prm.seed != nullptr) {
        const int64_t j = j0 + half * (kCols / 2) + c;
        kept = philox::rand(seed, static_cast<uint64_t>(drop_row + j)) >= prm.drop_p ? p * prm.drop_scale : 0.f;
      }
      prow[c] = from_float<T>(kept);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * alpha + sum;
    m = m_new;
    float* orow = o_w + r * S::ldo + half * (D / 2);
#pragma unroll 8
    for (int c = 0; c < D / 2; ++c) orow[c] *= alpha;
    __syncwarp();

    // O_w += P_w V
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, o_w + n * 16, S::ldo, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kCols / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bv;
        wmma::load_matrix_sync(a, p_w + kk * 16, S::ldp);
        wmma::load_matrix_sync(bv, reinterpret_cast<const T*>(v_s + kk * 16 * S::ldt + n * 16), S::ldt);
        wmma::mma_sync(acc, a, bv, acc);
      }
      wmma::store_matrix_sync(o_w + n * 16, acc, S::ldo, wmma::mem_row_major);
    }
    __syncwarp();
  }

  // the warp writes its 16 rows together (consecutive lanes, consecutive elements)
  T* out = static_cast<T*>(prm.out) + (bh * prm.lq + q0 + warp * 16) * D;
  for (int idx = lane; idx < 16 * D; idx += 32) {
    const int rr = idx / D, c = idx % D;
    const float l_rr = __shfl_sync(0xffffffffu, l, 2 * rr);
    // l == 0: the row saw no key (output 0, lse -inf); a NaN score makes l NaN: output NaN, lse
    // -inf (the reference's where(denom > 0, ...))
    if (q0 + warp * 16 + rr < prm.lq) out[idx] = from_float<T>(l_rr != 0.f ? o_w[rr * S::ldo + c] / l_rr : 0.f);
  }
  if (half == 0 && i < prm.lq) prm.lse[bh * prm.lq + i] = l > 0.f ? (m + log2f(l)) * kLn2 : -INFINITY;
#else
  __trap();  // the host never launches this below sm_80
#endif
}

}  // namespace mma_attention
}  // namespace fastgen
