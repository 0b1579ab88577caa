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

REQUIRED = {b for b in os.environ.get("FASTGEN_TEST_REQUIRE", "").split(",") if b}

# (device, backend) pairs every op is tested on; CUDA ones carry the `gpu` mark.
DEVICE_BACKENDS = [
    pytest.param(("cpu", "reference"), id="cpu-reference"),
    pytest.param(("cpu", "cpu"), id="cpu-cpu"),
    pytest.param(("cpu", "triton"), id="cpu-triton_interpreter"),
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
