"""The README's code blocks work as written, in a fresh shell.

Every ```bash and ```python block of README.md runs: the bash blocks one after another in one
fresh `bash` (an environment with nothing from this process: no venv on PATH, no PYTHONPATH),
the Python blocks with the venv's interpreter. They run in a scratch folder that mirrors the
repository (a symlink per top-level entry), so `bash scripts/setup.sh`, `source
.venv/bin/activate` and relative paths work as in a clone while outputs such as runs/ land in
the scratch folder. A block the suite must not run (the test suite itself, a reinstall) is
preceded by `<!-- readme-test: skip: REASON -->`; the test lists those and requires a reason.
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
BLOCK = re.compile(r"(?:<!--\s*readme-test:\s*(?P<marker>.*?)\s*-->\s*\n)?```(?P<lang>bash|python)\n(?P<code>.*?)```",
                   re.S)


def readme_blocks(text=None):
    """[(lang, code, skip_reason or None, line number)] for every bash / python block."""
    text = open(README).read() if text is None else text
    out = []
    for m in BLOCK.finditer(text):
        marker, reason = m.group("marker"), None
        if marker is not None:
            kind, _, reason = marker.partition(":")
            if kind.strip() != "skip" or not reason.strip():
                raise ValueError(f"README line {text.count(chr(10), 0, m.start()) + 1}: a readme-test marker "
                                 f"must read 'skip: REASON', got {marker!r}")
            reason = reason.strip()
        out.append((m.group("lang"), m.group("code"), reason, text.count("\n", 0, m.start("code")) + 1))
    return out


def _mirror(tmp_path):
    """A scratch folder with a symlink to each top-level entry of the repository except
    runs/ (where `fastgen train` writes)."""
    work = tmp_path / "clone"
    work.mkdir()
    for name in os.listdir(ROOT):
        if name not in ("runs", ".git", ".pytest_cache"):
            os.symlink(os.path.join(ROOT, name), work / name)
    return work


def _fresh_env(tmp_path):
    """What a new login shell has: no venv, no PYTHONPATH, no test-run switches; the build
    switches the user chose stay (scripts/setup.sh then finds the build it made up to date)."""
    names = ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "CUDA_HOME", "FASTGEN_FORCE_CUDA",
             "FASTGEN_SKIP_CUDA_BUILD", "FASTGEN_SKIP_EXT", "TORCH_CUDA_ARCH_LIST", "FASTGEN_CPU_SIMD", "MAX_JOBS")
    keep = {k: os.environ[k] for k in names if k in os.environ}
    keep["PATH"] = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                   if not p.startswith(os.path.join(ROOT, ".venv")))
    keep["MPLBACKEND"] = "Agg"
    keep["FASTGEN_SETUP_QUIET"] = "1"
    return keep


def test_marker_parsing():
    text = ("```bash\necho a\n```\n<!-- readme-test: skip: runs the whole suite -->\n```bash\nbash x\n```\n"
            "```\nlayout, not code\n```\n```python\nprint(1)\n```\n")
    blocks = readme_blocks(text)
    assert [(lang, reason) for lang, _, reason, _ in blocks] == [
        ("bash", None), ("bash", "runs the whole suite"), ("python", None)]
    with pytest.raises(ValueError, match="skip: REASON"):
        readme_blocks("<!-- readme-test: skip -->\n```bash\nx\n```\n")


def test_readme_has_runnable_blocks():
    blocks = readme_blocks()
    assert any(lang == "bash" and reason is None for lang, _, reason, _ in blocks)
    assert any(lang == "python" and reason is None for lang, _, reason, _ in blocks)
    # the first block a new user meets sets up and activates the environment
    lang, code, reason, _ = blocks[0]
    assert lang == "bash" and reason is None
    assert "scripts/setup.sh" in code and "source .venv/bin/activate" in code


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, ".venv", "bin", "activate")),
                    reason="needs the repository's .venv (made by scripts/setup.sh)")
def test_readme_code_blocks_run_in_a_fresh_shell(tmp_path):
    work = _mirror(tmp_path)
    env = _fresh_env(tmp_path)
    blocks = readme_blocks()
    skipped = [(line, reason) for _, _, reason, line in blocks if reason]
    print("README blocks not run here:", *(f"line {line}: {reason}" for line, reason in skipped), sep="\n  ")
    bash = [code for lang, code, reason, _ in blocks if lang == "bash" and reason is None]
    script = "set -euo pipefail\n" + "\n".join(bash)
    run = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"README bash blocks failed (rc {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    python = os.path.join(ROOT, ".venv", "bin", "python")
    for lang, code, reason, line in blocks:
        if lang == "python" and reason is None:
            run = subprocess.run([python, "-c", code], cwd=work, env=env, capture_output=True, text=True,
                                 timeout=600)
            assert run.returncode == 0, f"README python block at line {line} failed:\n{run.stderr[-3000:]}"


def test_public_api_imports_as_documented():
    """`import fastgen` makes the documented subpackages reachable (loaded on first use)."""
    code = ("import fastgen; fastgen.nn.functional.scaled_dot_product_attention; fastgen.nn.MultiheadAttention; "
            "fastgen.diffusion.DDIMScheduler; fastgen.models; fastgen.data; fastgen.metrics")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr


def test_fastgen_info_is_quiet_and_lean():
    """`fastgen info` prints its report and nothing else (no torch log lines), without loading the
    benchmark harness (torch.utils.benchmark pulls in cpp_extension, which warns on CPU-only
    machines with a CUDA toolkit)."""
    code = ("import sys; from fastgen import cli; rc = cli.main(['info']); "
            "assert rc == 0; assert 'fastgen.bench' not in sys.modules, 'info imported the bench'; "
            "assert 'torch.utils.benchmark' not in sys.modules")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "native_extension" in run.stdout
    assert run.stderr.strip() == "", run.stderr
