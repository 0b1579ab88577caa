"""No module imports a layer above it, function-level imports included (they hid the cycles
issue 18 found). Layers, low to high: kernels (Triton launchers) < ops < nn, diffusion, data,
checkpoint, metrics < models < train < cli. Read from the source (ast), so it costs no imports."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# module prefix -> module prefixes it must not import (at any level of nesting)
FORBIDDEN = {
    "fastgen.kernels": ["fastgen.ops", "fastgen.nn", "fastgen.diffusion", "fastgen.models", "fastgen.data",
                        "fastgen.train", "fastgen.checkpoint", "fastgen.cli", "fastgen.bench", "fastgen.patch"],
    "fastgen.ops": ["fastgen.nn", "fastgen.diffusion", "fastgen.models", "fastgen.data", "fastgen.train",
                    "fastgen.checkpoint", "fastgen.cli", "fastgen.bench", "fastgen.patch"],
    "fastgen.data": ["fastgen.models", "fastgen.train", "fastgen.cli", "fastgen.bench"],
    "fastgen.checkpoint": ["fastgen.models", "fastgen.train", "fastgen.cli"],
    "fastgen.models": ["fastgen.train", "fastgen.cli", "fastgen.bench"],
    "fastgen.train": ["fastgen.cli"],
    "fastgen.data.base": ["fastgen.data.loaders"],
    "fastgen.bench.plots": ["fastgen.bench.harness"],
    "fastgen.bench.compare": ["fastgen.bench.harness"],
    "fastgen.diffusion._config": ["fastgen.diffusion.schedulers"],
}


def _modules():
    out = {}
    for top in ("fastgen", "kernels"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(folder, f)
                    rel = os.path.relpath(path, ROOT)[:-3]
                    name = ("fastgen/" + rel if top == "kernels" else rel).replace(os.sep, ".")
                    out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def _imports(name, path, modules):
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return found


def _under(module, prefix):
    return module == prefix or module.startswith(prefix + ".")


def test_no_module_imports_a_layer_above_it():
    modules = _modules()
    assert "fastgen.kernels.vq" in modules and "fastgen.data.loaders" in modules
    bad = []
    for name, path in sorted(modules.items()):
        imported = _imports(name, path, modules)
        for layer, forbidden in FORBIDDEN.items():
            if _under(name, layer):
                bad += [f"{name} imports {m}" for m in sorted(imported) for f in forbidden if _under(m, f)]
    assert not bad, "\n".join(bad)


def test_checks_see_function_level_imports(tmp_path):
    """The walk finds an import inside a function (how the cycles were hidden)."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from ..ops import reference\n")
    assert "fastgen.ops.reference" in _imports("fastgen.kernels.m", str(path), {"fastgen.ops.reference": ""})


# -- the reference (fastgen/ops/reference/) is the spec, not a runtime library ------------------

# who may import it: the spec itself, and the benchmark cases' eager baselines (an explicit tool)
REFERENCE_USERS = ("fastgen.ops.reference", "fastgen.bench")


def test_nothing_imports_the_reference_at_run_time():
    """No fastgen module imports fastgen.ops.reference (the registry loads a reference function
    by name when the reference backend runs), and the reference imports nothing from fastgen but
    the RNG it specifies (ops._philox): shared helpers would hide a bug from every comparison."""
    modules = _modules()
    assert "fastgen.ops.reference.vq" in modules
    bad = []
    for name, path in sorted(modules.items()):
        imported = _imports(name, path, modules)
        if not any(_under(name, u) for u in REFERENCE_USERS):
            bad += [f"{name} imports {m}" for m in sorted(imported) if _under(m, "fastgen.ops.reference")]
        if _under(name, "fastgen.ops.reference"):
            bad += [f"{name} (the reference) imports {m}" for m in sorted(imported)
                    if _under(m, "fastgen") and not _under(m, "fastgen.ops.reference")
                    and m not in ("fastgen.ops", "fastgen.ops._philox")]
    assert not bad, "\n".join(bad)


def test_running_every_family_loads_no_reference():
    """One op per family, forward and backward on the cpu backend (the diffusion step with
    dynamic thresholding: its per-sample quantile runs in Python), with fastgen.nn's flows and
    VQ imported: fastgen.ops.reference stays unimported (a fresh interpreter). Importing
    fastgen.diffusion.schedulers (diffusers, ~3 s) is left to the static test above."""
    import subprocess
    import sys
    code = """
import sys, torch, fastgen
from fastgen import ops
from fastgen.nn import flows, vq
def grad(*xs):
    return [x.detach().double().requires_grad_() for x in xs]
mu, lv, eps = grad(*torch.randn(3, 4, 5))
z, kl = ops.gaussian_reparam_kl(mu, lv, eps.detach(), backend="cpu"); (z.sum() + kl.sum()).backward()
q, k, v = grad(*torch.randn(3, 1, 2, 4, 8))
o, _ = ops.flash_attention(q, k, v, causal=True, backend="cpu"); o.sum().backward()
x, sh, rs = grad(*torch.randn(3, 2, 3, 4, 4))
y, ld = ops.affine_coupling(x, sh, rs, backend="cpu"); (y.sum() + ld.sum()).backward()
x, b = grad(torch.randn(2, 4, 3, 3), torch.randn(4))
ops.bias_act(x, b, act="silu", backend="cpu").sum().backward()
zq = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
book = torch.randn(5, 4, dtype=torch.float64)
out = ops.vq_quantize(zq, book, backend="cpu"); (out[0].sum() + out[1]).backward()
cs, es = torch.ones(5, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
ops.vq_ema_update(zq.detach(), out[2], cs, es, backend="cpu")
table = torch.linspace(0.99, 0.1, 10, dtype=torch.float64)
x, noise = grad(*torch.randn(2, 2, 3, 4, 4))
ops.add_noise(x, noise, torch.tensor([1, 2]), table, backend="cpu").sum().backward()
ops.ddpm_step(torch.randn(2, 3, 4), torch.randn(2, 3, 4), 3, table.float(), table.float(),
              noise=torch.randn(2, 3, 4), thresholding=True, backend="cpu")
assert not [m for m in sys.modules if m.startswith("fastgen.ops.reference")], sorted(sys.modules)
print("ok")
"""
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
