#pragma once
// A CPU execution model for fastgen's CUDA C++ kernels (the `cuda_emu` backend). Header-only, a
// test and development build: the same kernel source (csrc/cuda/*.cu, *.cuh) compiles as host
// C++ against this file and runs on CPU tensors, the way TRITON_INTERPRET=1 runs the Triton
// kernels. Never part of the shipped extension.
//
// Execution:
//  - blocks run one after another on the calling thread (a launch holds a process-wide lock);
//  - the threads of a block are fibers (ucontext) on that thread, switched only at barriers, so
//    a thread runs from one barrier to the next without interruption;
//  - __syncthreads() parks the fiber until every live thread of the block is parked there;
//    __syncwarp() and every warp shuffle park it until every live lane of its warp is parked
//    at a warp barrier (a shuffle deposits its value first, reads its source lane's after);
//    a block where neither can ever complete (a divergent barrier) is reported, not hung;
//  - threadIdx / blockIdx / blockDim / gridDim are thread-locals the scheduler sets before it
//    switches into a fiber;
//  - static __shared__ variables live in one linker section (fgemu_shared), dynamic shared
//    memory (FASTGEN_EXTERN_SHARED) in a per-launch buffer;
//  - atomics are plain read-modify-writes (fibers never interleave inside one);
//  - WMMA fragments hold the whole tile in every lane (reference semantics: fp32 products and
//    sums); store_matrix_sync writes element e from lane e % 32 only, so a read of another
//    lane's elements without a __syncwarp in between sees stale data, as on the GPU.
//
// Race mode, FASTGEN_CUDA_EMU_RACE=1 (read at each launch): the warps get random priorities,
// reshuffled at every __syncthreads, and the next fiber to run is a random ready lane of the
// highest-priority warp with one (seed FASTGEN_CUDA_EMU_SEED, default 0): warps run as far
// ahead of one another as the barriers allow, lanes in a shuffled order (plain mode: first-in
// first-out), and all shared
// memory (static and dynamic) is filled with 0xFF bytes (NaN for every float type) at the
// start of each block. A missing barrier then shows up as NaN or a wrong value in the tests.
#include <ucontext.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- keywords that compile away -----------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Static shared memory: one copy per variable (blocks run one at a time), in a section whose
// bounds the race mode fills.
#define __shared__ __attribute__((section("fgemu_shared"))) static
// `extern __shared__ T name[];` cannot be a macro-able declaration on the host: kernels write
// FASTGEN_EXTERN_SHARED(T, name) (csrc/cuda/launch.h gives the CUDA spelling).
#define FASTGEN_EXTERN_SHARED(T, name) T* name = reinterpret_cast<T*>(::fastgen_emu::dynamic_shared())

// ---- vector types ---------------------------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
struct __attribute__((aligned(8))) float2 { float x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

// ---- 16-bit float types ---------------------------------------------------------------------
struct __half {
  uint16_t __x;
};
struct __nv_bfloat16 {
  uint16_t __x;
};

namespace fastgen_emu {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// IEEE binary16, round to nearest even (subnormals, overflow to inf, NaN kept quiet).
inline uint16_t half_from_float(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (ax < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    // value in units of 2^-24, rounded to nearest even
    const float a = bits_float(ax);
    const float scaled = a * 16777216.0f;  // exact (power of two)
    const float r = std::nearbyint(scaled);  // default rounding mode: to nearest even
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(r));
  }
  const uint32_t mant = ax & 0x7fffffu;
  const uint32_t exp = (ax >> 23) - 127 + 15;
  uint32_t h = (exp << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // carries into the exponent correctly
  return static_cast<uint16_t>(sign | h);
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {
    const float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

inline uint16_t bf16_from_float(float f) {
  uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(x >> 16);
}

inline float bf16_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

}  // namespace fastgen_emu

inline float __half2float(__half h) { return fastgen_emu::half_to_float(h.__x); }
inline __half __float2half_rn(float f) { return __half{fastgen_emu::half_from_float(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return fastgen_emu::bf16_to_float(b.__x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{fastgen_emu::bf16_from_float(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

// ---- intrinsics -----------------------------------------------------------------------------
inline float __expf(float x) { return ::expf(x); }
inline float __logf(float x) { return ::logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / ::sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / ::sqrt(x); }
inline void sincospif(float x, float* s, float* c) {
  const double a = 3.14159265358979323846 * static_cast<double>(x);
  *s = static_cast<float>(::sin(a));
  *c = static_cast<float>(::cos(a));
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
inline void __threadfence() {}
inline void __threadfence_block() {}
[[noreturn]] inline void __trap() {
  std::fprintf(stderr, "fastgen cuda_emu: __trap() in block (%u, %u, %u) thread (%u, %u, %u)\n", blockIdx.x,
               blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
  std::abort();
}
// CUDA's overloaded min / max (any pair of arithmetic types, the usual conversions).
template <typename A, typename B, typename = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <typename A, typename B, typename = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}

// ---- the scheduler --------------------------------------------------------------------------
namespace fastgen_emu {

// Fiber switch. x86-64: six callee-saved registers and the stack pointer (no signal-mask system
// call, unlike swapcontext, which costs a syscall per switch); elsewhere: ucontext.
#if defined(__x86_64__)
#define FASTGEN_EMU_FAST_SWITCH 1
// switch_stack(&save, next): push the callee-saved registers, store rsp in *save, load next,
// pop the next fiber's registers and return into it.
__attribute__((naked, noinline)) static void switch_stack(void** /*save*/, void* /*next*/) {
  asm volatile(
      "pushq %rbp\n\t"
      "pushq %rbx\n\t"
      "pushq %r12\n\t"
      "pushq %r13\n\t"
      "pushq %r14\n\t"
      "pushq %r15\n\t"
      "movq %rsp, (%rdi)\n\t"
      "movq %rsi, %rsp\n\t"
      "popq %r15\n\t"
      "popq %r14\n\t"
      "popq %r13\n\t"
      "popq %r12\n\t"
      "popq %rbx\n\t"
      "popq %rbp\n\t"
      "ret\n\t");
}
#else
#define FASTGEN_EMU_FAST_SWITCH 0
#endif

enum class State : uint8_t { kReady, kBlockBarrier, kWarpBarrier, kDone };

struct Fiber {
#if FASTGEN_EMU_FAST_SWITCH
  void* sp;
#else
  ucontext_t ctx;
#endif
  State state;
  uint3 tid;
  uint8_t phase;  // which exchange buffer this lane's next shuffle uses
};

struct Block {
#if FASTGEN_EMU_FAST_SWITCH
  void* sched_sp = nullptr;
#else
  ucontext_t sched;
#endif
  std::vector<Fiber> fibers;
  std::vector<uint64_t> slots[2];  // shuffle exchange, per linear thread id, double-buffered
  int current = 0;
  int nthreads = 0;
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
  std::exception_ptr error;
};

struct Context {
  Block block;
  std::vector<char*> stacks;
  std::vector<unsigned char> dynamic;  // dynamic shared memory of the running launch
  unsigned char* dynamic_ptr = nullptr;
};

constexpr size_t kStackBytes = 256 * 1024;

inline Context& context() {
  static Context ctx;  // launches hold launch_mutex(): one user at a time
  return ctx;
}

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

inline unsigned char* dynamic_shared() { return context().dynamic_ptr; }

inline bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] != '\0' && std::string(v) != "0";
}

inline void park(State s) {
  Block& b = context().block;
  Fiber& f = b.fibers[b.current];
  f.state = s;
#if FASTGEN_EMU_FAST_SWITCH
  switch_stack(&f.sp, b.sched_sp);
#else
  swapcontext(&f.ctx, &b.sched);
#endif
}

inline int linear_tid() {
  return static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}

// Shuffle: deposit `v`, wait for the warp, read lane `src(lane)` of the same deposit round.
template <typename T, typename F>
inline T exchange(T v, F src_of_lane) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "cuda_emu: shuffles of at most 8 bytes");
  static_assert(std::is_trivially_copyable_v<T>, "cuda_emu: shuffles of trivially copyable values");
  Block& b = context().block;
  const int t = b.current;
  const int phase = b.fibers[t].phase;
  b.fibers[t].phase ^= 1;
  uint64_t raw = 0;
  std::memcpy(&raw, &v, sizeof(T));
  b.slots[phase][t] = raw;
  park(State::kWarpBarrier);
  const int lane = t % 32, base = t - lane;
  const int warp_size = std::min(32, b.nthreads - base);
  const int src = src_of_lane(lane);
  if (src < 0 || src >= warp_size) return v;
  T out;
  raw = b.slots[phase][base + src];
  std::memcpy(&out, &raw, sizeof(T));
  return out;
}

inline void fiber_main() {
  Block& b = context().block;
  try {
    b.body(b.body_arg);
  } catch (...) {
    if (!b.error) b.error = std::current_exception();
  }
  park(State::kDone);  // never resumed
  std::abort();
}

[[noreturn]] inline void deadlock(const Block& b) {
  std::string msg = "fastgen cuda_emu: barrier deadlock in block (" + std::to_string(blockIdx.x) + ", " +
                    std::to_string(blockIdx.y) + ", " + std::to_string(blockIdx.z) +
                    "): some threads wait at __syncthreads while others of the same warp wait at a "
                    "warp collective (divergent barrier)";
  (void)b;
  throw std::runtime_error(msg);
}

// Runs body(arg) as every thread of the current block (blockIdx etc. already set).
inline void run_block(Context& ctx, int nthreads, void (*body)(void*), void* arg, bool race, std::mt19937& rng) {
  Block& b = ctx.block;
  b.body = body;
  b.body_arg = arg;
  b.error = nullptr;
  b.nthreads = nthreads;
  b.fibers.resize(nthreads);
  b.slots[0].assign(nthreads, 0);
  b.slots[1].assign(nthreads, 0);
  while (static_cast<int>(ctx.stacks.size()) < nthreads) {
    void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("fastgen cuda_emu: cannot map a fiber stack");
    ctx.stacks.push_back(static_cast<char*>(p));
  }
  for (int t = 0; t < nthreads; ++t) {
    Fiber& f = b.fibers[t];
#if FASTGEN_EMU_FAST_SWITCH
    // as if switch_stack had been called from fiber_main's caller: six zero registers, then the
    // return into fiber_main, then a null return address (rsp % 16 == 8 at its entry, as after a call)
    void** top = reinterpret_cast<void**>(ctx.stacks[t] + kStackBytes);
    top[-1] = nullptr;
    top[-2] = reinterpret_cast<void*>(&fiber_main);
    for (int r = 3; r <= 8; ++r) top[-r] = nullptr;
    f.sp = top - 8;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = ctx.stacks[t];
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &b.sched;
    makecontext(&f.ctx, &fiber_main, 0);
#endif
    f.state = State::kReady;
    f.phase = 0;
    f.tid = uint3{static_cast<unsigned>(t % blockDim.x), static_cast<unsigned>((t / blockDim.x) % blockDim.y),
                  static_cast<unsigned>(t / (blockDim.x * blockDim.y))};
  }
  // Event-driven: a fiber runs until it parks; a warp is released the moment its last live
  // lane parks at a warp barrier, the block when its last live thread parks at __syncthreads.
  // Plain mode runs ready fibers first-in first-out (deterministic); race mode picks a random
  // ready fiber each time, so warps run ahead of one another and threads of a warp interleave.
  const int nwarps = (nthreads + 31) / 32;
  std::vector<int> ready(nthreads);
  size_t head = 0;  // plain mode: ready[head..] is the queue
  for (int t = 0; t < nthreads; ++t) ready[t] = t;
  std::vector<int> warp_live(nwarps), warp_waiting(nwarps, 0);
  for (int w = 0; w < nwarps; ++w) warp_live[w] = std::min(32, nthreads - 32 * w);
  int live = nthreads, block_waiting = 0;
  const auto release_warp = [&](int w) {
    for (int t = 32 * w, hi = std::min(nthreads, 32 * w + 32); t < hi; ++t)
      if (b.fibers[t].state == State::kWarpBarrier) {
        b.fibers[t].state = State::kReady;
        ready.push_back(t);
      }
    warp_waiting[w] = 0;
  };
  std::vector<int> warp_prio(nwarps);  // race mode: reshuffled at every block barrier
  for (int w = 0; w < nwarps; ++w) warp_prio[w] = w;
  if (race) std::shuffle(warp_prio.begin(), warp_prio.end(), rng);
  const auto release_block = [&]() {
    if (race) std::shuffle(warp_prio.begin(), warp_prio.end(), rng);
    for (int t = 0; t < nthreads; ++t)
      if (b.fibers[t].state == State::kBlockBarrier) {
        b.fibers[t].state = State::kReady;
        ready.push_back(t);
      }
    block_waiting = 0;
  };
  while (live > 0) {
    if (head == ready.size()) deadlock(b);
    int t;
    if (race) {
      // the ready fiber of the warp with the highest priority (warps run as far ahead of one
      // another as the barriers allow), a random one among that warp's ready lanes
      size_t best = ready.size();
      int best_prio = -1, ties = 0;
      for (size_t i = head; i < ready.size(); ++i) {
        const int p = warp_prio[ready[i] / 32];
        if (p > best_prio) {
          best_prio = p;
          best = i;
          ties = 1;
        } else if (p == best_prio && std::uniform_int_distribution<int>(0, ties++)(rng) == 0) {
          best = i;
        }
      }
      t = ready[best];
      ready[best] = ready.back();
      ready.pop_back();
    } else {
      t = ready[head++];
      if (head > 4096 && head * 2 > ready.size()) {  // keep the queue short
        ready.erase(ready.begin(), ready.begin() + static_cast<std::ptrdiff_t>(head));
        head = 0;
      }
    }
    b.current = t;
    threadIdx = b.fibers[t].tid;
#if FASTGEN_EMU_FAST_SWITCH
    switch_stack(&b.sched_sp, b.fibers[t].sp);
#else
    swapcontext(&b.sched, &b.fibers[t].ctx);
#endif
    if (b.error) std::rethrow_exception(b.error);
    const int w = t / 32;
    switch (b.fibers[t].state) {
      case State::kWarpBarrier:
        if (++warp_waiting[w] == warp_live[w]) release_warp(w);
        break;
      case State::kBlockBarrier:
        if (++block_waiting == live) release_block();
        break;
      case State::kDone:
        --live;
        --warp_live[w];
        if (warp_live[w] > 0 && warp_waiting[w] == warp_live[w]) release_warp(w);
        if (live > 0 && block_waiting == live) release_block();
        break;
      case State::kReady:
        break;
    }
  }
}

}  // namespace fastgen_emu

// ---- barriers and warp collectives ----------------------------------------------------------
inline void __syncthreads() { fastgen_emu::park(fastgen_emu::State::kBlockBarrier); }
inline void __syncwarp(unsigned /*mask*/ = 0xffffffffu) { fastgen_emu::park(fastgen_emu::State::kWarpBarrier); }

template <typename T>
inline T __shfl_sync(unsigned /*mask*/, T v, int src, int width = 32) {
  return fastgen_emu::exchange(v, [&](int lane) { return (lane / width) * width + ((src % width) + width) % width; });
}
template <typename T>
inline T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask, int width = 32) {
  return fastgen_emu::exchange(v, [&](int lane) {
    const int s = lane ^ lane_mask;
    return s / width == lane / width ? s : lane;
  });
}
template <typename T>
inline T __shfl_down_sync(unsigned /*mask*/, T v, unsigned delta, int width = 32) {
  return fastgen_emu::exchange(v, [&](int lane) {
    const int s = lane + static_cast<int>(delta);
    return s / width == lane / width ? s : lane;
  });
}
template <typename T>
inline T __shfl_up_sync(unsigned /*mask*/, T v, unsigned delta, int width = 32) {
  return fastgen_emu::exchange(v, [&](int lane) {
    const int s = lane - static_cast<int>(delta);
    return s >= 0 && s / width == lane / width ? s : lane;
  });
}
// Every live lane deposits its predicate (the shuffles' exchange round), then reads the warp's.
inline unsigned __ballot_sync(unsigned mask, int pred) {
  using namespace fastgen_emu;
  Block& b = context().block;
  const int t = b.current;
  const int phase = b.fibers[t].phase;
  b.fibers[t].phase ^= 1;
  b.slots[phase][t] = pred != 0;
  park(State::kWarpBarrier);
  const int base = t - t % 32, warp_size = std::min(32, b.nthreads - base);
  unsigned out = 0;
  for (int l = 0; l < warp_size; ++l)
    if (b.fibers[base + l].state != State::kDone && b.slots[phase][base + l] != 0) out |= 1u << l;
  return out & mask;
}

// ---- atomics (fibers never interleave inside one) -------------------------------------------
namespace fastgen_emu {
template <typename T, typename F>
inline T fetch_update(T* p, F f) {  // *p = f(*p), returning the old value
  const T old = *p;
  *p = f(old);
  return old;
}
}  // namespace fastgen_emu
template <typename T>
inline T atomicAdd(T* p, T v) { return fastgen_emu::fetch_update(p, [&](T o) { return o + v; }); }
template <typename T>
inline T atomicSub(T* p, T v) { return fastgen_emu::fetch_update(p, [&](T o) { return o - v; }); }
template <typename T>
inline T atomicMax(T* p, T v) { return fastgen_emu::fetch_update(p, [&](T o) { return o < v ? v : o; }); }
template <typename T>
inline T atomicMin(T* p, T v) { return fastgen_emu::fetch_update(p, [&](T o) { return v < o ? v : o; }); }
template <typename T>
inline T atomicExch(T* p, T v) { return fastgen_emu::fetch_update(p, [&](T) { return v; }); }
template <typename T>
inline T atomicCAS(T* p, T compare, T v) {
  return fastgen_emu::fetch_update(p, [&](T o) { return o == compare ? v : o; });
}

// ---- WMMA, reference semantics ---------------------------------------------------------------
namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;
  float x[rows * cols];  // the whole tile, in every lane
};

inline float to_f(float v) { return v; }
inline float to_f(__half v) { return __half2float(v); }
inline float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename Use, int M, int N, int K, typename T, typename L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, float v) {
  for (float& e : f.x) e = v;
}

// matrix_a / matrix_b: the layout is the fragment's
template <typename Use, int M, int N, int K, typename T, typename L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, L>;
  static_assert(!std::is_same_v<L, void>, "cuda_emu: matrix fragments need a layout");
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = to_f(std::is_same_v<L, row_major> ? p[r * ldm + c] : p[c * ldm + r]);
}

template <int M, int N, int K>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float, void>& f, const float* p, unsigned ldm,
                             layout_t layout) {
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.x[r * N + c] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}

// Lane l writes the elements e = l, l + 32, ... of the tile (row-major order): the GPU spreads
// the accumulator over the warp too, so another lane's part is there only after a __syncwarp.
template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float, void>& f, unsigned ldm,
                              layout_t layout) {
  const int lane = fastgen_emu::linear_tid() % 32;
  for (int e = lane; e < M * N; e += 32) {
    const int r = e / N, c = e % N;
    (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[e];
  }
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float, void>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, float, void>& c) {
  float out[M * N];
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      float acc = c.x[m * N + n];
      for (int k = 0; k < K; ++k) acc += a.x[m * K + k] * b.x[k * N + n];
      out[m * N + n] = acc;
    }
  std::memcpy(d.x, out, sizeof(out));
}

}  // namespace wmma
}  // namespace nvcuda

// ---- launch ---------------------------------------------------------------------------------
extern "C" {
extern unsigned char __start_fgemu_shared[] __attribute__((weak));
extern unsigned char __stop_fgemu_shared[] __attribute__((weak));
}

namespace fastgen_emu {

// Launches per kernel (the launch site's spelling, template arguments dropped): which kernels
// the tests executed (torch.ops.fastgen_emu.emu_kernel_launches, csrc/emu/module.cpp).
struct LaunchStats {
  uint64_t launches = 0, blocks = 0, threads = 0;
  std::map<std::string, uint64_t> per_kernel;
};
inline LaunchStats& stats() {
  static LaunchStats s;
  return s;
}
inline std::string kernel_base_name(const char* spelled) {
  std::string n(spelled);
  const auto lt = n.find('<');
  if (lt != std::string::npos) n.resize(lt);
  const auto colon = n.rfind("::");
  if (colon != std::string::npos) n = n.substr(colon + 2);
  while (!n.empty() && n.back() == ' ') n.pop_back();
  return n;
}

template <typename... P>
struct Launch {
  dim3 grid, block;
  size_t smem;
  const char* name;
  void (*kernel)(P...);

  template <typename... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(P), "cuda_emu: wrong number of kernel arguments");
    using Params = std::tuple<std::decay_t<P>...>;
    struct Call {
      void (*kernel)(P...);
      Params params;
    } call{kernel, Params(std::forward<Args>(args)...)};
    const int nthreads = static_cast<int>(block.x * block.y * block.z);
    if (nthreads <= 0 || nthreads > 1024 || block.z > 64)
      throw std::runtime_error("cuda_emu: invalid block size " + std::to_string(block.x) + "x" +
                               std::to_string(block.y) + "x" + std::to_string(block.z));
    if (grid.y > 65535 || grid.z > 65535 || grid.x == 0 || grid.y == 0 || grid.z == 0)
      throw std::runtime_error("cuda_emu: invalid grid " + std::to_string(grid.x) + "x" + std::to_string(grid.y) +
                               "x" + std::to_string(grid.z));
    std::lock_guard<std::mutex> lock(launch_mutex());
    Context& ctx = context();
    const bool race = env_flag("FASTGEN_CUDA_EMU_RACE");
    const char* seed_env = std::getenv("FASTGEN_CUDA_EMU_SEED");
    std::mt19937 rng(seed_env ? static_cast<unsigned>(std::strtoul(seed_env, nullptr, 10)) : 0u);
    ctx.dynamic.assign(smem + 128, 0);
    ctx.dynamic_ptr = ctx.dynamic.data() + (128 - reinterpret_cast<uintptr_t>(ctx.dynamic.data()) % 128) % 128;
    gridDim = grid;
    blockDim = block;
    ++stats().launches;
    ++stats().per_kernel[kernel_base_name(name)];
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          blockIdx = uint3{bx, by, bz};
          if (race) {
            std::memset(ctx.dynamic_ptr, 0xff, smem);
            if (__start_fgemu_shared != nullptr && __stop_fgemu_shared != nullptr)
              std::memset(__start_fgemu_shared, 0xff, static_cast<size_t>(__stop_fgemu_shared - __start_fgemu_shared));
          }
          run_block(
              ctx, nthreads,
              [](void* p) {
                auto* c = static_cast<Call*>(p);
                std::apply(c->kernel, c->params);
              },
              &call, race, rng);
          ++stats().blocks;
          stats().threads += nthreads;
        }
  }
};

template <typename... P>
inline Launch<P...> launch(dim3 grid, dim3 block, size_t smem, const char* name, void (*kernel)(P...)) {
  return Launch<P...>{grid, block, smem, name, kernel};
}

}  // namespace fastgen_emu
