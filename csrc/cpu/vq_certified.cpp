// Certified two-stage nearest-code search for vq_nearest on CPU (fp32 math: fp32, fp16, bf16
// inputs). Results are bit-identical to the exact kernels in cpu/vq.cpp: same indices (lowest
// on ties), same distances.
//
// Stage 1 computes approximate partial distances a_j = ||e_j||^2 - 2 z.e_j from bf16-rounded z
// and e (one at::mm per row block x code tile: oneDNN runs it on AMX / AVX512-BF16 where the
// CPU has them), fused per tile with each row's running minimum and candidate collection (never
// an N x K tensor). A rigorous per-row bound B (common/vq_bound.h) on |a_j - p_j|, where p_j is the fp32
// value the exact kernel computes for the same (row, code), keeps every code with
// a_j <= min_i a_i + 2B. Stage 2 recomputes the candidates with the exact kernels' arithmetic
// (an FMA chain from ||e_j||^2 over -2 z_c e_jc in coordinate order, at::vec::fmadd as they
// use) and finishes the row with their finish_row. Rows whose candidate set outgrows kCap, or
// whose data make the bound useless (non-finite, huge), go through the exact kernel.
//
// Why the candidate set holds the exact answer. For every code j, |a_j - p_j| <= B, so
// p_j >= a_j - B and, for the exact winner j*, p_j* <= p_i <= a_i + B for every i, so
// p_j* <= U = min_i a_i + B. Every code j with p_j = p_j* (the winner and all codes tied with
// it) has a_j - B <= p_j = p_j* <= U, i.e. a_j <= min_i a_i + 2B: all are candidates, and the
// exact minimum over the candidates, lowest index first, is the exact kernel's answer. During
// the scan the running minimum is >= the final one, so a code kept against the running
// threshold is a superset; entries above the final threshold are dropped before stage 2.
//
// The bound B and its derivation: common/vq_bound.h (shared with the CUDA kernel and, as the same
// formula in Python, the Triton launcher); here the exact kernel's type is fp32 and, in bf16
// mode, at::mm rounds its dot to bf16 once (w = 1). B takes A and E at their maxima over the
// codebook (one threshold per row); thresholds are rounded up to fp32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/vq.h"
#include "common/vq_bound.h"
#include "cpu/vq_search.h"

namespace fastgen {
namespace {

using at::vec::Vectorized;

enum class Stage1 { kExact, kBf16, kBf16Emulated };

constexpr int64_t kCap = 64;        // candidates per row before the row falls back
constexpr int64_t kTileN = 1024;    // rows per stage-1 GEMM
constexpr int64_t kTileK = 1024;    // codes per stage-1 GEMM
constexpr int64_t kAutoMinD = 32;   // auto mode: below this the exact direct kernels are cheaper

// 0: no bf16 dot-product instructions, 1: AVX512-BF16, 2: AMX-BF16 (with the OS saving the
// AVX-512 / AMX register state). oneDNN picks the kernel itself; this only says whether stage 1
// runs on bf16 hardware, i.e. whether the two-stage search can beat the fp32 kernels.
int detect_bf16_isa() {
#if defined(__x86_64__) || defined(_M_X64)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0;  // OSXSAVE
  unsigned xlo = 0, xhi = 0;
  __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  const uint64_t xcr0 = (static_cast<uint64_t>(xhi) << 32) | xlo;
  if (__get_cpuid_max(0, nullptr) < 7) return 0;
  __cpuid_count(7, 0, a, b, c, d);
  const unsigned max_sub = a;
  const bool amx = (d & (1u << 22)) && (d & (1u << 24)) && (xcr0 & (3u << 17)) == (3u << 17);
  const bool avx512_os = (xcr0 & 0xE6) == 0xE6;
  if (amx && avx512_os) return 2;
  if (max_sub >= 1 && avx512_os) {
    __cpuid_count(7, 1, a, b, c, d);
    if (a & (1u << 5)) return 1;
  }
#endif
  return 0;
}

int bf16_isa() {
  static const int isa = detect_bf16_isa();
  return isa;
}

bool exact_only_env() {
  const char* v = std::getenv("FASTGEN_VQ_EXACT_ONLY");
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

// vq_certified.vq_nearest_search checks the mode first (CPU_MODES), before the search's checks.
void check_mode(c10::string_view mode) {
  TORCH_CHECK_VALUE(mode == "auto" || mode == "exact" || mode == "bf16" || mode == "bf16_emulated",
                    "fastgen: mode must be one of ('auto', 'exact', 'bf16', 'bf16_emulated'), got " + py_str(mode));
}

Stage1 parse_mode(c10::string_view mode, int64_t d) {
  check_mode(mode);
  if (mode == "exact") return Stage1::kExact;
  if (mode == "bf16") return Stage1::kBf16;
  if (mode == "bf16_emulated") return Stage1::kBf16Emulated;
  if (exact_only_env() || bf16_isa() == 0 || d < kAutoMinD) return Stage1::kExact;
  return Stage1::kBf16;
}

// Per-row candidate list: indices in increasing order and their stage-1 values.
struct Candidates {
  float amin, thr;
  int64_t count;  // -1: overflowed (the row falls back)
};

// drop entries above thr (they can no longer be candidates), keeping the order
inline int64_t compact(int32_t* idx, float* val, int64_t count, float thr) {
  int64_t m = 0;
  for (int64_t i = 0; i < count; ++i)
    if (val[i] <= thr) idx[m] = idx[i], val[m] = val[i], ++m;
  return m;
}

inline float load_f(const float* p) { return *p; }
inline float load_f(const at::BFloat16* p) { return static_cast<float>(*p); }

// One row of a stage-1 tile: a_j = en_j - 2 s_j for the tile's codes, the running minimum, and
// the codes within 2B of it appended to the row's list.
template <typename S>
void scan_row(const S* s, const float* en, int64_t k0, int64_t kb, double two_b, float* scratch,
              Candidates& st, int32_t* cidx, float* cval) {
  using V = Vectorized<float>;
  constexpr int64_t W = V::size();
  float tmin = std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < kb; ++j) scratch[j] = en[j] - 2.f * load_f(s + j);
  int64_t j = 0;
  if (kb >= W) {
    V vmin(tmin);
    for (; j + W <= kb; j += W) vmin = at::vec::minimum(vmin, V::loadu(scratch + j));
    float lanes[W];
    vmin.store(lanes);
    for (int64_t l = 0; l < W; ++l) tmin = std::min(tmin, lanes[l]);
  }
  for (; j < kb; ++j) tmin = std::min(tmin, scratch[j]);
  if (tmin < st.amin) {
    st.amin = tmin;
    st.thr = vq_round_up_f32(static_cast<double>(tmin) + two_b);
  }
  if (st.count < 0 || !(tmin <= st.thr)) return;
  for (j = 0; j < kb; ++j) {
    if (!(scratch[j] <= st.thr)) continue;
    if (st.count == kCap) {
      st.count = compact(cidx, cval, st.count, st.thr);
      if (st.count == kCap) {
        st.count = -1;
        return;
      }
    }
    cidx[st.count] = static_cast<int32_t>(k0 + j);
    cval[st.count] = scratch[j];
    ++st.count;
  }
}

// Stage 2: the exact kernels' arithmetic on the candidates, W codes per vector as they do.
void rerank_row(const float* zrow, int64_t d, const float* e, const float* enorm, const int32_t* cidx,
                int64_t count, float* zm2, float* panel, float* dist, int64_t* idx) {
  using V = Vectorized<float>;
  constexpr int64_t W = V::size();
  for (int64_t c = 0; c < d; ++c) zm2[c] = -2.f * zrow[c];
  const float inf = std::numeric_limits<float>::infinity();
  float bestv = inf;
  int64_t besti = -1;
  for (int64_t i0 = 0; i0 < count; i0 += W) {
    const int64_t m = std::min(W, count - i0);
    float en[W];
    for (int64_t l = 0; l < W; ++l) {
      const int64_t code = cidx[i0 + std::min(l, m - 1)];  // missing lanes repeat the last code
      en[l] = enorm[code];
      const float* er = e + code * d;
      for (int64_t c = 0; c < d; ++c) panel[c * W + l] = er[c];
    }
    V acc = V::loadu(en);
    for (int64_t c = 0; c < d; ++c) acc = at::vec::fmadd(V(zm2[c]), V::loadu(panel + c * W), acc);
    float out[W];
    acc.store(out);
    for (int64_t l = 0; l < m; ++l)  // candidates in increasing index order: strict < keeps the lowest
      if (out[l] < bestv) bestv = out[l], besti = cidx[i0 + l];
  }
  finish_row(bestv, besti, zrow, d, dist, idx);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> exact_with_status(const at::Tensor& z, const at::Tensor& e,
                                                                 c10::string_view metric) {
  auto [idx, dist] = vq_nearest_exact_cpu(z, e, metric);
  return {idx, dist, at::zeros({z.size(0)}, z.options().dtype(at::kInt))};
}

// status per row: the number of stage-2 candidates, -1 where the row fell back to the exact
// kernel, 0 everywhere when the whole call ran the exact kernel.
std::tuple<at::Tensor, at::Tensor, at::Tensor> vq_nearest_search_cpu(const at::Tensor& z_in, const at::Tensor& e_in,
                                                                     c10::string_view metric, c10::string_view mode_name) {
  check_mode(mode_name);
  check_vq_nearest(z_in, e_in, metric);
  const int64_t n = z_in.size(0), k = e_in.size(0), d = z_in.size(1);
  const Stage1 mode = parse_mode(mode_name, d);
  // fp64 keeps the exact kernels (their BLAS path at D > 32 has no fixed summation order to
  // re-rank against); K >= 2^24 and huge D are outside the fp32 kernels' / the bound's range.
  if (mode == Stage1::kExact || opmath_dtype(z_in.scalar_type()) != at::kFloat || n == 0 || d == 0 ||
      k >= (int64_t(1) << 24) || d > (int64_t(1) << 20))
    return exact_with_status(z_in, e_in, metric);
  auto [z, e] = vq_math_inputs(z_in, e_in, metric);
  const auto enorm = (e * e).sum(1).contiguous();  // as the exact kernels compute it
  const float* pe = e.const_data_ptr<float>();
  const float* pen = enorm.const_data_ptr<float>();
  // codebook facts for the bound (common/vq_bound.h); a non-finite or huge codebook keeps the
  // exact kernel
  VqCodebookFacts facts{0, 0, 0};
  for (int64_t j = 0; j < k; ++j) {
    double s = 0;
    for (int64_t c = 0; c < d; ++c) {
      const double x = pe[j * d + c];
      s += x * x;
      facts.abs_max = std::max(facts.abs_max, std::fabs(x));
    }
    if (!(s <= 1e300) || !std::isfinite(pen[j])) return exact_with_status(z_in, e_in, metric);
    facts.norm2_max = std::max(facts.norm2_max, s);
    facts.en_max = std::max(facts.en_max, static_cast<double>(pen[j]));
  }
  if (!vq_codebook_ok(facts)) return exact_with_status(z_in, e_in, metric);
  const VqBound bound = vq_bound(d, std::ldexp(1.0, -24), vq_bf16_input_unit(false), mode == Stage1::kBf16,
                                 /*en_rounded=*/false);

  // stage-1 operands: bf16-rounded z and e (bf16 for at::mm in bf16; their exact fp32 values
  // for the emulated mode)
  at::Tensor z1 = z.to(at::kBFloat16), e1 = e.to(at::kBFloat16);
  if (mode == Stage1::kBf16Emulated) z1 = z1.to(at::kFloat), e1 = e1.to(at::kFloat);
  const auto tile_dtype = z1.scalar_type();

  auto idx = at::empty({n}, z.options().dtype(at::kLong));
  auto dist = at::empty({n}, z.options());
  auto status = at::empty({n}, z.options().dtype(at::kInt));
  const float* pz = z.const_data_ptr<float>();
  int64_t* pidx = idx.mutable_data_ptr<int64_t>();
  float* pdist = dist.mutable_data_ptr<float>();
  int32_t* pstat = status.mutable_data_ptr<int32_t>();

  const int64_t tn = std::min(n, kTileN), tk = std::min(k, kTileK);
  auto tile = at::empty({tn, tk}, z.options().dtype(tile_dtype));
  std::vector<Candidates> st(tn);
  std::vector<double> two_b(tn);
  std::vector<int32_t> cidx(tn * kCap);
  std::vector<float> cval(tn * kCap);
  std::vector<char> eligible(tn);
  for (int64_t n0 = 0; n0 < n; n0 += kTileN) {
    const int64_t nb = std::min(kTileN, n - n0);
    // per-row bound; rows with non-finite or huge values take the exact kernel
    at::parallel_for(0, nb, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* zr = pz + (n0 + r) * d;
        double s = 0, amax = 0;
        for (int64_t c = 0; c < d; ++c) {
          const double x = zr[c];
          s += x * x;
          amax = std::max(amax, std::fabs(x));
        }
        eligible[r] = vq_row_two_b(bound, s, amax, facts, &two_b[r]);
        st[r] = Candidates{std::numeric_limits<float>::infinity(), std::numeric_limits<float>::infinity(),
                           eligible[r] ? 0 : -1};
      }
    });
    const auto zb = z1.narrow(0, n0, nb);
    for (int64_t k0 = 0; k0 < k; k0 += kTileK) {
      const int64_t kb = std::min(kTileK, k - k0);
      auto s = (nb == tile.size(0) && kb == tile.size(1)) ? tile : at::empty({nb, kb}, tile.options());
      at::mm_out(s, zb, e1.narrow(0, k0, kb).t());
      const auto scan = [&](auto* ps) {
        at::parallel_for(0, nb, 16, [&](int64_t r0, int64_t r1) {
          std::vector<float> scratch(kb);
          for (int64_t r = r0; r < r1; ++r) {
            if (st[r].count < 0) continue;
            scan_row(ps + r * kb, pen + k0, k0, kb, two_b[r], scratch.data(), st[r], cidx.data() + r * kCap,
                     cval.data() + r * kCap);
          }
        });
      };
      if (tile_dtype == at::kFloat) scan(s.const_data_ptr<float>());
      else scan(s.const_data_ptr<at::BFloat16>());
    }
    // stage 2 for the block's rows
    at::parallel_for(0, nb, 16, [&](int64_t r0, int64_t r1) {
      std::vector<float> zm2(d), panel(d * Vectorized<float>::size());
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t row = n0 + r;
        int64_t count = st[r].count;
        if (count >= 0) count = compact(cidx.data() + r * kCap, cval.data() + r * kCap, count, st[r].thr);
        if (count <= 0) {  // fell back (count 0 cannot happen for an eligible row; treated alike)
          pstat[row] = -1;
          continue;
        }
        pstat[row] = static_cast<int32_t>(count);
        rerank_row(pz + row * d, d, pe, pen, cidx.data() + r * kCap, count, zm2.data(), panel.data(),
                   pdist + row, pidx + row);
      }
    });
  }
  // the rows that fell back: the exact kernel on just those rows (rows are independent there)
  const auto fallback = (status < 0).nonzero().squeeze(1);
  if (fallback.numel() > 0) {
    auto [fi, fd] = vq_nearest_exact_cpu(z.index_select(0, fallback), e, "l2");
    idx.index_copy_(0, fallback, fi);
    dist.index_copy_(0, fallback, fd);
  }
  return {idx, dist, status};
}

int64_t vq_cpu_bf16_isa(const at::Tensor&) { return bf16_isa(); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> vq_nearest_cpu(const at::Tensor& z, const at::Tensor& codebook,
                                                  c10::string_view metric) {
  auto [idx, dist, status] = vq_nearest_search_cpu(z, codebook, metric, "auto");
  return {idx, dist};
}

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("vq_nearest_search_native", &vq_nearest_search_cpu);
  m.impl("vq_cpu_bf16_isa", &vq_cpu_bf16_isa);
}

}  // namespace fastgen
