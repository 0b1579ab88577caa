"""scripts/build_ext.py: the incremental native build does no work when nothing changed, and
rebuilds when a source, setup.py, a build switch or torch changes (no compiler runs here)."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def build_ext(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("fastgen_build_ext", os.path.join(ROOT, "scripts", "build_ext.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "csrc" / "cpu").mkdir(parents=True)
    (tmp_path / "csrc" / "cpu" / "op.cpp").write_text("int f() { return 1; }\n")
    (tmp_path / "csrc" / "common").mkdir()
    (tmp_path / "csrc" / "common" / "op.h").write_text("#pragma once\n")
    (tmp_path / "setup.py").write_text("# setup\n")
    (tmp_path / "fastgen").mkdir()
    monkeypatch.setattr(mod, "ROOT", str(tmp_path))
    monkeypatch.setattr(mod, "BUILD", str(tmp_path / "build"))
    monkeypatch.setattr(mod, "STAMP", str(tmp_path / "build" / "fastgen_ext.stamp"))
    monkeypatch.setattr(mod, "LOG", str(tmp_path / "build" / "build.log"))
    for name in mod.SWITCHES:
        monkeypatch.delenv(name, raising=False)
    return mod


def test_stamp_follows_sources_switches_and_torch(build_ext, tmp_path, monkeypatch):
    base = build_ext.stamp()
    assert build_ext.stamp() == base
    (tmp_path / "csrc" / "common" / "op.h").write_text("#pragma once\n// changed\n")
    changed_header = build_ext.stamp()
    assert changed_header != base
    (tmp_path / "setup.py").write_text("# setup, changed\n")
    assert build_ext.stamp() != changed_header
    before = build_ext.stamp()
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert build_ext.stamp() != before
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    monkeypatch.setattr(build_ext, "_torch_version", lambda: "0.0.0-other")
    assert build_ext.stamp() != before


def test_nothing_changed_runs_no_build(build_ext, tmp_path, monkeypatch, capsys):
    def no_build(*args, **kwargs):
        raise AssertionError("the build ran although nothing changed")

    (tmp_path / "build").mkdir()
    (tmp_path / "fastgen" / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (tmp_path / "build" / "fastgen_ext.stamp").write_text(build_ext.stamp() + "\n")
    monkeypatch.setattr(build_ext.subprocess, "Popen", no_build)
    assert build_ext.build() == 0
    assert "up to date" in capsys.readouterr().out
    # a changed source (or a missing library) does build
    (tmp_path / "csrc" / "cpu" / "op.cpp").write_text("int f() { return 2; }\n")
    with pytest.raises(AssertionError, match="the build ran"):
        build_ext.build()


def test_progress_names_the_file_compiled(build_ext):
    cxx = ("[1/8] c++ -MMD -MF /b/temp/csrc/cpu/vae.o.d -O3 -I/r/csrc -c -c /r/csrc/cpu/vae.cpp "
           "-o /b/temp/csrc/cpu/vae.o -fopenmp")
    nvcc = ("[3/9] /usr/bin/nvcc --generate-dependencies-with-compile --dependency-output /b/vq.o.d -c "
            "/r/csrc/cuda/vq.cu -o /b/vq.o -O3")
    assert build_ext._source_of(cxx).endswith("csrc/cpu/vae.cpp")
    assert build_ext._source_of(nvcc).endswith("csrc/cuda/vq.cu")
