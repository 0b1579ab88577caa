"""flash_attention on every backend against the math reference."""
import pytest
import torch

import fastgen
from fastgen.ops import reference
from fastgen.testing import assert_close, tolerance

from conftest import native_device_tests, require_backend

OP = "flash_attention"
# (B, H, Hkv, Lq, Lk, Dh): lengths of 1, odd, not multiples of the blocks, Lq != Lk, GQA, and
# the head dims people use (80, 96 and 256 included)
SHAPES = [(1, 1, 1, 1, 1, 16), (2, 3, 3, 17, 33, 32), (1, 4, 2, 70, 45, 64), (2, 2, 1, 9, 130, 80),
          (1, 2, 2, 33, 33, 96), (1, 1, 1, 40, 21, 128), (1, 2, 1, 19, 37, 256), (1, 1, 1, 5, 3, 7)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _setup(device_backend, dtype=torch.float32):
    device, backend = device_backend
    require_backend(OP, device, backend)
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the triton kernels take fp16/bf16/fp32 (fp64 raises a TypeError: tested below)")
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("bf16 tl.dot is wrong under the Triton interpreter: GPU only "
                    "(docs/design.md, 'Limits of the Triton interpreter')")
    return device, backend


def _inputs(shape, dtype, device, seed=0):
    b, h, hkv, lq, lk, d = shape
    g = torch.Generator().manual_seed(seed + lq * 31 + lk)
    q = torch.randn(b, h, lq, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, lk, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hkv, lk, d, generator=g, dtype=torch.float64)
    return [t.to(device, dtype).requires_grad_() for t in (q, k, v)]


def _padding(b, lk, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    kpm = torch.rand(b, lk, generator=g) < 0.3
    kpm[0, : min(3, lk)] = True          # early keys padded: causal rows see nothing at first
    if b > 1:
        kpm[-1] = True                   # a sequence with every key padded
    return kpm.to(device)


def _compare(device, backend, dtype, q, k, v, causal, kpm, scale=None):
    out, lse = fastgen.ops.flash_attention(q, k, v, causal, scale, kpm, backend=backend)
    out_ref, lse_ref = reference.flash_attention(q, k, v, causal, scale, kpm)
    assert out.dtype == q.dtype and out.shape == q.shape and lse.shape == q.shape[:3]
    assert_close(out, out_ref, dtype=dtype, backend=backend, name="out")
    dead = lse_ref == float("-inf")
    assert bool((lse[dead] == float("-inf")).all()), "queries that see no key must have lse -inf"
    assert bool((out[dead.unsqueeze(-1).expand_as(out)] == 0).all()), "... and output 0"
    assert_close(lse[~dead].to(lse_ref.dtype), lse_ref[~dead], dtype=dtype, backend=backend, name="lse")
    g = torch.Generator().manual_seed(1)
    g_out = torch.randn(out.shape, generator=g).to(device, dtype)
    g_lse = torch.randn(lse.shape, generator=g).to(device, lse.dtype)
    grads = torch.autograd.grad((out, lse), (q, k, v), (g_out, g_lse))
    grads_ref = torch.autograd.grad((out_ref, lse_ref.masked_fill(dead, 0)), (q, k, v), (g_out, g_lse.to(lse_ref.dtype)))
    rtol, atol = tolerance(dtype)
    for name, a, e in zip(("dq", "dk", "dv"), grads, grads_ref):
        # dk/dv sum over the queries (and the heads of a GQA group)
        assert_close(a, e, dtype=dtype, backend=backend, name=name, atol=atol * max(1, q.shape[2]) ** 0.5)


@pytest.mark.parametrize("padding", [False, True], ids=["nomask", "keypad"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference_fp32(device_backend, shape, causal, padding):
    device, backend = _setup(device_backend)
    q, k, v = _inputs(shape, torch.float32, device)
    kpm = _padding(shape[0], shape[4], device) if padding else None
    _compare(device, backend, torch.float32, q, k, v, causal, kpm)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[3]], ids=str)
def test_dtypes(device_backend, shape, dtype):
    device, backend = _setup(device_backend, dtype)
    q, k, v = _inputs(shape, dtype, device)
    _compare(device, backend, dtype, q, k, v, True, _padding(shape[0], shape[4], device), scale=0.3)


# The shapes the CUDA tensor-core forward takes (fp16/bf16, head dim 64/128): several 64-row
# query blocks and 64-key tiles with ragged tails, Lq > Lk and Lq < Lk under the top-left causal
# mask, GQA, a single query, unaligned rows (odd strides: the element-wise load path).
MMA_SHAPES = [(2, 4, 2, 130, 200, 64), (1, 2, 1, 200, 70, 128), (1, 1, 1, 1, 300, 64), (3, 2, 2, 65, 65, 128)]


@pytest.mark.gpu
@pytest.mark.parametrize("unaligned", [False, True], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("padding", [False, True], ids=["nomask", "keypad"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", MMA_SHAPES, ids=str)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_tensor_core_shapes_on_gpu(backend, shape, dtype, causal, padding, unaligned):
    require_backend(OP, "cuda", backend)
    q, k, v = _inputs(shape, dtype, "cuda")
    if unaligned:  # rows 3 elements apart from 16-byte boundaries: views into a wider buffer
        q, k, v = [torch.cat([t.detach(), t.detach()[..., :3]], -1)[..., :shape[-1]].requires_grad_()
                   for t in (q, k, v)]
        assert q.stride(2) == shape[-1] + 3
    kpm = _padding(shape[0], shape[4], "cuda") if padding else None
    _compare("cuda", backend, dtype, q, k, v, causal, kpm)


def test_gradcheck_fp64(device_backend):
    device, backend = _setup(device_backend, torch.float64)
    q, k, v = _inputs((1, 2, 1, 5, 6, 4), torch.float64, device)
    kpm = torch.tensor([[False, True, False, False, True, False]], device=device)
    f = lambda q, k, v: fastgen.ops.flash_attention(q, k, v, True, None, kpm, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(f, (q, k, v))


def test_deterministic_backward(device_backend):
    device, backend = _setup(device_backend)
    q, k, v = _inputs((1, 4, 1, 50, 70, 32), torch.float32, device)
    runs = []
    for _ in range(2):
        out, lse = fastgen.ops.flash_attention(q, k, v, backend=backend)
        runs.append(torch.autograd.grad(out.square().sum(), (q, k, v)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_non_contiguous_and_empty(device_backend):
    device, backend = _setup(device_backend)
    # (B, L, H, Dh) memory viewed as (B, H, L, Dh), as attention modules produce it
    q = torch.randn(2, 11, 3, 16, device=device).transpose(1, 2).requires_grad_()
    k = torch.randn(2, 13, 3, 16, device=device).transpose(1, 2).requires_grad_()
    v = torch.randn(2, 13, 3, 16, device=device).transpose(1, 2).requires_grad_()
    _compare(device, backend, torch.float32, q, k, v, False, None)
    out, lse = fastgen.ops.flash_attention(torch.randn(2, 3, 0, 16, device=device),
                                           torch.randn(2, 3, 5, 16, device=device),
                                           torch.randn(2, 3, 5, 16, device=device), backend=backend)
    assert out.shape == (2, 3, 0, 16) and lse.shape == (2, 3, 0)


def test_bad_inputs_name_the_argument():
    q, k = torch.randn(1, 4, 5, 16), torch.randn(1, 2, 6, 16)
    with pytest.raises(ValueError, match="must be a multiple of the number of key/value heads"):
        fastgen.ops.flash_attention(q, torch.randn(1, 3, 6, 16), torch.randn(1, 3, 6, 16))
    with pytest.raises(ValueError, match=r"q must have shape \(B, H, L, Dh\)"):
        fastgen.ops.flash_attention(q[0], k, k)
    with pytest.raises(ValueError, match=r"k must have shape \(1, Hkv, Lk, 16\)"):
        fastgen.ops.flash_attention(q, torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8))
    with pytest.raises(ValueError, match="v has shape"):
        fastgen.ops.flash_attention(q, k, torch.randn(1, 2, 7, 16))
    with pytest.raises(TypeError, match="k has dtype torch.float16 but q has torch.float32"):
        fastgen.ops.flash_attention(q, k.half(), k.half())
    with pytest.raises(ValueError, match=r"key_padding_mask must be a bool tensor of shape \(1, 6\)"):
        fastgen.ops.flash_attention(q, k, k, key_padding_mask=torch.zeros(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="head dim must be in"):
        fastgen.ops.flash_attention(torch.randn(1, 1, 2, 300), torch.randn(1, 1, 2, 300), torch.randn(1, 1, 2, 300))
    with pytest.raises(ValueError, match="scale must be a finite positive number"):
        fastgen.ops.flash_attention(q, k, k, scale=-1.0)
    from fastgen.kernels import attention as triton_attention

    with pytest.raises(TypeError, match="triton kernels take float16, bfloat16 or float32"):
        triton_attention.flash_attention(q.double(), k.double(), k.double())


# -- dropout ----------------------------------------------------------------------------------------

def _dropout_compare(device, backend, dtype, shape, causal, padding, p, seed):
    q, k, v = _inputs(shape, dtype, device)
    kpm = _padding(shape[0], shape[4], device) if padding else None
    seed_t = torch.tensor([seed], dtype=torch.int64, device=device)
    out, lse = fastgen.ops.flash_attention(q, k, v, causal, None, kpm, p, seed=seed_t, backend=backend)
    out_ref, lse_ref = reference.flash_attention(q, k, v, causal, None, kpm, p, seed_t)
    assert_close(out, out_ref, dtype=dtype, backend=backend, name="out")
    live = lse_ref != float("-inf")
    assert_close(lse[live].to(lse_ref.dtype), lse_ref[live], dtype=dtype, backend=backend, name="lse")
    g_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(device, dtype)
    grads = torch.autograd.grad(out, (q, k, v), g_out)
    grads_ref = torch.autograd.grad(out_ref, (q, k, v), g_out)
    rtol, atol = tolerance(dtype)
    for name, a, e in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert_close(a, e, dtype=dtype, backend=backend, name=name, atol=atol * max(1, q.shape[2]) ** 0.5)


@pytest.mark.parametrize("padding", [False, True], ids=["nomask", "keypad"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2], SHAPES[3], SHAPES[7]], ids=str)
def test_dropout_matches_reference(device_backend, shape, causal, padding):
    """The same Philox mask on every backend (seed above 2^32 to use both key words)."""
    device, backend = _setup(device_backend)
    _dropout_compare(device, backend, torch.float32, shape, causal, padding, 0.3, (7 << 33) + 12345)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_dropout_dtypes(device_backend, dtype):
    device, backend = _setup(device_backend, dtype)
    _dropout_compare(device, backend, dtype, SHAPES[2], True, True, 0.5, 99)


def test_dropout_gradcheck_fp64(device_backend):
    device, backend = _setup(device_backend, torch.float64)
    q, k, v = _inputs((1, 2, 1, 5, 6, 4), torch.float64, device)
    seed = torch.tensor([5], device=device)
    f = lambda q, k, v: fastgen.ops.flash_attention(q, k, v, True, None, None, 0.4, seed=seed, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(f, (q, k, v))


def test_dropout_statistics(device_backend):
    """Kept fraction 1 - p, kept probabilities scaled by 1 / (1 - p): with v = 1 every output is
    sum_j p_ij * mult_ij, whose mean over many rows is 1; p = 1 drops everything."""
    device, backend = _setup(device_backend)
    if backend == "cuda_emu":
        pytest.skip("cuda_emu: its dropout mask is bit-identical to the reference's "
                    "(test_dropout_matches_reference), whose statistics this test checks")
    b, h, lq, lk, d = 2, 4, 64, 96, 16
    g = torch.Generator().manual_seed(0)
    q = (0.1 * torch.randn(b, h, lq, d, generator=g)).to(device)
    k = (0.1 * torch.randn(b, h, lk, d, generator=g)).to(device)
    ones = torch.ones(b, h, lk, d, device=device)
    for p in (0.1, 0.5):
        out, _ = fastgen.ops.flash_attention(q, k, ones, dropout_p=p, seed=11, backend=backend)
        col = out[..., 0].double()
        assert abs(float(col.mean()) - 1) < 0.03, (p, float(col.mean()))
        # near-uniform attention over 96 keys: each output ~ Binomial(96, 1-p) / (96 (1-p))
        expected_std = (p / ((1 - p) * lk)) ** 0.5
        assert 0.8 * expected_std < float(col.std()) < 1.25 * expected_std, (p, float(col.std()), expected_std)
    keep = reference.attention_dropout_keep((b, h, lq, lk), 0.3, torch.tensor([11]), "cpu")
    assert abs(float(keep.float().mean()) - 0.7) < 0.01
    out, lse = fastgen.ops.flash_attention(q, k, ones, dropout_p=1.0, seed=11, backend=backend)
    assert bool((out == 0).all()) and bool(torch.isfinite(lse).all())


def test_dropout_reproducible_from_the_generator():
    q, k, v = _inputs((1, 2, 2, 9, 12, 16), torch.float32, "cpu")
    torch.manual_seed(0)
    a, _ = fastgen.ops.flash_attention(q, k, v, dropout_p=0.2)
    b, _ = fastgen.ops.flash_attention(q, k, v, dropout_p=0.2)
    torch.manual_seed(0)
    c, _ = fastgen.ops.flash_attention(q, k, v, dropout_p=0.2)
    assert torch.equal(a, c) and not torch.equal(a, b)
    gen = torch.Generator().manual_seed(7)
    d, _ = fastgen.ops.flash_attention(q, k, v, dropout_p=0.2, generator=gen)
    e, _ = fastgen.ops.flash_attention(q, k, v, dropout_p=0.2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(d, e)
    plain, _ = fastgen.ops.flash_attention(q, k, v)
    no_drop, _ = fastgen.ops.flash_attention(q, k, v, dropout_p=0.0, seed=3)
    assert torch.equal(plain, no_drop)


def test_dropout_opcheck_and_compile(device_backend):
    device, backend = _setup(device_backend)
    q, k, v = _inputs((1, 2, 1, 7, 9, 16), torch.float32, device)
    seed = torch.tensor([42], device=device)
    torch.library.opcheck(torch.ops.fastgen.flash_attention.default, (q, k, v, True, None, None, 0.25, seed),
                          {"backend": backend})
    if backend != "cpu":
        return
    torch._dynamo.reset()

    def f(q, k, v, seed):
        return fastgen.ops.flash_attention(q, k, v, True, None, None, 0.25, seed=seed)[0].square().sum()

    got = torch.compile(f, fullgraph=True)(q, k, v, seed)
    want = f(q, k, v, seed)
    assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got, (q, k, v)), torch.autograd.grad(want, (q, k, v))):
        assert_close(a, b)


def test_dropout_bad_inputs():
    q = torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\]"):
        fastgen.ops.flash_attention(q, q, q, dropout_p=1.5)
    with pytest.raises(ValueError, match="seed must be an int64 tensor with one value"):
        fastgen.ops.flash_attention(q, q, q, dropout_p=0.1, seed=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="either generator or seed"):
        fastgen.ops.flash_attention(q, q, q, dropout_p=0.1, seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match="seed must be an int or an int64 tensor"):
        fastgen.ops.flash_attention(q, q, q, dropout_p=0.1, seed=1.5)
    with pytest.raises(ValueError, match="needs a seed"):
        torch.ops.fastgen.flash_attention(q, q, q, False, None, None, 0.1, None)


def _device_cases(device):
    """(native op, arguments on `device`, the argument the others must share a device with)."""
    q, k = torch.randn(1, 2, 3, 8, device=device), torch.randn(1, 1, 4, 8, device=device)
    kpm = torch.tensor([[False, True, False, False]], device=device)
    seed = torch.tensor([7], device=device)
    out, lse = torch.randn_like(q), torch.randn(1, 2, 3, device=device)
    qd, kc = torch.randn(2, 2, 1, 8, device=device), torch.randn(2, 1, 5, 8, device=device)
    return [("flash_attention_native", (q, k, k.clone(), True, None, kpm, 0.1, seed), "q"),
            ("flash_attention_backward_native",
             (torch.randn_like(q), torch.zeros_like(lse), q, k, k.clone(), out, lse, True, None, kpm, 0.1, seed), "q"),
            ("decode_attention_native", (qd, kc, kc.clone(), torch.tensor([3, 5], device=device), None), "q")]


test_native_kernels_check_devices, test_native_kernels_check_devices_two_gpus = native_device_tests(_device_cases)


# -- decode_attention / kv_cache_append ------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(3, 4, 2, 1, 300, 64), (2, 2, 2, 3, 70, 80), (1, 1, 1, 1, 5, 16),
                                   (2, 6, 3, 2, 129, 128)], ids=str)  # (B, H, Hkv, Lq, Lmax, Dh)
def test_decode_matches_reference(device_backend, shape, dtype):
    device, backend = device_backend
    require_backend("decode_attention", device, backend)
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the triton kernels take fp16/bf16/fp32")
    b, h, hkv, lq, lmax, d = shape
    g = torch.Generator().manual_seed(lmax)
    q = torch.randn(b, h, lq, d, generator=g).to(device, dtype)
    kc = torch.randn(b, hkv, lmax, d, generator=g).to(device, dtype)
    vc = torch.randn(b, hkv, lmax, d, generator=g).to(device, dtype)
    seqlens = torch.randint(1, lmax + 1, (b,), generator=g)
    seqlens[0] = lmax                      # a full cache
    if b > 1:
        seqlens[1] = min(lq, lmax) if lq > 1 else 1   # the first query of a short sequence sees 1 key
    seqlens = seqlens.to(device, torch.int32)
    out = fastgen.ops.decode_attention(q, kc, vc, seqlens, backend=backend)
    want = reference.decode_attention(q, kc, vc, seqlens)
    assert out.shape == q.shape and out.dtype == dtype
    assert_close(out, want, dtype=dtype, backend=backend, name="out")


def test_decode_equals_flash_attention_on_the_prefix(device_backend):
    """One new query against a cache of length L is row L-1 of causal attention over L tokens."""
    device, backend = device_backend
    require_backend("decode_attention", device, backend)
    q, k, v = (t.detach() for t in _inputs((2, 4, 2, 23, 23, 32), torch.float32, device))
    full, _ = reference.flash_attention(q, k, v, True)
    cache_k = torch.zeros(2, 2, 40, 32, device=device)
    cache_v = torch.zeros(2, 2, 40, 32, device=device)
    seqlens = torch.zeros(2, dtype=torch.int64, device=device)
    fastgen.ops.kv_cache_append(cache_k, cache_v, seqlens, k, v)
    assert seqlens.tolist() == [23, 23]
    out = fastgen.ops.decode_attention(q[:, :, -1:], cache_k, cache_v, seqlens, backend=backend)
    assert_close(out, full[:, :, -1:], backend=backend)
    out = fastgen.ops.decode_attention(q[:, :, -5:], cache_k, cache_v, seqlens, backend=backend)
    assert_close(out, full[:, :, -5:], backend=backend)


def test_decode_checks_and_cache_overflow():
    q, kc = torch.randn(2, 2, 1, 8), torch.randn(2, 2, 10, 8)
    with pytest.raises(ValueError, match=r"cache_seqlens must be an int32/int64 tensor of shape \(2,\)"):
        fastgen.ops.decode_attention(q, kc, kc, torch.tensor([3.0, 4.0]))
    seqlens = torch.tensor([9, 2])
    with pytest.raises(ValueError, match="overflows the cache"):
        fastgen.ops.kv_cache_append(kc, kc.clone(), seqlens, torch.randn(2, 2, 2, 8), torch.randn(2, 2, 2, 8))


def test_head_dim_strided_views(device_backend):
    """q, k, v whose head dim is not the contiguous one (sliced from one (B, H, Dh, L) projection,
    as a conv attention block writes it): torch's CPU flash kernels misread these unless the
    backend copies them first."""
    device, backend = _setup(device_backend)
    qkv = torch.randn(2, 3, 2, 8, 17, device=device).transpose(-1, -2)   # (B, 3, H, L, Dh), Dh stride L
    q, k, v = (t.detach().requires_grad_() for t in qkv.unbind(1))
    assert q.stride(-1) != 1
    for causal in (False, True):
        _compare(device, backend, torch.float32, q, k, v, causal, None)
