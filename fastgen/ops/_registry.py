"""One mechanism that turns a fused op's implementations into `torch.ops.fastgen.<name>`.

A `FusedOp` defines the public schema (the op's arguments plus a keyword-only
`str backend='auto'`), registers one dispatcher for the CPU and CUDA keys that picks the kernel
(reference / cpu / triton / cuda, see fastgen/_backend.py), a fake for tracing, and optionally
autograd. The C++ kernels are separate ops, `torch.ops.fastgen.<name>_native`, defined in
csrc/fastgen.cpp; the dispatcher calls them for the "cpu" and "cuda" backends.
"""
import ast
import functools
import importlib
import warnings

import torch
from torch.utils import _python_dispatch

from .. import _backend, _ext
from ..kernels import _compat as _triton

LIB = torch.library.Library("fastgen", "FRAGMENT")
REGISTRY = {}

_DEVICE_KEYS = {"cpu": "CPU", "cuda": "CUDA"}
# Devices on which a native_checks op leaves argument checking to its C++ kernel. Not CUDA: on
# the H200 image of 2026-12-04 (torch 2.11, nvcc 13.0 with its /opt/gcc host compiler) every
# CUDA entry point whose C++ check rejected a shape died with SIGSEGV while raising: a message
# with an integer or a shape in it (bias "must have shape (8,), got [1, 8]"), and also from a
# direct torch.ops.fastgen.*_native call, while the dtype and device messages (no integer
# formatted in fastgen's code) raised cleanly; the same build against torch 2.11 here (gcc 12)
# raises every one. Until that is understood on a GPU, CUDA calls are checked in Python first,
# so no bad input reaches that path (a few microseconds per eager call; none under CUDA graphs
# or torch.compile). benchmarks/results/nvidia-h200-20261204/README.md has the runs;
# tests/test_gpu_regressions.py runs both layers' bad inputs in processes of their own.
NATIVE_CHECK_DEVICES = ("cpu",)


class FusedOp:
    """A fused op registered as `torch.ops.fastgen.<name>`.

    name:      op name
    args:      schema of the tensor arguments, e.g. "Tensor mu, Tensor logvar, Tensor eps"
    returns:   schema of the results, e.g. "(Tensor, Tensor)"
    reference: plain-PyTorch implementation: "<family>.<function>" in fastgen/ops/reference/,
               imported when the reference backend first runs (nothing imports the reference
               at run time otherwise), or a callable
    fake:      output metadata for tracing (shapes, dtypes, strides)
    check:     argument validation; raises TypeError/ValueError naming the argument
    triton:    launcher taking the op's arguments (kernels/<family>.py), or None
    native:    True if csrc/ defines `<name>_native` with CPU/CUDA kernels
    autograd:  (backward, setup_context) for torch.library.register_autograd, or None
    triton_dtypes: the floating dtypes the Triton kernel takes (None: all). On CUDA tensors,
               `auto` skips Triton for a call with a floating tensor of another dtype (fp64
               attention or VQ goes to the CUDA C++ kernel, which takes it).
    native_checks: the C++ kernels validate every argument themselves, in the Python `check`'s
               order and words (csrc/common/checks.h; tests/test_op_contract.py compares the two
               on every generated bad input), so on CPU tensors (NATIVE_CHECK_DEVICES) the cpu
               backend does not run `check` (several microseconds per call, much of a small op's
               time): the C++ layer is the one that rejects. The fake (tracing), the reference /
               triton / cuda_emu backends and CUDA tensors run `check` first (see
               NATIVE_CHECK_DEVICES).
               Such an op also skips its own dispatcher entry in eager calls on plain tensors
               that need no gradient (no autograd, or grad mode off, or no input requiring grad):
               once a (device, backend) has resolved to the C++ kernel, `__call__` calls
               `<name>_native` directly (the outer op's boxed Python dispatch costs ~4 us per
               call). Under torch.compile, tensor subclasses, dispatch or
               torch-function modes the call goes through `torch.ops.fastgen.<name>` as usual.
    native_autograd: `<name>_native` also has a C++ autograd kernel (csrc/cpu/autograd.cpp)
               equivalent to `autograd`. Eager calls that need a gradient then call the native
               op itself, once resolved as above, so the engine runs a C++ node instead of a
               Python one (tens of microseconds per forward + backward at small sizes). Needs
               native_checks; other backends and CUDA tensors keep the autograd.Function below.

    An eager call of an op with autograd that needs no gradient runs the selected kernel alone
    (`_run`: no autograd node, ~10 us less than an autograd.Function under no_grad).
    Eager calls that need a gradient skip the dispatcher too: `__call__` runs the selected
    kernel inside a `torch.autograd.Function` built from the same (backward, setup_context),
    one per (device, backend). The dispatcher route (autograd key -> Python autograd impl ->
    CPU/CUDA key -> `_run`) costs ~30 us more per forward + backward, which on the small
    activations of a flow or a GAN layer is more than the kernels themselves. Same conditions as
    above: torch.compile, tensor subclasses, dispatch / torch-function modes and functorch
    transforms take `torch.ops.fastgen.<name>` and its registered autograd.
    """

    def __init__(self, name, args, returns, *, reference, fake, check, triton=None, native=False,
                 autograd=None, native_checks=False, native_autograd=False, triton_dtypes=None):
        self.name = name
        self.triton_dtypes = frozenset(triton_dtypes) if triton_dtypes is not None else None
        self.qualname = f"fastgen::{name}"
        self._reference = reference
        self.triton = triton
        self.native_qualname = f"fastgen::{name}_native" if native else None
        self.check = check
        # (name, is_tensor, optional) per argument, from e.g. "Tensor z, Tensor? mask=None", and
        # the defaults: the dispatcher leaves out trailing arguments equal to their default.
        decls = [a.split() for a in args.split(",")]
        self.arg_names = tuple((d[-1].split("=")[0], d[0].startswith("Tensor"), d[0].endswith("?"))
                               for d in decls)
        self.defaults = [ast.literal_eval(d[-1].split("=", 1)[1]) if "=" in d[-1] else None
                         for d in decls]
        self._kernels = {}
        self._checked = {}  # (device, backend) -> does _run call `check` first
        self.native_checks = native_checks
        if native_autograd and not (native_checks and autograd is not None):
            raise ValueError(f"FusedOp {name}: native_autograd needs native_checks and autograd")
        self.native_autograd = native_autograd
        self._direct = {}  # (device, backend) -> the native kernel `__call__` may call itself
        self._may_go_direct = native_checks  # (ops with autograd: only calls needing no gradient)
        LIB.define(f"{name}({args}, *, str backend='auto') -> {returns}")
        for device, key in _DEVICE_KEYS.items():
            LIB.impl(name, functools.partial(self._run, device), key)

        def fake_impl(*tensors, backend="auto"):
            tensors = tensors + tuple(self.defaults[len(tensors):])
            check(*tensors)
            return fake(*tensors)

        torch.library.register_fake(self.qualname, fake_impl, lib=LIB)
        self._autograd = autograd
        self._functions = {}  # (device, backend) -> autograd.Function.apply for eager calls
        if autograd is not None:
            backward, setup_context = autograd
            torch.library.register_autograd(self.qualname, backward, setup_context=setup_context, lib=LIB)
        self.op = getattr(torch.ops.fastgen, name).default
        REGISTRY[name] = self

    @property
    def reference(self):
        """The reference function (imported from fastgen.ops.reference.<family> on first use)."""
        if isinstance(self._reference, str):
            module, name = self._reference.rsplit(".", 1)
            self._reference = getattr(importlib.import_module(f"fastgen.ops.reference.{module}"), name)
        return self._reference

    @reference.setter
    def reference(self, function):
        self._reference = function

    def __call__(self, *tensors, backend=None):
        backend = _backend.resolve(backend)
        if self._direct or self._autograd is not None:
            first = tensors[0] if tensors else None
            if (type(first) is torch.Tensor and first.device.type in _DEVICE_KEYS
                    and not torch.compiler.is_compiling()
                    and not _python_dispatch._is_in_torch_dispatch_mode
                    and not torch._C._is_torch_function_mode_enabled()
                    and torch._C._functorch.peek_interpreter_stack() is None):
                key = self._key(first.device.type, backend, tensors)
                if self._autograd is not None and torch.is_grad_enabled() and any(
                        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):  # Parameters too
                    kernel = self.native_autograd and self._direct.get(key)
                    if kernel:  # the native op's C++ autograd node
                        if len(tensors) < len(self.defaults):
                            tensors = tensors + tuple(self.defaults[len(tensors):])
                        try:
                            return kernel(*tensors)
                        except RuntimeError:
                            self._dispatcher_rejected(tensors)
                            raise
                    apply = self._functions.get(key) or self._eager_function(key)
                    if len(tensors) < len(self.defaults):
                        tensors = tensors + tuple(self.defaults[len(tensors):])
                    try:
                        return apply(*tensors)
                    except RuntimeError:
                        self._reject_non_tensors(tensors)
                        raise
                kernel = self._direct.get(key)
                if kernel:
                    if len(tensors) < len(self.defaults):
                        tensors = tensors + tuple(self.defaults[len(tensors):])
                    try:
                        return kernel(*tensors)
                    except RuntimeError:
                        self._dispatcher_rejected(tensors)
                        raise
                if self._autograd is not None:  # no gradient needed: the kernel, no autograd node
                    try:
                        return self._run(key[0], *tensors, backend=backend)
                    except RuntimeError:
                        self._reject_non_tensors(tensors)
                        raise
        try:
            return self.op(*tensors, backend=backend)
        except RuntimeError:
            self._reject_non_tensors(tensors)
            raise

    def _eager_function(self, key):
        """autograd.Function.apply running `_run` (kernel choice, checks) with this op's
        registered backward and setup_context, for eager calls on `key` = (device, backend)."""
        backward, setup_context = self._autograd
        device, backend = key[:2]
        run, keyword_only = functools.partial(self._run, device, backend=backend), {"backend": backend}
        kernels, checked, dispatcher_rejected = self._kernels, self._checked, self._dispatcher_rejected

        def forward(ctx, *inputs):
            kernel = kernels.get(key)
            if kernel is None or checked[key]:  # the first call selects the kernel; Python-checked ops
                output = run(*inputs)
            else:  # the C++ kernel checks its arguments: `_run` without its lookups (µs per call)
                try:
                    output = kernel(*inputs)
                except RuntimeError:
                    dispatcher_rejected(inputs)
                    raise
            setup_context(ctx, inputs, keyword_only, output)
            return output

        function = type(f"EagerBackwardFor_fastgen_{self.name}", (torch.autograd.Function,),
                        {"forward": staticmethod(forward), "backward": staticmethod(backward)})
        self._functions[key] = function.apply
        return function.apply

    def _reject_non_tensors(self, tensors):
        """The dispatcher rejects a non-tensor with a RuntimeError; say it the usual way
        (looked for only after a failure: the check costs microseconds per call)."""
        for (name, is_tensor, optional), t in zip(self.arg_names, tensors):
            if is_tensor and not isinstance(t, torch.Tensor) and not (optional and t is None):
                raise TypeError(f"fastgen.{self.name}: {name} must be a torch.Tensor, "
                                f"got {type(t).__name__}") from None

    # -- dispatch ---------------------------------------------------------------------------

    def _run(self, device, *tensors, backend="auto"):
        if len(tensors) < len(self.defaults):
            tensors = tensors + tuple(self.defaults[len(tensors):])
        key = self._key(device, backend, tensors)
        kernel = self._kernels.get(key)
        if kernel is None:
            kernel = self._select(*key)
            self._checked[key] = not (self.native_checks and kernel is self._native_kernel()
                                      and device in NATIVE_CHECK_DEVICES)
            self._kernels[key] = kernel
        if self._checked[key]:
            self.check(*tensors)
            return kernel(*tensors)
        if self._may_go_direct:
            self._direct[key] = kernel
        try:
            return kernel(*tensors)  # the C++ checks, worded as `check` (tests/test_op_contract.py)
        except RuntimeError:
            self._dispatcher_rejected(tensors)
            raise

    def _dispatcher_rejected(self, tensors):
        """The C++ op of a native_checks op raised a RuntimeError, not its checks' ValueError /
        TypeError: the dispatcher refused the call before those checks ran (a non-tensor, or a
        tensor on a device the op has no kernel for, such as meta next to CPU tensors). Raise what
        the Python check says of these arguments, if it finds a fault; else the error stands."""
        self._reject_non_tensors(tensors)
        if len(tensors) < len(self.defaults):
            tensors = tensors + tuple(self.defaults[len(tensors):])
        self.check(*tensors)

    def _native_kernel(self):
        """The C++ op (one OpOverload for the cpu and cuda backends); None without one, or where
        fastgen._C is not loaded (a FASTGEN_SKIP_EXT=1 install: Triton kernels, Python checks)."""
        if self.native_qualname is None or _ext.NATIVE is None:
            return None
        return self._implementation("cpu")

    def _key(self, device, backend, tensors):
        """(device, backend), plus a marker when `auto` must skip Triton for these dtypes."""
        if self.triton_dtypes is not None and device == "cuda" and backend == "auto":
            for t in tensors:
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype not in self.triton_dtypes:
                    return (device, backend, "dtype")
        return (device, backend)

    def _select(self, device, backend, skip_triton=None):
        if backend != "auto":
            why = self.unavailable(backend, device)
            if why is not None:
                raise RuntimeError(f"fastgen.{self.name}: backend {backend!r} cannot run {device} "
                                   f"tensors: {why}")
            return self._implementation(backend)
        order = ("triton", "cuda") if device == "cuda" else ("cpu",)
        reasons = []
        if skip_triton:  # the Triton kernel does not take this dtype; not a fallback to warn about
            order = ("cuda",)
        for candidate in order:
            why = self.unavailable(candidate, device)
            if why is None:
                break
            reasons.append(f"{candidate}: {why}")
        else:
            candidate = "reference"
        if reasons:
            warnings.warn(f"fastgen.{self.name} on {device} tensors uses the {candidate} backend "
                          f"({'; '.join(reasons)})", RuntimeWarning, stacklevel=3)
        return self._implementation(candidate)

    def _implementation(self, backend):
        if backend == "reference":
            return self.reference
        if backend == "triton":
            return _triton.on_device(self.triton)
        if backend == "cuda_emu":  # the CUDA kernels on the CPU execution model (fastgen._C_emu)
            return getattr(torch.ops.fastgen_emu, f"{self.name}_native").default
        namespace, name = self.native_qualname.split("::")
        return getattr(getattr(torch.ops, namespace), name).default

    def unavailable(self, backend, device):
        """None if `backend` can run this op on `device` tensors, else the reason why not."""
        if backend == "reference":
            return None
        if backend in ("cpu", "cuda"):
            if device != backend:
                return f"the {backend} backend runs {backend} tensors only"
            return self._native_missing(_DEVICE_KEYS[device])
        if backend == "cuda_emu":
            return self._emu_missing(device)
        if backend == "triton":
            if self.triton is None:
                return "no Triton kernel for this op"
            if _triton.TRITON_ERROR:
                return _triton.TRITON_ERROR
            if device == "cpu" and not _triton.INTERPRET:
                return "Triton runs CPU tensors only under TRITON_INTERPRET=1"
            return None
        raise ValueError(f"fastgen: unknown backend {backend!r}; expected one of {_backend.BACKENDS}")

    def _emu_missing(self, device):
        """None if the CUDA kernel runs under the CPU execution model here, else why not."""
        if device != "cpu":
            return "the cuda_emu backend runs cpu tensors only"
        if self.native_qualname is None:
            return "no C++ kernel for this op"
        if _ext.EMU is None:
            return _ext.EMU_ERROR
        if not _ext.has_kernel(f"fastgen_emu::{self.name}_native", "CPU"):
            return f"no CUDA kernel for fastgen_emu::{self.name}_native in fastgen._C_emu"
        return None

    def _native_missing(self, key):
        if self.native_qualname is None:
            return "no C++ kernel for this op"
        if _ext.NATIVE is None:
            return _ext.NATIVE_ERROR
        if key == "CUDA" and not _ext.WITH_CUDA:
            return ("extension built without CUDA (rebuild where a GPU is visible, or with "
                    "FASTGEN_FORCE_CUDA=1)")
        if not _ext.has_kernel(self.native_qualname, key):
            return f"no {key} kernel registered for {self.native_qualname}"
        return None

    def status(self):
        """{backend: (live, note)} on each backend's natural device, for `fastgen info`."""
        gpu = torch.cuda.is_available()
        out = {"reference": (True, "plain PyTorch")}
        why = self.unavailable("cpu", "cpu")
        out["cpu"] = (why is None, why or "C++ CPU kernel")
        why = self.unavailable("triton", "cuda" if gpu else "cpu")
        out["triton"] = (why is None, why or ("Triton on GPU" if gpu else "Triton interpreter on CPU tensors"))
        why = self._native_missing("CUDA")
        if why is None and not gpu:
            out["cuda"] = (False, "CUDA kernel registered; no GPU visible to run it")
        else:
            out["cuda"] = (why is None, why or "CUDA C++ kernel")
        why = self._emu_missing("cpu")
        out["cuda_emu"] = (why is None, why or "CUDA C++ kernel on the CPU execution model (CPU tensors)")
        return out
