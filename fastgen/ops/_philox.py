"""Counter-based Philox4x32-10 in plain PyTorch: the reference for in-kernel random numbers.

Every fastgen kernel that makes its own random numbers (diffusion noise, attention dropout) draws
them as Triton's `tl.rand(seed, offset)` / `tl.randn(seed, offset)` do, and this module is the
spec they are tested against (bit for bit for the integers and uniforms; normals through
log / cos / sqrt, so to the last ulp of the math library: see `randn`).

The mapping, as in triton/language/random.py (triton 3.x):
  key     (k0, k1) = (seed & 0xffffffff, seed >> 32)      seed: 64 bits (int64 bit pattern)
  counter (c0, c1, c2, c3) = (offset & 0xffffffff, offset >> 32, 0, 0)   offset: int64
  philox4x32 with 10 rounds -> four uint32 words (r0, r1, r2, r3)
  rand:  r0 viewed as int32 x, x < 0 -> ~x (so x in [0, 2^31)), float32(x) * 4.6566127342e-10
         (float32 product) -> [0, 1)
  randn: u1 = rand from r0, u2 = rand from r1 (both as above),
         Box-Muller n = sqrt(-2 log(max(u1, 1e-7))) * cos(2 pi u2), in float32.
A kernel passes its flat element index (int64) as the offset, so the value an element gets does
not depend on the backend's tiling or thread count. (Triton kernels must use int64 offsets: an
int32 offset block maps to c1 = 0, which agrees only below 2^31.)

Integer arithmetic here is on int64 tensors holding uint32 values (torch has no uint32 mul
with wraparound on every build); the 32x32 -> 64-bit products are split in 16-bit halves so
nothing overflows. Everything is elementwise on the offset tensor's device: no host sync, a
seed may be a device tensor.
"""
import torch

MASK32 = 0xFFFFFFFF
PHILOX_KEY_A = 0x9E3779B9    # golden ratio
PHILOX_KEY_B = 0xBB67AE85    # sqrt(3) - 1
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
N_ROUNDS = 10
UNIFORM_SCALE = 4.6566127342e-10   # largest float32 s with (2^31 - 1) * s < 1 after rounding
BOX_MULLER_MIN_U = 1.0e-7          # u1 is clamped here before the log (Triton's choice)
TWO_PI = 6.283185307179586


def _mulhilo(a, b):
    """(hi, lo) 32-bit words of the 64-bit product of two uint32 values (int64 tensors / ints)."""
    b_hi, b_lo = b >> 16, b & 0xFFFF
    low = a * b_lo                                  # < 2^48
    mid = a * b_hi + (low >> 16)                    # < 2^48 + 2^32
    hi = mid >> 16
    lo = ((mid & 0xFFFF) << 16) | (low & 0xFFFF)
    return hi & MASK32, lo & MASK32


def philox4x32(c0, c1, c2, c3, k0, k1, n_rounds=N_ROUNDS):
    """Philox4x32 rounds on a counter (c0..c3) and key (k0, k1): uint32 values in int64 tensors
    (keys may be Python ints or tensors that broadcast). Returns the four output words."""
    for _ in range(n_rounds):
        hi_b, lo_b = _mulhilo(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & MASK32
        k1 = (k1 + PHILOX_KEY_B) & MASK32
    return c0, c1, c2, c3


def seed_words(seed):
    """(k0, k1): the low and high 32 bits of a 64-bit seed (Python int in [-2^63, 2^64) or an
    integer tensor with one value, read as its int64 bit pattern; never synced to the host)."""
    if isinstance(seed, torch.Tensor):
        if seed.dtype.is_floating_point or seed.dtype == torch.bool or seed.numel() != 1:
            raise TypeError(f"fastgen: seed must be an integer tensor with one value, got "
                            f"{seed.dtype} of shape {tuple(seed.shape)}")
        s = seed.reshape(()).to(torch.int64)
        return s & MASK32, (s >> 32) & MASK32
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):
        raise TypeError(f"fastgen: seed must be an int or an integer tensor, got {type(seed).__name__}")
    s = seed.__index__()
    if not -(1 << 63) <= s < (1 << 64):
        raise ValueError(f"fastgen: seed must fit in 64 bits, got {s}")
    s &= (1 << 64) - 1
    return s & MASK32, s >> 32


def _offsets(offset):
    offset = torch.as_tensor(offset)
    if offset.dtype.is_floating_point or offset.dtype == torch.bool:
        raise TypeError(f"fastgen: offset must be an integer tensor, got {offset.dtype}")
    return offset.to(torch.int64)


def randint4x(seed, offset, n_rounds=N_ROUNDS):
    """Four uint32 words (int64 tensors shaped like offset) per offset, as tl.randint4x with an
    int64 offset block."""
    offset = _offsets(offset)
    k0, k1 = seed_words(seed)
    if isinstance(k0, torch.Tensor):
        k0, k1 = k0.to(offset.device), k1.to(offset.device)
    zero = torch.zeros_like(offset)
    return philox4x32(offset & MASK32, (offset >> 32) & MASK32, zero, zero, k0, k1, n_rounds)


def uint_to_uniform(x):
    """uint32 words (int64 tensor) -> float32 in [0, 1), as Triton's uint_to_uniform_float."""
    signed = torch.where(x >= (1 << 31), x - (1 << 32), x)
    folded = torch.where(signed < 0, -signed - 1, signed)   # ~x
    return folded.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32, device=x.device)


def box_muller(u1, u2):
    """Two float32 uniforms -> two float32 normals (Triton's pair_uniform_to_normal)."""
    u1 = torch.clamp_min(u1, BOX_MULLER_MIN_U)
    th = torch.tensor(TWO_PI, dtype=torch.float32, device=u2.device) * u2
    r = torch.sqrt(-2.0 * torch.log(u1))
    return r * torch.cos(th), r * torch.sin(th)


def rand(seed, offset, n_rounds=N_ROUNDS):
    """float32 uniforms in [0, 1) shaped like offset: tl.rand(seed, offset), bit for bit."""
    r0, _, _, _ = randint4x(seed, offset, n_rounds)
    return uint_to_uniform(r0)


def randn(seed, offset, n_rounds=N_ROUNDS):
    """float32 standard normals shaped like offset: tl.randn(seed, offset). The uniforms match
    bit for bit; log / cos / sqrt are torch's float32 ones, so a value may differ from another
    math library's (numpy under the Triton interpreter, glibc in the C++ kernels, CUDA's on a
    GPU) in the last ulps."""
    r0, r1, _, _ = randint4x(seed, offset, n_rounds)
    n1, _ = box_muller(uint_to_uniform(r0), uint_to_uniform(r1))
    return n1


def randn_like(sample, seed, offset=0):
    """Normals for every element of `sample`: element i (flat, row-major) gets
    randn(seed, offset + i); float32, shaped like sample."""
    idx = torch.arange(sample.numel(), dtype=torch.int64, device=sample.device) + offset
    return randn(seed, idx).reshape(sample.shape)


def seed_from_generator(generator=None, device=None):
    """A fresh 64-bit seed drawn from `generator` (its state advances, so consecutive draws
    differ and a re-seeded generator repeats them), as a 0-d int64 tensor on the generator's
    device, or on `device` from the default generator there. No host-device sync: the
    draw is an ordinary random op on that device (CUDA-graph capturable)."""
    if generator is not None:
        device = generator.device
    seed = torch.empty((), dtype=torch.int64, device=device)
    return seed.random_(generator=generator)


def seed_tensor(generator=None, seed=None, device=None):
    """The seed of a kernel's random numbers as an int64 tensor, from either `generator` (a fresh
    draw on its device, see `seed_from_generator`), or `seed` (an int, any 64-bit value, becomes
    a 0-d host tensor holding its int64 bit pattern; a tensor is returned unchanged), or, with
    neither, the default generator of `device` (None: there is no seed)."""
    if generator is not None and seed is not None:
        raise ValueError("fastgen: pass either generator or seed, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"fastgen: generator must be a torch.Generator, got {type(generator).__name__}")
        return seed_from_generator(generator)
    if seed is None:
        return None if device is None else seed_from_generator(None, device)
    if isinstance(seed, torch.Tensor):
        return seed
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):
        raise TypeError(f"fastgen: seed must be an int or an int64 tensor, got {type(seed).__name__}")
    value = seed.__index__()
    if not -(1 << 63) <= value < (1 << 64):
        raise ValueError(f"fastgen: seed must fit in 64 bits, got {value}")
    return torch.tensor(value - (1 << 64) if value >= (1 << 63) else value, dtype=torch.int64)
