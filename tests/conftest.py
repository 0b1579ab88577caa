"""Test setup. Without a GPU, Triton kernels run on CPU tensors under the interpreter, which
triton reads at import time, so it is switched on here before anything imports triton.

FASTGEN_TEST_REQUIRE (comma list of backends, set by .ci/run) turns "backend not available"
from a skip into a failure, so CI cannot pass with a backend silently missing.
"""
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastgen  # noqa: E402  (after the interpreter switch)
from fastgen import _ext  # noqa: E402

REQUIRED = {b for b in os.environ.get("FASTGEN_TEST_REQUIRE", "").split(",") if b}

# (device, backend) pairs every op is tested on; CUDA ones carry the `gpu` mark.
DEVICE_BACKENDS = [
    pytest.param(("cpu", "reference"), id="cpu-reference"),
    pytest.param(("cpu", "cpu"), id="cpu-cpu"),
    pytest.param(("cpu", "triton"), id="cpu-triton_interpreter"),
    # the CUDA C++ kernels on CPU tensors, run by the CPU execution model (csrc/emu/, fastgen._C_emu)
    pytest.param(("cpu", "cuda_emu"), id="cpu-cuda_emu", marks=pytest.mark.cuda_emu),
    pytest.param(("cuda", "reference"), id="cuda-reference", marks=pytest.mark.gpu),
    pytest.param(("cuda", "triton"), id="cuda-triton", marks=pytest.mark.gpu),
    pytest.param(("cuda", "cuda"), id="cuda-cuda", marks=pytest.mark.gpu),
]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def require_backend(op_name, device, backend):
    """Skip (or, for backends CI requires, fail) when `backend` cannot run `op_name` on `device`."""
    why = fastgen.ops.REGISTRY[op_name].unavailable(backend, device)
    if why is None:
        return
    if backend in REQUIRED and device == "cpu":
        pytest.fail(f"backend {backend!r} required by FASTGEN_TEST_REQUIRE is not available: {why}")
    pytest.skip(f"{backend} on {device}: {why}")


def require_cuda_build(what="this test"):
    """Skip when fastgen._C has no CUDA kernels, or fail where CI builds them
    (FASTGEN_TEST_REQUIRE_CUDA_BUILD=1, set by scripts/test.sh when nvcc is found)."""
    from fastgen import _ext
    why = _ext.NATIVE_ERROR if _ext.NATIVE is None else (None if _ext.WITH_CUDA else "fastgen._C built without CUDA")
    if why is None:
        return
    if os.environ.get("FASTGEN_TEST_REQUIRE_CUDA_BUILD") == "1":
        pytest.fail(f"FASTGEN_TEST_REQUIRE_CUDA_BUILD=1 but {what} has no CUDA build: {why}")
    pytest.skip(f"{what}: {why}")


def emulated(device, backend):
    """True when the kernels run on a CPU model of the GPU (the Triton interpreter, or cuda_emu):
    every launch costs milliseconds there, so gradchecks use fast mode (random projections of
    the Jacobian instead of every column) and sweeps take smaller shapes."""
    return device == "cpu" and backend in ("triton", "cuda_emu")


@pytest.fixture(params=DEVICE_BACKENDS)
def device_backend(request):
    return request.param


class DispatchLog(TorchDispatchMode):
    """A dispatch mode (as tracing uses) that records the name of every op it sees in `ops`."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


# -- device checks of the native kernels --------------------------------------------------------

CPU_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def _native_op(native_name):
    if _ext.NATIVE is None:
        pytest.skip(_ext.NATIVE_ERROR)
    return getattr(torch.ops.fastgen, native_name).default


def check_native_devices(native_name, args, main, other="meta", host_ok=()):
    """Moving any one tensor argument of torch.ops.fastgen.<native_name> to `other` must make the
    kernel of the main argument's device raise a ValueError naming that argument and both devices.
    host_ok: the one-value arguments that may also be host tensors, worded as the Python checks
    word them ("fastgen: timestep is on meta; expected the host or cpu").

    args: the op's arguments, every tensor on one device ("cpu", or "cuda:1" next to other="cuda:0")
    and used by the call (an empty placeholder tensor is skipped: the kernels ignore it). The CPU
    kernel is reached by redispatch: the dispatcher would send a call with a meta argument to the
    (absent) Meta kernel."""
    op = _native_op(native_name)
    names = [a.name for a in op._schema.arguments]
    main_t = args[names.index(main)]
    checked = 0
    for i, (name, t) in enumerate(zip(names, args)):
        if name == main or not isinstance(t, torch.Tensor) or t.numel() == 0:
            continue  # (an empty tensor is an unused placeholder: the kernels do not check it)
        moved = list(args)
        moved[i] = t.to(other)
        if name in host_ok:
            words = f"fastgen: {name} is on {moved[i].device}; expected the host or {main_t.device}$"
        else:
            words = f"fastgen: {name} is on {moved[i].device} but [a-z_0-9]+ is on {main_t.device}$"
        with pytest.raises(ValueError, match=words):
            if main_t.device.type == "cpu":
                op.redispatch(CPU_KEYS, *moved)
            else:
                op(*moved)
        checked += 1
    assert checked, f"{native_name}: no tensor argument besides {main}"


def two_gpus():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices (an argument on cuda:0 next to cuda:1)")
    if not _ext.WITH_CUDA:
        pytest.skip("fastgen._C built without CUDA")


def check_native_on_second_gpu(native_name, args):
    """With cuda:0 current, the CUDA kernel run on cuda:1 tensors (args) must give what it gives
    on cuda:0: its device guard moves the launch (and stream) to the input's GPU."""
    op = _native_op(native_name)
    on0 = [a.to("cuda:0") if isinstance(a, torch.Tensor) else a for a in args]
    with torch.cuda.device(0):
        got = op(*args)
        want = op(*on0)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    for g, w in zip(got, want):
        assert g.device == torch.device("cuda:1"), native_name
        torch.testing.assert_close(g.cpu(), w.cpu(), equal_nan=True, msg=native_name)


def native_device_tests(cases):
    """A test file's two device tests of its native kernels, from cases(device) -> [(native op
    name, arguments on device, the main argument's name)]: the CPU kernels with one argument on
    meta, and (gpu, 2 GPUs) the CUDA kernels with one argument on cuda:0 next to cuda:1, plus
    their device guard. Use: `test_a, test_b = native_device_tests(_device_cases)`."""
    def test_native_kernels_check_devices():
        for name, args, main in cases("cpu"):
            check_native_devices(name, args, main)

    @pytest.mark.gpu
    def test_native_kernels_check_devices_two_gpus():
        two_gpus()
        for name, args, main in cases("cuda:1"):
            check_native_devices(name, args, main, other="cuda:0")
            check_native_on_second_gpu(name, args)

    return test_native_kernels_check_devices, test_native_kernels_check_devices_two_gpus


# Model-training tests run on one intra-op thread per test process. CI runs two pytest-xdist
# workers on two cores, and torch's default of one thread per core gave each worker two OpenMP
# threads: four threads on two cores stall at every barrier. test_models_vqgan's 300-step
# training test took 165 s in CI and 31 s alone on one thread. The kernels' own tests keep
# torch's default, because their parallel paths are what they check.
_ONE_THREAD_MODULES = ("test_models_", "test_train", "test_diffusion_models")


@pytest.fixture(autouse=True)
def _one_thread_for_training_tests(request):
    if os.environ.get("PYTEST_XDIST_WORKER") is None or not request.module.__name__.startswith(_ONE_THREAD_MODULES):
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
