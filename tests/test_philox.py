"""The shared Philox4x32-10 reference (fastgen/ops/_philox.py) against Random123's known answers
and Triton's tl.randint / tl.rand / tl.randn (interpreter here, the GPU when there is one)."""
import numpy as np
import pytest
import torch

from fastgen.kernels._compat import jit, tl, triton
from fastgen.ops import _philox

pytestmark = pytest.mark.skipif(triton is None, reason="triton not importable")

# seeds: small, 32-bit edge, >= 2^32 (the high key word matters), int64 max, and 2^64 - 1
SEEDS = [0, 1, 0xFFFFFFFF, (1 << 32) + 5, 0x0123456789ABCDEF, (1 << 63) - 1, (1 << 64) - 1]


def _offsets(device="cpu"):
    g = torch.Generator().manual_seed(0)
    # the first block of offsets, random ones below 2^31, and large ones (counter word c1 != 0)
    return torch.cat([torch.arange(1024), torch.randint(0, 1 << 31, (1024,), generator=g),
                      torch.randint(0, 1 << 62, (2048,), generator=g)]).to(device)


def _ulps(a, b):
    """Distance in float32 ulps (both finite, same sign region)."""
    ia = a.contiguous().view(torch.int32).long()
    ib = b.contiguous().view(torch.int32).long()
    ia = torch.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = torch.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return (ia - ib).abs()


@jit
def _triton_random_kernel(seed, off_ptr, int_ptr, uni_ptr, nrm_ptr, n, BLOCK: tl.constexpr):
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    offset = tl.load(off_ptr + idx, mask=mask, other=0)   # int64 offsets
    tl.store(int_ptr + idx, tl.randint(seed, offset), mask=mask)
    tl.store(uni_ptr + idx, tl.rand(seed, offset), mask=mask)
    tl.store(nrm_ptr + idx, tl.randn(seed, offset), mask=mask)


def _triton_random(seed, offsets):
    n = offsets.numel()
    ints = torch.empty(n, dtype=torch.int32, device=offsets.device)
    uni = torch.empty(n, dtype=torch.float32, device=offsets.device)
    nrm = torch.empty(n, dtype=torch.float32, device=offsets.device)
    _triton_random_kernel[(triton.cdiv(n, 4096),)](seed, offsets, ints, uni, nrm, n, BLOCK=4096)
    return ints.long() & _philox.MASK32, uni, nrm


def test_known_answers():
    """Random123's kat_vectors for philox4x32_10."""
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, expected in cases:
        out = _philox.philox4x32(*(torch.tensor(c) for c in counter), *key)
        assert tuple(int(w) for w in out) == expected


@pytest.mark.parametrize("seed", SEEDS, ids=hex)
def test_matches_triton_interpreter(seed):
    offsets = _offsets()
    ints, uni, nrm = _triton_random(seed, offsets)
    r0, r1, _, _ = _philox.randint4x(seed, offsets)
    assert torch.equal(ints, r0)
    # uniforms: bit for bit
    assert torch.equal(uni, _philox.rand(seed, offsets))
    # normals: the same formula evaluated with the interpreter's float32 math (numpy) is bit for
    # bit Triton's; torch's float32 log / cos (what the reference uses) differ from numpy's in
    # about a third of the values, by at most 4 ulps here (ulps blow up only near 0, where cos
    # of an angle near pi/2 carries the absolute error of the angle)
    u1 = _philox.uint_to_uniform(r0).numpy()
    u2 = _philox.uint_to_uniform(r1).numpy()
    r = np.sqrt(np.float32(-2.0) * np.log(np.maximum(np.float32(_philox.BOX_MULLER_MIN_U), u1)))
    same_libm = r * np.cos(np.float32(_philox.TWO_PI) * u2)
    assert np.array_equal(same_libm, nrm.numpy())
    ref = _philox.randn(seed, offsets)
    away_from_zero = nrm.abs() > 1e-2
    assert _ulps(ref[away_from_zero], nrm[away_from_zero]).max() <= 8
    assert (ref - nrm).abs().max() <= 2e-6


def test_seed_tensor_and_generator():
    offsets = torch.arange(257)
    for seed in SEEDS:
        as_tensor = torch.tensor(seed if seed < (1 << 63) else seed - (1 << 64), dtype=torch.int64)
        assert torch.equal(_philox.randn(as_tensor, offsets), _philox.randn(seed, offsets))
    g = torch.Generator().manual_seed(3)
    s1, s2 = _philox.seed_from_generator(g), _philox.seed_from_generator(g)
    assert s1.shape == () and s1.dtype == torch.int64 and int(s1) != int(s2)   # the generator advanced
    g.manual_seed(3)
    assert int(_philox.seed_from_generator(g)) == int(s1)                       # and is reproducible
    with pytest.raises(TypeError, match="seed"):
        _philox.randn(1.5, offsets)
    with pytest.raises(TypeError, match="seed"):
        _philox.randn(torch.zeros(2, dtype=torch.int64), offsets)
    with pytest.raises(ValueError, match="seed"):
        _philox.randn(1 << 64, offsets)
    with pytest.raises(TypeError, match="offset"):
        _philox.randn(0, torch.zeros(3))


def test_statistics():
    """Uniform in [0, 1), normal moments and tails, and no correlation between neighbours."""
    offsets = torch.arange(1 << 18)
    u = _philox.rand(1234, offsets)
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 4 * (1 / 12 / u.numel()) ** 0.5
    z = _philox.randn(1234, offsets).double()
    n = z.numel()
    assert abs(float(z.mean())) < 4 / n ** 0.5
    assert abs(float(z.var()) - 1) < 4 * (2 / n) ** 0.5
    assert abs(float((z ** 3).mean())) < 4 * (15 / n) ** 0.5                 # skewness
    assert abs(float((z ** 4).mean()) - 3) < 4 * (96 / n) ** 0.5             # kurtosis
    assert abs(float((z.abs() > 1.96).double().mean()) - 0.05) < 4 * (0.05 * 0.95 / n) ** 0.5
    assert abs(float((z[1:] * z[:-1]).mean())) < 4 / n ** 0.5
    other = _philox.randn(1235, offsets).double()
    assert abs(float((z * other).mean())) < 4 / n ** 0.5                    # seeds independent


@pytest.mark.gpu
def test_matches_triton_gpu():
    offsets = _offsets("cuda")
    for seed in SEEDS:
        ints, uni, nrm = _triton_random(seed, offsets)
        assert torch.equal(ints, _philox.randint4x(seed, offsets)[0])
        assert torch.equal(uni, _philox.rand(seed, offsets))
        # the GPU's float32 log / cos are approximations: a few ulps, absolute error tiny
        assert (nrm - _philox.randn(seed, offsets)).abs().max() <= 1e-5


_HEADER_PROGRAM = r"""
#include <cstdio>
#include <cstdlib>
#include "common/philox.h"
// argv: seed (uint64), then offsets (uint64); prints w0 w1 w2 w3, the uniform bits, the normal bits
int main(int argc, char** argv) {
  const unsigned long long seed = std::strtoull(argv[1], nullptr, 10);
  for (int i = 2; i < argc; ++i) {
    const unsigned long long off = std::strtoull(argv[i], nullptr, 10);
    const fastgen::philox::Words w = fastgen::philox::randint4x(seed, off);
    const float u = fastgen::philox::rand(seed, off), z = fastgen::philox::randn(seed, off);
    unsigned ub, zb;
    __builtin_memcpy(&ub, &u, 4);
    __builtin_memcpy(&zb, &z, 4);
    std::printf("%u %u %u %u %u %u\n", w.w0, w.w1, w.w2, w.w3, ub, zb);
  }
  return 0;
}
"""


def test_common_header_matches_reference(tmp_path):
    """csrc/common/philox.h (what the CUDA kernels run), compiled for the host: words and uniforms
    bit for bit, normals to the libm's last bits (glibc logf / cosf here)."""
    import pathlib
    import shutil
    import subprocess

    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    csrc = pathlib.Path(__file__).resolve().parent.parent / "csrc"
    src, exe = tmp_path / "philox_header.cpp", tmp_path / "philox_header"
    src.write_text(_HEADER_PROGRAM)
    subprocess.run([cxx, "-O2", "-std=c++17", f"-I{csrc}", str(src), "-o", str(exe)], check=True)
    offsets = _offsets()[::8]
    for seed in SEEDS:
        out = subprocess.run([str(exe), str(seed)] + [str(int(o)) for o in offsets], check=True,
                             capture_output=True, text=True).stdout
        got = torch.tensor([[int(v) for v in line.split()] for line in out.splitlines()])
        words = torch.stack(_philox.randint4x(seed, offsets), 1)
        assert torch.equal(got[:, :4], words)
        uniform_bits = _philox.rand(seed, offsets).view(torch.int32).long() & _philox.MASK32
        assert torch.equal(got[:, 4], uniform_bits)
        normals = got[:, 5].to(torch.int32).view(torch.float32)   # int64 -> int32 keeps the low bits
        assert (normals - _philox.randn(seed, offsets)).abs().max() <= 2e-6
