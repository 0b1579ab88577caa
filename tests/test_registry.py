"""The op registry, backend choice, the native build and `fastgen info`."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

import fastgen
from fastgen import _ext
from fastgen.kernels import _compat as _triton
from fastgen.ops import REGISTRY

from conftest import require_cuda_build

EXPECTED_OPS = {"gaussian_reparam_kl", "gaussian_reparam_kl_backward"}


def test_registry_lists_every_op():
    assert EXPECTED_OPS <= set(REGISTRY)


@pytest.mark.parametrize("name", sorted(EXPECTED_OPS))
def test_public_op_has_cpu_cuda_and_meta_kernels(name):
    for key in ("CPU", "CUDA", "Meta"):
        assert _ext.has_kernel(f"fastgen::{name}", key), key


def test_every_op_has_a_cuda_kernel_when_built_with_cuda():
    require_cuda_build()
    for name, op in REGISTRY.items():
        assert op.native_qualname is not None, f"{name} has no native kernel"
        assert _ext.has_kernel(op.native_qualname, "CPU"), f"{op.native_qualname}: no CPU kernel"
        assert _ext.has_kernel(op.native_qualname, "CUDA"), f"{op.native_qualname}: no CUDA kernel"


def _cuda_function_bodies():
    """{function name: body} of the functions defined in csrc/cuda/*.cu, and the names the
    TORCH_LIBRARY_IMPL(fastgen, CUDA, m) / FASTGEN_CUDA_LIBRARY_IMPL(m) blocks register."""
    import pathlib
    import re

    bodies, registered = {}, []
    for path in sorted((pathlib.Path(__file__).resolve().parent.parent / "csrc" / "cuda").glob("*.cu")):
        src = path.read_text()
        for m in re.finditer(r"^[A-Za-z][\w:<>, ]*?[\s&*]([A-Za-z_]\w*)\((?=[^;{]*\)\s*(?:const\s*)?\{)", src, re.M):
            start = src.index("{", m.end())
            depth, i = 0, start
            while True:
                depth += {"{": 1, "}": -1}.get(src[i], 0)
                if depth == 0:
                    break
                i += 1
            bodies.setdefault(m.group(1), src[start:i + 1])
        # (FASTGEN_CUDA_LIBRARY_IMPL: csrc/cuda/launch.h's spelling, the CUDA key in the CUDA build)
        for block in re.findall(r"(?:TORCH_LIBRARY_IMPL\(fastgen, CUDA, m\)|FASTGEN_CUDA_LIBRARY_IMPL\(m\)) \{(.*?)\n\}",
                                src, re.S):
            # `&fn`, or `&family::entry<impl>`: a shared host entry point (csrc/common/<family>_host.h)
            # that hands the call to this file's `impl`, which is then the function to check
            registered += [(op, impl or fn) for op, fn, impl in
                           re.findall(r'm\.impl\("(\w+)", &(?:\w+::)?(\w+)(?:<(\w+)>)?\)', block)]
    return bodies, registered


def test_every_cuda_entry_point_runs_under_a_device_guard():
    """Each registered CUDA kernel takes its main input's device guard (csrc/cuda/device_guard.h),
    itself or in the function of its file it hands the call to (add_noise_cuda -> mix_cuda), so
    tensors on cuda:1 run on cuda:1 whatever the current device (the 2-GPU tests run this)."""
    bodies, registered = _cuda_function_bodies()
    assert len(registered) >= 30, registered

    def guarded(name, seen=()):
        body = bodies.get(name, "")
        if "device_guard(" in body:
            return True
        return any(guarded(callee, seen + (name,)) for callee in set(re.findall(r"\b(\w+)\(", body))
                   if callee in bodies and callee not in seen and callee != name)

    import re
    missing = [op for op, fn in registered if not guarded(fn)]
    assert not missing, f"CUDA entry points without a device guard: {missing}"


def test_use_backend_nests_and_restores():
    assert fastgen.current_backend() == "auto"
    with fastgen.use_backend("reference"):
        assert fastgen.current_backend() == "reference"
        with fastgen.use_backend("cpu"):
            assert fastgen.current_backend() == "cpu"
        assert fastgen.current_backend() == "reference"
    assert fastgen.current_backend() == "auto"
    with pytest.raises(ValueError, match="use_backend"):
        with fastgen.use_backend("gpu"):
            pass


def test_use_backend_reaches_the_kernel(monkeypatch):
    op = REGISTRY["gaussian_reparam_kl"]
    seen = []
    monkeypatch.setattr(op, "reference", lambda *a: (seen.append("reference"), (a[0].clone(), a[0].sum(1)))[1])
    op._kernels.clear()
    x = torch.randn(2, 3)
    with fastgen.use_backend("reference"):
        fastgen.ops.gaussian_reparam_kl(x, x, x)
    op._kernels.clear()
    assert seen == ["reference"]


def test_auto_falls_back_to_reference_and_says_so_once(monkeypatch):
    op = REGISTRY["gaussian_reparam_kl"]
    monkeypatch.setattr(_ext, "NATIVE", None)
    monkeypatch.setattr(_ext, "NATIVE_ERROR", "native extension fastgen._C not built (test)")
    op._kernels.clear()
    x = torch.randn(2, 3)
    try:
        with pytest.warns(RuntimeWarning, match="uses the reference backend.*not built"):
            fastgen.ops.gaussian_reparam_kl(x, x, x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fastgen.ops.gaussian_reparam_kl(x, x, x)  # said once
        with pytest.raises(RuntimeError, match="backend 'cpu' cannot run cpu tensors: native extension"):
            fastgen.ops.gaussian_reparam_kl(x, x, x, backend="cpu")
    finally:
        op._kernels.clear()


def _run_python(code, **env):
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          timeout=300)


def test_env_var_sets_the_default_backend():
    r = _run_python("import fastgen; print(fastgen.current_backend())", FASTGEN_BACKEND="reference")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "reference"
    r = _run_python("import fastgen", FASTGEN_BACKEND="tpu")
    assert r.returncode != 0 and "FASTGEN_BACKEND must be one of" in r.stderr


def test_info_reports_every_op_and_backend():
    report = fastgen.info(print_report=False)
    assert report["torch"] == torch.__version__
    for name in EXPECTED_OPS:
        backends = report["ops"][name]
        assert set(backends) == {"reference", "cpu", "triton", "cuda", "cuda_emu"}
        assert backends["reference"]["live"]
        for b in backends.values():
            assert b["note"]


def test_info_command_line():
    r = subprocess.run([sys.executable, "-m", "fastgen", "info"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "gaussian_reparam_kl" in r.stdout and "reference  live" in r.stdout
    if _ext.NATIVE is not None:
        assert "cpu        live" in r.stdout


# -- the CUDA architectures of the build ------------------------------------------------------

@pytest.mark.parametrize("archs, capability, covered, how", [
    ("8.0;9.0+PTX", (9, 0), True, "sass"),
    ("8.0;9.0+PTX", (10, 0), True, "ptx"),    # B200: JIT from compute_90
    ("8.0;9.0+PTX", (12, 0), True, "ptx"),    # RTX 50xx
    ("8.0;9.0+PTX", (7, 5), False, "none"),   # PTX never runs on a lower arch
    ("8.0;9.0", (10, 0), False, "none"),      # no PTX: nothing for sm_100
    ("8.0;9.0+PTX", (8, 6), True, "sass"),    # sm_80 cubins run unchanged on 8.6
    ("8.0;9.0+PTX", (8, 0), True, "sass"),
    ("8.6", (8, 0), False, "none"),           # a cubin never runs on a lower minor
    ("9.0a", (9, 0), True, "sass"),
    ("9.0a+PTX", (10, 0), False, "none"),     # arch-specific PTX does not JIT to other archs
    ("8.0 9.0+PTX", (9, 0), True, "sass"),    # space-separated, as TORCH_CUDA_ARCH_LIST allows
    ("", (9, 0), False, "none"),
])
def test_cuda_arch_coverage(archs, capability, covered, how):
    got_covered, got_how = _ext.cuda_arch_coverage(archs, capability)
    assert got_covered is covered and got_how.split(":")[0] == how, got_how


def test_extension_records_its_cuda_archs():
    if _ext.NATIVE is not None and not _ext.WITH_CUDA:
        assert _ext.CUDA_ARCHS == ""
    require_cuda_build()
    assert _ext.CUDA_ARCHS, "fastgen._C.CUDA_ARCHS is missing: rebuild the extension"
    for entry in _ext.CUDA_ARCHS.split(";"):
        assert _ext._parse_arch(entry)  # setup.py records numbers ("9.0", "9.0+PTX"), no names
    # the default build (setup.py, scripts/setup.sh) covers sm_90 by SASS and newer GPUs by PTX
    if os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX") == "8.0;9.0+PTX":
        assert _ext.CUDA_ARCHS == "8.0;9.0+PTX"
    report = fastgen.info(print_report=False)
    assert report["cuda_archs"] == _ext.CUDA_ARCHS


def test_info_says_when_the_gpu_is_not_covered(monkeypatch):
    from fastgen import _info

    report = fastgen.info(print_report=False)
    monkeypatch.setattr(_ext, "WITH_CUDA", True)
    monkeypatch.setattr(_ext, "CUDA_ARCHS", "8.0;9.0+PTX")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Old GPU")
    for capability, expected in (((7, 5), "NOT covered"), ((12, 0), "covered, ptx"), ((9, 0), "covered, sass")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        archs, coverage = _info.cuda_build_report()
        assert archs == "8.0;9.0+PTX"
        assert coverage.startswith(f"Old GPU (sm_{capability[0]}{capability[1]}): {expected}"), coverage
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    archs, coverage = _info.cuda_build_report()
    assert "the cuda backend will fail" in coverage and 'TORCH_CUDA_ARCH_LIST="8.0;9.0+PTX;7.5"' in coverage
    assert f"cuda_gpu_coverage   {coverage}" in _info.format_info({**report, "cuda_gpu_coverage": coverage})


def test_eager_call_keeps_the_graph_for_parameters_only():
    """The no-gradient shortcut (kernel alone, no autograd node) must not fire when only a
    non-first argument requires grad, nor when that argument is an nn.Parameter."""
    x = torch.randn(4, 3)
    bias = torch.nn.Parameter(torch.randn(3))
    y = fastgen.ops.bias_act(x, bias, "leaky_relu", 0.2, 1.0, backend="cpu")
    assert y.requires_grad
    y.sum().backward()
    expected = torch.where(x + bias.detach() > 0, 1.0, 0.2).sum(0)
    torch.testing.assert_close(bias.grad, expected)
    with torch.no_grad():
        assert not fastgen.ops.bias_act(x, bias, backend="cpu").requires_grad


# An install without the native extension (FASTGEN_SKIP_EXT=1, or a failed build) still runs
# the Triton kernels, with the Python checks. Found on an H200: ops whose C++ kernels check their
# own arguments (native_checks) looked the missing C++ op up on their first Triton call and failed
# with AttributeError, then KeyError, on every later call.
_WITHOUT_NATIVE = r"""
import sys
sys.modules["fastgen._C"] = None  # the import fails, as in an install without the extension
sys.path.insert(0, "tests")
import torch
import fastgen
from fastgen import _ext
from fastgen.ops import REGISTRY
from op_samples import SAMPLES
assert _ext.NATIVE is None
names = [n for n, op in sorted(REGISTRY.items()) if op.native_checks and op.triton is not None]
assert len(names) >= 10, names
for name in names:
    op, s = REGISTRY[name], SAMPLES[name]("cpu", 3)
    for _ in range(2):  # the first call selects the kernel, the second reuses it
        got = op.op(*s.args, backend="triton")
    want = op.op(*s.args, backend="reference")
    for g, w in zip(*(o if isinstance(o, tuple) else (o,) for o in (got, want))):
        if isinstance(w, torch.Tensor):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5, msg=name)
    bad = list(s.args)
    first = next(i for i, a in enumerate(bad) if isinstance(a, torch.Tensor) and a.is_floating_point())
    bad[first] = bad[first].to(torch.int32)
    try:
        op.op(*bad, backend="triton")
    except TypeError as e:
        assert str(e).startswith("fastgen"), (name, e)
    else:
        raise AssertionError(name + ": an int32 argument was accepted")
print(len(names), "ops")
"""


@pytest.mark.skipif(bool(_triton.TRITON_ERROR), reason=f"Triton: {_triton.TRITON_ERROR}")
def test_triton_backend_runs_without_the_native_extension():
    r = _run_python(_WITHOUT_NATIVE, TRITON_INTERPRET="1")
    assert r.returncode == 0, r.stderr[-3000:]
