"""The op contract: what every backend of an op must agree on.

Bad input (issue 18's sweep): each case either raises the same clear error on every backend,
naming the argument and what was expected, or returns the same values as the reference. The
C++ entry points (the CPU kernels here; the CUDA ones share the host checks in csrc/common/)
are also called directly, so their own words are checked, not only the Python layer's.
"""
import glob
import math
import os
import re

import pytest
import torch

import fastgen
from fastgen.ops import reference
from fastgen.testing import assert_close

from conftest import require_backend

NAN, INF = float("nan"), float("inf")


def _native(name):
    from fastgen import _ext
    if _ext.NATIVE is None:
        pytest.skip(_ext.NATIVE_ERROR)
    return getattr(torch.ops.fastgen, f"{name}_native").default


def _same_with_nan(got, want, backend, name):
    """Equal where finite, and NaN / inf at the same places."""
    assert torch.equal(got.isnan(), want.isnan()), f"{backend} {name}: NaN positions differ"
    assert_close(got, want, dtype=torch.float32, backend=backend, name=name)


# -- flash_attention -----------------------------------------------------------------------------

def _qkv(lk=5):
    g = torch.Generator().manual_seed(18)
    return (torch.randn(1, 2, 3, 8, generator=g), torch.randn(1, 2, lk, 8, generator=g),
            torch.randn(1, 2, lk, 8, generator=g))


def test_flash_attention_nan_in_q_propagates(device_backend):
    device, backend = device_backend
    require_backend("flash_attention", device, backend)
    q, k, v = (t.to(device) for t in _qkv())
    q[0, 0, 1, 2] = NAN
    out, lse = fastgen.ops.flash_attention(q, k, v, backend=backend)
    out_ref, lse_ref = reference.flash_attention(q, k, v)
    assert out[0, 0, 1].isnan().all() and out[0, 1].isfinite().all()
    _same_with_nan(out.cpu(), out_ref.cpu(), backend, "out")
    _same_with_nan(lse.cpu(), lse_ref.cpu(), backend, "lse")


def test_flash_attention_row_of_minus_inf_scores(device_backend):
    """q = -inf against positive keys: every score of that row is -inf. The reference gives out 0
    and lse -inf (no key has any weight); so must every kernel (the CUDA FMA kernel gave NaN from
    exp(-inf - -inf))."""
    device, backend = device_backend
    require_backend("flash_attention", device, backend)
    q, k, v = (t.to(device) for t in _qkv())
    k = k.abs() + 0.5
    q[0, 1, 2] = -INF
    out, lse = fastgen.ops.flash_attention(q, k, v, backend=backend)
    out_ref, lse_ref = reference.flash_attention(q, k, v)
    assert bool((lse_ref[0, 1, 2] == -INF).all()) and bool((out_ref[0, 1, 2] == 0).all())
    _same_with_nan(out.cpu(), out_ref.cpu(), backend, "out")
    _same_with_nan(lse.cpu(), lse_ref.cpu(), backend, "lse")


@pytest.mark.parametrize("scale", [INF, NAN, 0.0, -1.0])
def test_flash_attention_rejects_bad_scale(device_backend, scale):
    device, backend = device_backend
    require_backend("flash_attention", device, backend)
    q, k, v = (t.to(device) for t in _qkv())
    with pytest.raises(ValueError, match="fastgen: scale must be a finite positive number"):
        fastgen.ops.flash_attention(q, k, v, scale=scale, backend=backend)
    with pytest.raises(ValueError, match="fastgen: scale must be a finite positive number"):
        fastgen.ops.decode_attention(q, k, v, torch.tensor([5], device=device), scale=scale, backend=backend)


@pytest.mark.parametrize("dropout_p", [NAN, -0.1, 1.5])
def test_flash_attention_rejects_bad_dropout_p(device_backend, dropout_p):
    device, backend = device_backend
    require_backend("flash_attention", device, backend)
    q, k, v = (t.to(device) for t in _qkv())
    with pytest.raises(ValueError, match=r"fastgen: dropout_p must be in \[0, 1\]"):
        fastgen.ops.flash_attention(q, k, v, dropout_p=dropout_p, seed=1, backend=backend)


def test_flash_attention_without_keys(device_backend):
    """Lk = 0: every query sees no key, out 0 and lse -inf, the reference included."""
    device, backend = device_backend
    require_backend("flash_attention", device, backend)
    q, k, v = (t.to(device) for t in _qkv(lk=0))
    out, lse = fastgen.ops.flash_attention(q, k, v, backend=backend)
    out_ref, lse_ref = reference.flash_attention(q, k, v)
    assert (out == 0).all() and (lse == -INF).all()
    assert torch.equal(out.cpu(), out_ref.cpu()) and torch.equal(lse.cpu(), lse_ref.cpu())


def test_native_attention_checks_scale_dropout_and_lengths():
    """The C++ entry points (host checks shared with the CUDA kernels) in the same words."""
    fa, dec = _native("flash_attention"), _native("decode_attention")
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="fastgen: scale must be a finite positive number"):
        fa(q, k, v, False, INF, None, 0.0, None)
    with pytest.raises(ValueError, match=r"fastgen: dropout_p must be in \[0, 1\]"):
        fa(q, k, v, False, None, None, NAN, None)
    with pytest.raises(ValueError, match=r"fastgen: cache_seqlens must be in \[0, 6\), got 6"):
        dec(q, k, v, torch.tensor([6]), None)


# -- decode_attention ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [7, 2 ** 40, -1])
def test_decode_attention_rejects_lengths_outside_the_cache(device_backend, bad):
    device, backend = device_backend
    require_backend("decode_attention", device, backend)
    if device != "cpu":
        pytest.skip("lengths on a GPU are not read on the host (a sync); see test_gpu_readiness")
    q, kc = torch.randn(2, 2, 1, 8), torch.randn(2, 2, 6, 8)
    with pytest.raises(ValueError, match=rf"fastgen: cache_seqlens must be in \[0, 7\), got {bad}"):
        fastgen.ops.decode_attention(q, kc, kc, torch.tensor([bad, 3]), backend=backend)


# -- add_noise / get_velocity ---------------------------------------------------------------------

@pytest.mark.parametrize("op", ["add_noise", "get_velocity"])
@pytest.mark.parametrize("bad", [-1, 10, 2 ** 40])
def test_timesteps_outside_the_table_raise(device_backend, op, bad):
    device, backend = device_backend
    require_backend(op, device, backend)
    x, n = torch.randn(3, 4, device=device), torch.randn(3, 4, device=device)
    table = torch.linspace(0.99, 0.1, 10, device=device)
    if device != "cpu":
        pytest.skip("device timesteps are not read on the host: NaN there (test_device_timesteps_out_of_range)")
    with pytest.raises(ValueError, match=rf"fastgen: timesteps must be in \[0, 10\), got {bad}"):
        getattr(fastgen.ops, op)(x, n, torch.tensor([0, bad, 1]), table, backend=backend)


@pytest.mark.parametrize("velocity", [False, True])
def test_device_timesteps_out_of_range_give_nan(velocity):
    """Where timesteps are not read on the host (a GPU), the kernels read nothing out of the table
    and give NaN for those rows, as the reference does. The Triton launcher is called directly
    (the op's check rejects these host values first)."""
    from fastgen.kernels import _compat
    from fastgen.kernels import diffusion as triton_diffusion
    if _compat.TRITON_ERROR or not _compat.INTERPRET:
        pytest.skip("needs the Triton interpreter")
    x, n = torch.randn(4, 5), torch.randn(4, 5)
    table = torch.linspace(0.99, 0.1, 10)
    t = torch.tensor([0, -1, 10, 2 ** 40])
    name = "get_velocity" if velocity else "add_noise"
    got = getattr(triton_diffusion, name)(x, n, t, table)
    want = getattr(reference, name)(x, n, t, table)
    assert got[1:].isnan().all() and got[0].isfinite().all()
    _same_with_nan(got, want, "triton", name)


# -- ddpm_step -------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["ddpm_step", "ddim_step"])
def test_step_with_infinite_model_output_and_clipping(device_backend, op):
    """clip_sample bounds the x0 an infinite model output implies (torch.clamp(inf) is finite),
    so the DDPM mean is finite, as in diffusers; every backend gives the reference's values."""
    device, backend = device_backend
    require_backend(op, device, backend)
    g = torch.Generator().manual_seed(1)
    mo, s = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    mo[0, 0], mo[1, 2] = INF, -INF
    ac = torch.linspace(0.99, 0.1, 10)
    acp = torch.cat([torch.ones(1), ac[:-1]])
    mo, s, ac, acp = (t.to(device) for t in (mo, s, ac, acp))
    prev, x0 = getattr(fastgen.ops, op)(mo, s, 5, ac, acp, clip_sample=True, backend=backend)
    prev_ref, x0_ref = getattr(fastgen.ops, op)(mo, s, 5, ac, acp, clip_sample=True, backend="reference")
    assert x0.abs().max() <= 1
    if op == "ddpm_step":
        assert prev.isfinite().all()
    _same_with_nan(prev.cpu(), prev_ref.cpu(), backend, "prev_sample")
    _same_with_nan(x0.cpu(), x0_ref.cpu(), backend, "pred_original_sample")


# -- kv_cache_append -------------------------------------------------------------------------------

def _cache():
    return torch.zeros(2, 2, 6, 4), torch.zeros(2, 2, 6, 4), torch.tensor([1, 2])


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64], ids=str)
def test_kv_cache_append_rejects_non_float_values(dtype):
    kc, vc, lens = _cache()
    new = torch.ones(2, 2, 1, 4, dtype=dtype)
    with pytest.raises(TypeError, match=f"fastgen: k_new must be float16, bfloat16, float32 or float64, got {dtype}"):
        fastgen.ops.kv_cache_append(kc, vc, lens, new, torch.ones(2, 2, 1, 4))
    assert (kc == 0).all() and lens.tolist() == [1, 2]


def test_kv_cache_append_rejects_bad_rank_and_lengths():
    kc, vc, lens = _cache()
    with pytest.raises(ValueError, match=r"fastgen: k_new must have shape \(B, Hkv, T, Dh\), got \(2, 1, 4\)"):
        fastgen.ops.kv_cache_append(kc, vc, lens, torch.ones(2, 1, 4), torch.ones(2, 1, 4))
    with pytest.raises(ValueError, match=r"fastgen: k_cache must have shape \(B, Hkv, Lmax, Dh\)"):
        fastgen.ops.kv_cache_append(kc[0], vc, lens, torch.ones(2, 2, 1, 4), torch.ones(2, 2, 1, 4))
    with pytest.raises(ValueError, match="fastgen: cache_seqlens must be >= 0, got -3"):
        fastgen.ops.kv_cache_append(kc, vc, torch.tensor([-3, 0]), torch.ones(2, 2, 1, 4), torch.ones(2, 2, 1, 4))
    with pytest.raises(ValueError, match=r"fastgen: cache_seqlens must be an int32/int64 tensor of shape \(2,\)"):
        fastgen.ops.kv_cache_append(kc, vc, torch.tensor([1.0, 2.0]), torch.ones(2, 2, 1, 4), torch.ones(2, 2, 1, 4))
    assert (kc == 0).all() and lens.tolist() == [1, 2]


# -- invertible_conv1x1 ----------------------------------------------------------------------------

def _invconv(device, c=3):
    x = torch.randn(2, c, 2, 2, device=device)
    eye = torch.eye(c, device=device)
    return x, eye[[2, 0, 1]], eye.clone(), torch.zeros(c, c, device=device), torch.ones(c, device=device), \
        torch.zeros(c, device=device)


@pytest.mark.parametrize("case", ["sign0", "sign_half", "perm_ones", "perm_scaled", "perm_repeated_row"])
def test_invconv_rejects_singular_or_non_permutation(device_backend, case):
    device, backend = device_backend
    require_backend("invertible_conv1x1", device, backend)
    if device != "cpu":
        pytest.skip("perm / sign values on a GPU are not read on the host (a sync)")
    x, perm, lower, upper, sign, log_s = _invconv(device)
    if case.startswith("sign"):
        sign[1] = 0.0 if case == "sign0" else 0.5
        match = r"fastgen: sign must hold \+1 or -1 \(the signs of W's diagonal\), got (0|0\.5) at channel 1"
    else:
        perm = {"perm_ones": torch.ones(3, 3), "perm_scaled": 0.5 * torch.eye(3),
                "perm_repeated_row": torch.eye(3)[[0, 0, 1]]}[case].to(device)
        match = r"fastgen: perm must be a permutation matrix \(0/1 entries, one 1 in each row and column\)"
    for inverse in (False, True):
        with pytest.raises(ValueError, match=match):
            fastgen.ops.invertible_conv1x1(x, perm, lower, upper, sign, log_s, inverse, backend=backend)
    if backend == "cpu":  # the C++ entry point itself, in the same words
        with pytest.raises(ValueError, match=match):
            _native("invertible_conv1x1")(x, perm, lower, upper, sign, log_s, False)


def test_invconv_takes_a_real_permutation_and_signs():
    x, perm, lower, upper, sign, log_s = _invconv("cpu")
    sign[0] = -1
    y, _ = fastgen.ops.invertible_conv1x1(x, perm, lower, upper, sign, log_s)
    y_ref, _ = reference.invertible_conv1x1(x, perm, lower, upper, sign, log_s)
    assert_close(y, y_ref)


# -- vector quantization ---------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [-0.5, NAN, INF])
def test_vq_quantize_rejects_bad_beta(device_backend, beta):
    device, backend = device_backend
    require_backend("vq_quantize", device, backend)
    z, cb = torch.randn(5, 3, device=device), torch.randn(4, 3, device=device)
    with pytest.raises(ValueError, match="fastgen: beta must be a finite number >= 0"):
        fastgen.ops.vq_quantize(z, cb, beta=beta, backend=backend)


def test_vq_ema_update_rejects_buffer_dtype_mismatch(device_backend):
    device, backend = device_backend
    require_backend("vq_ema_update", device, backend)
    z, idx = torch.randn(5, 3, device=device), torch.tensor([0, 1, 2, 3, 0], device=device)
    cluster_size = torch.ones(4, dtype=torch.float64, device=device)
    embed_sum = torch.randn(4, 3, device=device)
    before = embed_sum.clone()
    with pytest.raises(TypeError, match="fastgen: cluster_size has dtype torch.float64 but embed_sum has torch.float32"):
        fastgen.ops.vq_ema_update(z, idx, cluster_size, embed_sum, backend=backend)
    assert torch.equal(embed_sum, before) and (cluster_size == 1).all()


def test_bad_input_errors_are_one_line():
    """A sample of the messages above: fastgen's own words, one line, no torch internals."""
    q, k, v = _qkv()
    for call in (lambda: fastgen.ops.flash_attention(q, k, v, scale=math.inf),
                 lambda: fastgen.ops.kv_cache_append(*_cache(), torch.ones(2, 1, 4), torch.ones(2, 1, 4))):
        with pytest.raises((ValueError, TypeError)) as info:
            call()
        assert str(info.value).startswith("fastgen: ") and "\n" not in str(info.value)


# -- schemas: each FusedOp against its C++ `<name>_native` op ------------------------------------

def _alias(info):
    return None if info is None else (info.is_write, sorted(info.before_set), sorted(info.after_set))


def _schema_args(schema, skip=()):
    return [(a.name, str(a.type), _alias(a.alias_info), a.kwarg_only)
            for a in schema.arguments if a.name not in skip]


@pytest.mark.parametrize("name", sorted(n for n, op in fastgen.ops.REGISTRY.items() if op.native_qualname))
def test_schema_equals_the_native_schema(name):
    """The schema is written in the FusedOp call and in csrc/fastgen.cpp: both must name the same
    arguments, in the same order, with the same types, mutability (Tensor(a!)) and results. The
    C++ op may leave out defaults (the dispatcher always passes every argument), but one it
    declares must equal the FusedOp's. The CUDA execution model's copy (fastgen_emu) too."""
    from fastgen import _ext
    if _ext.NATIVE is None:
        pytest.skip(_ext.NATIVE_ERROR)
    public = fastgen.ops.REGISTRY[name].op._schema
    namespaces = ["fastgen"] + (["fastgen_emu"] if _ext.EMU is not None else [])
    for namespace in namespaces:
        native = getattr(getattr(torch.ops, namespace), f"{name}_native").default._schema
        where = f"{namespace}::{name}_native (csrc/fastgen.cpp) vs FusedOp {name!r}"
        assert _schema_args(native) == _schema_args(public, skip=("backend",)), where
        assert [(str(r.type), _alias(r.alias_info)) for r in native.returns] == \
               [(str(r.type), _alias(r.alias_info)) for r in public.returns], where
        defaults = {a.name: a.default_value for a in public.arguments if a.has_default_value()}
        for a in native.arguments:
            if a.has_default_value():
                assert a.name in defaults and a.default_value == defaults[a.name], \
                    f"{where}: default of {a.name}"


def test_option_lists_of_the_reference_equal_the_runtime_ones():
    """The reference keeps its own copies of the option names and of the helpers the runtime
    uses (no code shared with the path it checks); the option lists must still agree."""
    from fastgen.ops import _common, diffusion, flow, gan, vq
    pairs = [(reference.VQ_METRICS, vq.VQ_METRICS), (reference.BIAS_ACTS, gan.BIAS_ACTS),
             (reference.COUPLING_SCALE_FNS, flow.COUPLING_SCALE_FNS), (reference.FLOW_PRIORS, flow.FLOW_PRIORS),
             (reference.PREDICTION_TYPES, diffusion.PREDICTION_TYPES),
             (reference.VARIANCE_TYPES, diffusion.VARIANCE_TYPES)]
    for spec, runtime in pairs:
        assert spec == runtime
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert reference.math_dtype(dtype) == _common.math_dtype(dtype)


def test_runtime_vq_ema_helpers_match_the_reference():
    """nn.VectorQuantize and the distributed EMA step use fastgen.ops.vq's codebook and
    perplexity, written apart from the reference's vq_ema_finish: they must agree."""
    from fastgen.ops import vq
    g = torch.Generator().manual_seed(3)
    counts = torch.tensor([0.0, 3.0, 1.0, 0.0, 6.0], dtype=torch.float64)
    cluster_size = torch.rand(5, generator=g, dtype=torch.float64) * 4
    embed_sum = torch.randn(5, 3, generator=g, dtype=torch.float64)
    want_codebook, want_perplexity = reference.vq_ema_finish(counts, cluster_size, embed_sum, 1e-5)
    torch.testing.assert_close(vq.ema_codebook(cluster_size, embed_sum, 1e-5), want_codebook)
    torch.testing.assert_close(vq.code_perplexity(counts), want_perplexity)


# -- generated from the registry: every op x live backend ------------------------------------------
# Sample inputs are declared once per op in tests/op_samples.py; nothing below names an op.

from op_samples import SAMPLES  # noqa: E402

OPS = sorted(fastgen.ops.REGISTRY)


def test_every_registered_op_declares_sample_inputs():
    missing = sorted(set(fastgen.ops.REGISTRY) - set(SAMPLES))
    assert not missing, f"ops registered without sample inputs in tests/op_samples.py: {missing}"
    assert not set(SAMPLES) - set(fastgen.ops.REGISTRY), "samples for ops that are not registered"


def _sample(name, device, n=3):
    if name not in SAMPLES:
        pytest.fail(f"{name}: no sample inputs in tests/op_samples.py")
    return SAMPLES[name](device, n)


def _arg_names(name):
    return [a.name for a in fastgen.ops.REGISTRY[name].op._schema.arguments if a.name != "backend"]


def _outputs(out):
    return out if isinstance(out, tuple) else (out,)


def _run(name, args, backend):
    return _outputs(fastgen.ops.REGISTRY[name].op(*args, backend=backend))


def _mutated(name):
    """Indices of the arguments the op writes (Tensor(a!)): they must stay contiguous."""
    return {i for i, a in enumerate(fastgen.ops.REGISTRY[name].op._schema.arguments)
            if a.alias_info is not None and a.alias_info.is_write}


def _clone(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


# Disagreements the generated suite found and that are not fixed yet (outside this change's
# files): each still has to fail, so a fix shows up as a failure asking to remove the entry.
KNOWN = {}  # (op, backend or "*", case) -> the bug; none open


def _known(name, backend, case):
    return KNOWN.get((name, backend, case)) or KNOWN.get((name, "*", case))


@pytest.mark.parametrize("name", OPS)
def test_generated_opcheck(device_backend, name):
    """torch.library.opcheck: schema, fake, autograd registration and AOT dispatch agree with
    the eager kernel of this backend (the differentiable inputs require grad)."""
    device, backend = device_backend
    require_backend(name, device, backend)
    s = _sample(name, device)
    args = list(s.args)
    for i in s.grad:
        args[i] = args[i].requires_grad_()
    utils = ("test_schema", "test_autograd_registration")  # (fakes: test_generated_fake_matches_the_kernel)
    if fastgen.ops.REGISTRY[name]._autograd is None:  # (with autograd: the compile test below traces
        utils += ("test_aot_dispatch_dynamic",)       # it through AOT autograd, forward and backward)
    if backend == "reference" and s.reference_by_autograd:  # autograd cannot run under their modes
        utils = ("test_autograd_registration",)
    torch.library.opcheck(fastgen.ops.REGISTRY[name].op, tuple(args), {"backend": backend}, test_utils=utils)


@pytest.mark.parametrize("name", OPS)
def test_generated_fake_matches_the_kernel(device_backend, name):
    """The fake (what tracing sees) gives every output's shape, dtype and strides, on a batch and
    on an empty batch (or both raise the declared error)."""
    device, backend = device_backend
    require_backend(name, device, backend)
    from torch._subclasses.fake_tensor import FakeTensorMode
    for n in (3, 0):
        s = _sample(name, device, n)
        if n == 0 and s.empty_error:
            with pytest.raises(ValueError, match=s.empty_error):
                _run(name, _clone(s.args), backend)
            continue
        real = _run(name, _clone(s.args), backend)
        with FakeTensorMode(allow_non_fake_inputs=False) as mode:
            fake_args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in s.args)
            fake = _run(name, fake_args, backend)
        assert len(fake) == len(real), name
        for i, (f, r) in enumerate(zip(fake, real)):
            assert (tuple(f.shape), f.dtype, f.device) == (tuple(r.shape), r.dtype, r.device), f"{name} output {i}"
            if r.numel() > 1:
                assert f.stride() == r.stride(), f"{name} output {i}: fake strides {f.stride()} != {r.stride()}"


@pytest.mark.parametrize("name", OPS)
def test_generated_non_contiguous_inputs(device_backend, name):
    """Every tensor argument as a strided view (same values): the same result as contiguous."""
    device, backend = device_backend
    require_backend(name, device, backend)
    s = _sample(name, device)
    written = _mutated(name)
    views, changed = [], 0
    for i, a in enumerate(s.args):
        if isinstance(a, torch.Tensor) and a.numel() > 1 and i not in written:
            v = torch.empty(*a.shape, 2, dtype=a.dtype, device=a.device)[..., 0]
            v.copy_(a)
            assert not v.is_contiguous() and torch.equal(v, a)
            views.append(v)
            changed += 1
        else:
            views.append(a.clone() if isinstance(a, torch.Tensor) else a)
    assert changed, name
    known = _known(name, backend, "non-contiguous")
    if known:  # not run: the strided read can leave the allocation (a segfault under the interpreter)
        pytest.xfail(known)
    got = _run(name, tuple(views), backend)
    want = _run(name, _clone(s.args), backend)
    for i, (g, w) in enumerate(zip(got, want)):
        if g.is_floating_point():
            assert_close(g, w, dtype=torch.float32, backend=backend, name=f"{name} output {i}")
        else:
            assert torch.equal(g, w), f"{name} output {i}"


def _bad_cases(name, device):
    """(what, args, argument the error must name) for the bad-input classes of this op's sample."""
    s = _sample(name, device)
    names = _arg_names(name)
    tensors = [i for i, a in enumerate(s.args) if isinstance(a, torch.Tensor) and a.numel() > 0]
    first_float = next(i for i in tensors if s.args[i].is_floating_point())
    cases = []
    args = list(_clone(s.args))
    args[first_float] = args[first_float].to(torch.int32)
    cases.append(("wrong dtype", args, names[first_float]))
    other = next((i for i in tensors if i != tensors[0]), None)
    if other is not None:
        args = list(_clone(s.args))
        args[other] = args[other].to("meta")
        cases.append(("wrong device", args, names[other]))
    for i in s.ranked:
        args = list(_clone(s.args))
        args[i] = args[i].unsqueeze(0)
        cases.append((f"wrong rank of {names[i]}", args, names[i]))
    for i, j in s.same_shape:
        args = list(_clone(s.args))
        args[j] = args[j][..., :-1]
        cases.append((f"{names[j]} not shaped like {names[i]}", args, (names[i], names[j])))
    return cases


@pytest.mark.parametrize("name", OPS)
def test_generated_bad_inputs(device_backend, name):
    """Wrong dtype, wrong device, wrong rank and mismatched shapes: a TypeError / ValueError that
    names the argument, worded as on the reference backend (every backend agrees)."""
    device, backend = device_backend
    require_backend(name, device, backend)
    known = []
    for what, args, arg in _bad_cases(name, device):
        with pytest.raises((TypeError, ValueError)) as got:
            _run(name, _clone(args), backend)
        message = str(got.value)
        wanted = arg if isinstance(arg, tuple) else (arg,)
        named = message.startswith("fastgen") and any(a in message for a in wanted)
        if _known(name, backend, what):
            assert not named, f"fixed? remove KNOWN entry: {_known(name, backend, what)}"
            known.append(_known(name, backend, what))
        assert named or known, f"{name}, {what}: {type(got.value).__name__}: {message}"
        if backend != "reference":
            with pytest.raises(type(got.value)) as ref:
                _run(name, _clone(args), "reference")
            assert str(ref.value) == message, f"{name}, {what}: {backend} and reference disagree"
    if known:
        pytest.xfail("; ".join(known))


def _native_cases(name):
    """(what, args, must_reject): the generated bad inputs a CPU tensor can carry (a meta
    argument goes to the dispatcher's own error: the native ops have no Meta kernel), plus a
    second float tensor of another float dtype, which both layers must reject or both accept."""
    cases = [(what, args, True) for what, args, _ in _bad_cases(name, "cpu") if what != "wrong device"]
    s = _sample(name, "cpu")
    floats = [i for i, a in enumerate(s.args) if isinstance(a, torch.Tensor) and a.is_floating_point()]
    if len(floats) > 1:  # rejected where it must share the main input's dtype (per-sample ones need not)
        args = list(_clone(s.args))
        i = floats[1]
        args[i] = args[i].to(torch.float64 if args[i].dtype != torch.float64 else torch.float32)
        cases.append((f"{_arg_names(name)[i]} of another float dtype", args, False))
    return cases


def _error(call):
    try:
        call()
    except Exception as e:  # noqa: BLE001 -- the point is to compare whatever is raised
        return type(e).__name__, str(e).split("\n")[0]
    return None


@pytest.mark.parametrize("name", sorted(n for n, op in fastgen.ops.REGISTRY.items() if op.native_qualname))
def test_native_errors_are_worded_as_the_python_checks(name):
    """Issue 18: one wording per check. The C++ op called directly (no Python check before it)
    rejects each bad input with the exception type and the exact words of the Python check, or
    accepts it where the Python check does
    (fastgen/ops/_checks.py helpers, mirrored by csrc/common/checks.h), in the CPU build and in
    the CUDA execution model's build of the CUDA entry points."""
    from fastgen import _ext
    if _ext.NATIVE is None:
        pytest.skip(_ext.NATIVE_ERROR)
    op = fastgen.ops.REGISTRY[name]
    namespaces = ["fastgen"] + (["fastgen_emu"] if _ext.EMU is not None else [])
    differ = []
    for what, args, must_reject in _native_cases(name):
        full = tuple(args) + tuple(op.defaults[len(args):])
        python = _error(lambda: op.check(*_clone(full)))
        assert python is not None or not must_reject, f"{name}: the Python check accepts the case {what!r}"
        for namespace in namespaces:
            native = getattr(getattr(torch.ops, namespace), f"{name}_native")
            got = _error(lambda: native(*_clone(args)))
            if got != python:
                differ.append(f"{namespace} | {what}\n    C++:    {got}\n    Python: {python}")
    assert not differ, "\n".join(differ)


def _torch_checks(source):
    """(line, arguments) of each TORCH_CHECK* call in C++ source, its arguments split at the
    top-level commas (string literals and brackets respected)."""
    for m in re.finditer(r"\bTORCH_CHECK\w*\(", source):
        args, current, depth, quoted, i = [], "", 1, False, m.end()
        while depth:
            c = source[i]
            if c == '"' and source[i - 1] != "\\":
                quoted = not quoted
            elif not quoted and c in "([{":
                depth += 1
            elif not quoted and c in ")]}":
                depth -= 1
            if depth and c == "," and depth == 1 and not quoted:
                args.append(current.strip())
                current = ""
            elif depth:
                current += c
            i += 1
        yield source.count("\n", 0, m.start()) + 1, args + [current.strip()]


def test_native_messages_format_no_number_through_an_ostream():
    """Every C++ message is one std::string built with common/checks.h's formatters (py_int,
    py_shape, py_device, ...): no number, shape or device goes through TORCH_CHECK's variadic
    ostream formatting. On the H200 image of 2026-12-04 every CUDA entry point died with SIGSEGV
    while raising a message that formatted an integer that way (NATIVE_CHECK_DEVICES in
    fastgen/ops/_registry.py); the next GPU run tells whether this spelling avoids it."""
    found = []
    for path in sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "csrc", "**", "*.*"), recursive=True)):
        for line, args in _torch_checks(open(path).read()):
            formatted = [a for a in args[1:] if not a.startswith(('"', "std::string("))] if len(args) > 2 else []
            if formatted:
                found.append(f"{os.path.relpath(path)}:{line}: {formatted}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("name", [n for n in OPS if fastgen.ops.REGISTRY[n]._autograd is not None or _mutated(n)])
def test_generated_compile_forward_and_backward(device_backend, name):
    """torch.compile(fullgraph=True) of the op and a backward through it: the same values and
    gradients as the eager op on this backend; an op that writes its arguments (Tensor(a!))
    writes the same values under compile. (torch's aot_eager: the ops are opaque to inductor,
    which sees only the fakes, whose strides test_generated_fake_matches_the_kernel checks.)"""
    device, backend = device_backend
    require_backend(name, device, backend)
    s = _sample(name, device)
    if not s.grad and fastgen.ops.REGISTRY[name]._autograd is not None:
        pytest.fail(f"{name} has autograd but its sample declares no differentiable input (grad=)")
    op = fastgen.ops.REGISTRY[name].op

    def loss(*args):
        outs = _outputs(op(*args, backend=backend))
        total = 0
        for k, o in enumerate(outs):
            if o.is_floating_point():
                total = total + (o.float() * (k + 1.5)).sin().sum()
        return outs, total

    def run(fn):
        args = list(_clone(s.args))
        for i in s.grad:
            args[i] = args[i].requires_grad_()
        outs, total = fn(*args)
        grads = torch.autograd.grad(total, [args[i] for i in s.grad], allow_unused=True) if s.grad else ()
        return outs, tuple(grads) + tuple(args[i] for i in sorted(_mutated(name)))

    torch._dynamo.reset()
    got_outs, got_grads = run(torch.compile(loss, fullgraph=True, backend="aot_eager"))
    want_outs, want_grads = run(loss)
    for k, (g, w) in enumerate(zip(list(got_outs) + list(got_grads), list(want_outs) + list(want_grads))):
        if w is None:
            assert g is None or not g.any(), f"{name}: gradient {k}"
        elif w.is_floating_point():
            assert_close(g, w, dtype=torch.float32, backend=backend, name=f"{name} output/grad {k}")
        else:
            assert torch.equal(g, w), f"{name} output {k}"
