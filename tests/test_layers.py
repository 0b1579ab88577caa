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
