"""Benchmark your own kernel against fastgen's: `provider` adds a provider to a case (an
existing one or your own), `case` registers a new case. Either way the provider is checked
against the case's reference before it is timed, and gets the same timing, CSV/JSONL rows and
plots as fastgen's own. Load a module of them with `fastgen bench --plugin MODULE_OR_FILE.py`.

    from fastgen import bench

    @bench.provider("bias_act", "my-bias-act")        # takes the case's inputs by name
    def my_bias_act(x, bias):
        ...
"""
import importlib
import importlib.util
import os
import sys

from .harness import CASES, MODES, Case, register_case


def provider(op, name=None, *, devices=("cpu", "cuda")):
    """Decorator: add the decorated function as provider `name` (default: its __name__) of the
    case `op`. It is called with the case's inputs as keyword arguments (see the case's
    make_inputs) and returns what the reference returns. `devices`: where it can run; elsewhere
    the row says skipped."""
    if op not in CASES:
        raise KeyError(f"fastgen.bench.provider: no case {op!r}; known: {', '.join(sorted(CASES))}")

    def register(fn):
        label = name or fn.__name__

        def factory(device):
            if device not in devices:
                return f"{label} runs on {', '.join(devices)} only"
            return fn
        CASES[op].peers[label] = factory
        return fn
    return register


def case(op, *, shapes, make_inputs, reference, quick_shapes=None, grad_inputs=(), modes=None,
         check=None, flops=None, bytes_moved=None, max_ratio=None):
    """Register a new case `op` (no fastgen kernel: eager, compile and the providers you add).
    make_inputs(shape, dtype, device, requires_grad) -> {name: tensor}; reference(**inputs) ->
    output(s). modes default to fwd and fwd+bwd when grad_inputs are given, else fwd."""
    if op in CASES:
        raise ValueError(f"fastgen.bench.case: {op!r} is already a case; add a provider to it instead")
    kwargs = {} if max_ratio is None else {"max_ratio": max_ratio}
    return register_case(Case(op=op, shapes=list(shapes), quick_shapes=list(quick_shapes or shapes),
                              make_inputs=make_inputs, reference=reference, fastgen=None,
                              grad_inputs=tuple(grad_inputs), modes=tuple(modes or (MODES if grad_inputs else ("fwd",))),
                              check=check, flops=flops, bytes_moved=bytes_moved, peers={}, **kwargs))


def load_plugin(spec):
    """Import a plugin: a module name on sys.path, or a path to a .py file."""
    if spec.endswith(".py") or os.sep in spec:
        path = os.path.abspath(spec)
        if not os.path.exists(path):
            raise SystemExit(f"fastgen bench: --plugin {spec}: no such file")
        name = "fastgen_bench_plugin_" + os.path.splitext(os.path.basename(path))[0]
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)

