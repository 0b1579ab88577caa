"""The op registry, backend choice, the native build and `fastgen info`."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

import fastgen
from fastgen import _ext
from fastgen.ops import REGISTRY

EXPECTED_OPS = {"gaussian_reparam_kl", "gaussian_reparam_kl_backward"}


def test_registry_lists_every_op():
    assert EXPECTED_OPS <= set(REGISTRY)


@pytest.mark.parametrize("name", sorted(EXPECTED_OPS))
def test_public_op_has_cpu_cuda_and_meta_kernels(name):
    for key in ("CPU", "CUDA", "Meta"):
        assert _ext.has_kernel(f"fastgen::{name}", key), key


def test_every_op_has_a_cuda_kernel_when_built_with_cuda():
    if _ext.NATIVE is None:
        pytest.skip(_ext.NATIVE_ERROR)
    if not _ext.WITH_CUDA:
        if os.environ.get("FASTGEN_TEST_REQUIRE_CUDA_BUILD") == "1":
            pytest.fail("FASTGEN_TEST_REQUIRE_CUDA_BUILD=1 but fastgen._C was built without CUDA")
        pytest.skip("fastgen._C built without CUDA")
    for name, op in REGISTRY.items():
        assert op.native_qualname is not None, f"{name} has no native kernel"
        assert _ext.has_kernel(op.native_qualname, "CPU"), f"{op.native_qualname}: no CPU kernel"
        assert _ext.has_kernel(op.native_qualname, "CUDA"), f"{op.native_qualname}: no CUDA kernel"


def _cuda_function_bodies():
    """{function name: body} of the functions defined in csrc/cuda/*.cu, and the names the
    TORCH_LIBRARY_IMPL(fastgen, CUDA, m) blocks register."""
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
        for block in re.findall(r"TORCH_LIBRARY_IMPL\(fastgen, CUDA, m\) \{(.*?)\n\}", src, re.S):
            registered += re.findall(r'm\.impl\("(\w+)", &(\w+)\)', block)
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
        assert set(backends) == {"reference", "cpu", "triton", "cuda"}
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
