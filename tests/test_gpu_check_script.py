"""benchmarks/gpu_check.sh --dry-run: the one command a lent GPU runs (docs/design.md,
"Running on a lent GPU") goes through all its steps on the CPU and packs what the device tool
brings back (<= 8 files)."""
import os
import re
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
STEPS = ["info", "build", "test_triton", "test_cuda", "bench_quick", "bench_gaussian_reparam_kl",
         "bench_vq_nearest", "bench_vq_nearest_bf16", "bench_vq", "bench_attention_fp16",
         "bench_attention_bf16", "glow_step", "glow_step_32", "bench_gpt_sampling"]


def test_dry_run_runs_every_step_and_packs_at_most_8_files(tmp_path):
    out = tmp_path / "out"
    # ~135 s of CPU: about 80 s on an idle 2-core machine (dry-run budgets cap it at 300 s)
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, TMPDIR=str(tmp_path))
    proc = subprocess.run(["bash", SCRIPT, "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=420)
    report = f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    if re.search(r"^\| build \| failed \|", proc.stdout, re.M):  # its dry run imports fastgen._C
        pytest.fail("the dry run needs the native extension: fastgen._C does not import "
                    "(build it with bash scripts/setup.sh)\n" + report)
    assert proc.returncode == 0, report

    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8, files
    assert {"summary.md", "logs.tar.gz", "bench.tar.gz", "bench_quick.csv", "bench_headline.csv",
            "gpt_sampling.csv"} <= set(files), files

    summary = (out / "summary.md").read_text()
    statuses = dict(re.findall(r"^\| (\w+) \| (ok|failed|skipped|timed-out) \|", summary, re.M))
    assert list(statuses) == STEPS, summary  # every step, in order, with a status
    assert statuses.pop("build") == "skipped" and "dry run" in summary, summary
    assert set(statuses.values()) == {"ok"}, summary
    # the test steps really ran tests and were counted
    for step in ("test_triton", "test_cuda"):
        m = re.search(rf"^- {step} .*?: (\d+) passed, (\d+) failed", summary, re.M)
        assert m and int(m.group(1)) > 0 and m.group(2) == "0", summary
    assert "| fastgen-cpu |" in summary and "glow training step" in summary, summary

    with tarfile.open(out / "logs.tar.gz") as tar:
        logs = sorted(m.name for m in tar.getmembers() if m.isfile())
    assert logs == sorted(f"logs/{s}.log" for s in STEPS), logs
    assert not list(tmp_path.glob("gpu_check.*")), "the temp dir was not removed"


def test_only_the_named_steps_run(tmp_path):
    """GPU_CHECK_ONLY: a second call on a warm machine runs the benchmarks the first had no time
    for; info always runs, every other step is reported as skipped."""
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, TMPDIR=str(tmp_path),
               GPU_CHECK_ONLY="bench_gaussian_reparam_kl")
    proc = subprocess.run(["bash", SCRIPT, "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    summary = (out / "summary.md").read_text()
    statuses = dict(re.findall(r"^\| (\w+) \| (ok|failed|skipped|timed-out) \|", summary, re.M))
    assert list(statuses) == STEPS, summary
    ran = {k for k, v in statuses.items() if v != "skipped"}
    assert ran == {"info", "bench_gaussian_reparam_kl"} and statuses["bench_gaussian_reparam_kl"] == "ok", summary
    why = re.findall(r"^\| \w+ \| skipped \|.*not in GPU_CHECK_ONLY \|$", summary, re.M)
    assert len(why) == len(STEPS) - 2, summary
