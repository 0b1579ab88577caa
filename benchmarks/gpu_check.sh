#!/usr/bin/env bash
# fastgen on a lent GPU in ONE call of the device tool (docs/design.md, "Running on a lent GPU":
# one command of at most 10 minutes, 15 minutes of device time per session with the machine
# start, only the working tree travels, only 8 files of $OUT come back):
#
#   device tool:  run(command="bash benchmarks/gpu_check.sh", timeout_s=600)
#                 then commit summary.md (and the CSVs you want) from files_at under
#                 benchmarks/results/<device>/
#   here (CI):    bash benchmarks/gpu_check.sh --dry-run    # the same steps on this CPU
#
# Steps, in this order, each under its own `timeout` (seconds; the env var overrides it):
#   info          nvidia-smi, python / torch / triton / nvcc / ninja versions    GPU_CHECK_INFO_S=30
#   build         TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 pip install -e . --no-build-isolation
#                 --no-deps, then checks fastgen._C has its CUDA kernels     GPU_CHECK_BUILD_S=150
#   test_triton   pytest -m gpu -k triton: the Triton backend's GPU tests (a FASTGEN_SKIP_EXT=1
#                 editable install first if the build failed and fastgen does not import)
#                                                                             GPU_CHECK_TRITON_TESTS_S=200
#   test_cuda     pytest -m gpu -k "not triton": the CUDA C++ backend and the other GPU tests
#                 (cuda-reference, default backend), AT THE SAME TIME as test_triton (two pytest
#                 runs of GPU_CHECK_TEST_WORKERS workers each); skipped if build failed
#                                                                             GPU_CHECK_CUDA_TESTS_S=200
#   bench_quick   `fastgen bench --quick --device cuda`: every case       GPU_CHECK_BENCH_QUICK_S=210
#   bench_gaussian_reparam_kl .. bench_gpt_sampling  the headline benchmarks, one at a time,
#                 each at most                                                GPU_CHECK_BENCH_S=150
# (The first H200 run, 2026-12-04, ran the tests one after the other with 150 + 120 s: neither
# finished; bench_quick reached 14 of its 18 cases in 150 s, and the benchmarks after it got no
# time.) One call does not fit everything: the headline benchmarks run in whatever is left. To
# run the rest in a second call while the machine is still warm (the build stays installed),
# name the steps: GPU_CHECK_ONLY="bench_vq bench_attention_fp16 ..." runs only those (and info),
# and reports the others as skipped.
# All steps share one deadline, GPU_CHECK_TOTAL_S=540 from the start: a step gets the smaller of
# its budget and what is left, and one that would get under GPU_CHECK_MIN_S=10 is skipped ("no
# time left"), so the benchmarks get whatever the tests and the build leave and the command ends
# (packing included) well inside the tool's 600 s. A step that runs out of time gets SIGINT, so
# pytest still prints its counts. Pytest runs GPU_CHECK_TEST_WORKERS=8 xdist workers where
# pytest-xdist is installed. A failed step does not stop the later ones (only test_cuda needs
# build); the exit status is 1 if any step failed or timed out. PYTHON picks the interpreter.
#
# What comes back: $OUT (the device tool sets it; default benchmarks/results/gpu-<date>) gets
# at most these 6 files (one whose step wrote nothing is left out); logs and benchmark outputs
# are written to a temp dir and packed; the script fails if $OUT holds more than 8 files.
#   summary.md          device, each step ok / failed / skipped / timed-out with its wall time and
#                       budget, pytest counts and failures of both test steps, the headline
#                       ratios (vs eager, vs torch.compile; Glow step; GPT sampling); file list
#   logs.tar.gz         logs/<step>.log, one per step
#   bench.tar.gz        every benchmark's output folder (results.csv / .jsonl / .png)
#   bench_quick.csv     the `fastgen bench --quick` rows
#   bench_headline.csv  the rows of the other `fastgen bench` runs, merged
#   gpt_sampling.csv    KV cache vs recompute
# The summary is also printed last, so the tool's output tail shows it.
#
# --dry-run (CI: tests/test_gpu_check_script.py): the same steps in the same order on the CPU,
# Triton under the interpreter (TRITON_INTERPRET=1): each test step runs a few fast tests of one
# op file on the triton resp. cpu backend; build builds nothing, it checks that fastgen._C
# imports and reports "skipped (dry run)"; the benchmarks run at their smallest sizes (--quick,
# forward only, against eager alone; Glow --size 8, GPT 8 tokens), two at a time
# (GPU_CHECK_BENCH_JOBS=2). ~135 s of CPU (about 80 s on an idle 2-core machine), most of it
# importing torch (and torch.compile's modules) in 14 processes; the dry-run budgets (60-90 s a
# step, 300 s in all) are only caps for a machine busy with other work. Python: .venv/bin/python.
# Default OUT: benchmarks/results/local/gpu-check-dry-run-<date> (git-ignored). Same files.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

# ---------------------------------------------------------------- steps (each runs in its own
# process: `gpu_check.sh __step NAME`, under `timeout`, with stdout+stderr in $LOGS/NAME.log)

PYTEST_MAIN='import signal, sys, pytest
# a timeout sends SIGINT; make sure it interrupts pytest (which then prints its counts) even
# where the parent shell left SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.default_int_handler)
sys.exit(pytest.main(sys.argv[1:]))'

run_pytest() {
  local xdist=()
  if [ "$DRY" = 0 ] && [ "${GPU_CHECK_TEST_WORKERS:-8}" -gt 1 ] && "$PY" -c "import xdist" 2>/dev/null; then
    xdist=(-n "${GPU_CHECK_TEST_WORKERS:-8}")
  fi
  echo "+ pytest -q -p no:cacheprovider ${xdist[*]} $*"
  "$PY" -c "$PYTEST_MAIN" -q -p no:cacheprovider "${xdist[@]}" "$@"
}

# dry run: a handful of fast tests of one small op file (the same op on every backend)
DRY_TESTS=tests/test_ops_vae.py
DRY_NARROW="(float32 or empty) and not 40001"

step_info() {
  date -u "+%Y-%m-%d %H:%M:%S UTC"; uname -a
  echo "--- nvidia-smi"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1 > "$WORK/device_smi.txt"
  else
    echo "nvidia-smi: not found"
  fi
  echo "--- cpu / memory / disk"
  echo "cores: $(nproc)"; grep -m1 "model name" /proc/cpuinfo || true
  free -g 2>/dev/null | head -n 2 || true; df -h . | tail -n 1
  echo "--- toolchain"
  if command -v nvcc >/dev/null; then nvcc --version | tail -n 2; else echo "nvcc: not found"; fi
  if command -v ninja >/dev/null; then echo "ninja $(ninja --version)"; else echo "ninja: not on PATH"; fi
  "$PY" -m pip --version || true
  if command -v git >/dev/null && git rev-parse --git-dir >/dev/null 2>&1; then
    echo "commit $(git rev-parse --short HEAD)"; git status --short | head -n 20
  fi
  echo "--- python"
  "$PY" - "$WORK/device_torch.txt" <<'EOF'
import platform, sys
print("python", sys.version.split()[0], platform.machine())
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    line = f"{p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} device(s)"
else:
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    line = f"no GPU visible to torch; CPU {model}"
print("device", line)
with open(sys.argv[1], "w") as f:
    f.write(line + "\n")
from importlib import metadata
for name in ("triton", "pytest", "pytest-xdist", "numpy", "matplotlib", "ninja", "setuptools", "fastgen"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "not installed")
EOF
}

step_test_triton() {
  if [ "$DRY" = 1 ]; then
    run_pytest "$DRY_TESTS" -k "triton and ($DRY_NARROW)"
    return
  fi
  # fastgen imports from this tree only once installed (kernels/ is fastgen.kernels): a pure
  # Python editable install, no native build, unless a previous install already did that
  if ! "$PY" -c "import os, sys, fastgen; sys.exit(not os.path.realpath(fastgen.__file__).startswith(os.path.realpath('fastgen')))" 2>/dev/null; then
    echo "+ FASTGEN_SKIP_EXT=1 pip install -e . --no-build-isolation --no-deps"
    FASTGEN_SKIP_EXT=1 "$PY" -m pip install -q -e . --no-build-isolation --no-deps || return 1
  fi
  run_pytest tests -m gpu -k triton
}

step_build() {
  if [ "$DRY" = 1 ]; then
    "$PY" -c "import fastgen._C, fastgen._ext as e; print('fastgen._C imports:', fastgen._C.__file__, '| CUDA kernels:', bool(e.WITH_CUDA), '| CPU SIMD:', e.CPU_SIMD)" || {
      echo "fastgen._C does not import: build the extension first (bash scripts/setup.sh)"; return 1; }
    return 0
  fi
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
  echo "+ TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS pip install -v -e . --no-build-isolation --no-deps"
  "$PY" -m pip install -v -e . --no-build-isolation --no-deps || return 1
  "$PY" -c "import sys, fastgen._ext as e; print('fastgen._C:', e.NATIVE_ERROR or 'ok', '| CUDA kernels:', e.WITH_CUDA); sys.exit(0 if e.WITH_CUDA else 'fastgen._C was built without CUDA kernels')" || return 1
  "$PY" -m fastgen info
}

step_test_cuda() {
  if [ "$DRY" = 1 ]; then
    run_pytest "$DRY_TESTS" -k "(cpu-cpu or cuda-cuda) and ($DRY_NARROW)"
    return
  fi
  run_pytest tests -m gpu -k "not triton"
}

# the benchmarks: the real run at full size on cuda; the dry run at the smallest sizes on the
# CPU, forward only, against eager alone (no torch.compile / faiss timings)
bench_opts() {  # options every `fastgen bench` run gets last (in the dry run they win)
  if [ "$DRY" = 1 ]; then echo "--quick --providers fastgen-cpu --mode fwd"; fi
}
step_bench_quick() {
  local dry_op=(); [ "$DRY" = 1 ] && dry_op=(--op gaussian_reparam_kl)
  "$PY" -m fastgen bench --quick "${dry_op[@]}" --device "$DEV" $(bench_opts) --out "$BENCH/bench_quick"
}
step_bench_gaussian_reparam_kl() {
  "$PY" benchmarks/bench_gaussian_reparam_kl.py --device "$DEV" $(bench_opts) --out "$BENCH/bench_gaussian_reparam_kl"
}
step_bench_vq_nearest() {
  "$PY" benchmarks/bench_vq_nearest.py --device "$DEV" $(bench_opts) --out "$BENCH/bench_vq_nearest"
}
step_bench_vq_nearest_bf16() {
  "$PY" benchmarks/bench_vq_nearest.py --device "$DEV" --dtype bf16 $(bench_opts) --out "$BENCH/bench_vq_nearest_bf16"
}
step_bench_vq() {
  "$PY" -m fastgen bench --op vq_quantize,vq_ema_update --device "$DEV" $(bench_opts) --out "$BENCH/bench_vq"
}
step_bench_attention_fp16() {
  "$PY" -m fastgen bench --op flash_attention,decode_attention --device "$DEV" --dtype fp16 $(bench_opts) --out "$BENCH/bench_attention_fp16"
}
step_bench_attention_bf16() {
  "$PY" -m fastgen bench --op flash_attention --device "$DEV" --dtype bf16 --mode fwd+bwd $(bench_opts) --out "$BENCH/bench_attention_bf16"
}
glow_opts() {  # glow_opts SIZE: the real run at SIZE; the dry run at the smallest size, once
  if [ "$DRY" = 1 ]; then echo "--repeats 1 --size 8"; else echo "--repeats 9 --size $1"; fi
}
step_glow_step() {
  "$PY" benchmarks/flows_cpu_time.py --device "$DEV" $(glow_opts 16)
}
step_glow_step_32() {
  "$PY" benchmarks/flows_cpu_time.py --device "$DEV" $(glow_opts 32)
}
step_bench_gpt_sampling() {
  local small=(); [ "$DRY" = 1 ] && small=(--tokens 8 --batch 1 --layers 1 --embd 32 --heads 2 --repeats 1)
  mkdir -p "$BENCH/gpt_sampling"
  "$PY" benchmarks/bench_gpt_sampling.py --device "$DEV" "${small[@]}" --out "$BENCH/gpt_sampling/gpt_sampling.csv"
}

if [ "${1:-}" = __step ]; then  # internal: run one step (the parent exported the settings)
  "step_$2"
  exit
fi

# ---------------------------------------------------------------- settings

DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (--dry-run, --help)" >&2; exit 2 ;;
  esac
done

STAMP="$(date +%Y%m%d-%H%M)"
if [ "$DRY" = 1 ]; then
  PY="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
  OUT="${OUT:-benchmarks/results/local/gpu-check-dry-run-$STAMP}"
  DEV=cpu
  export TRITON_INTERPRET=1 FASTGEN_TEST_REQUIRE="${FASTGEN_TEST_REQUIRE:-cpu,triton}"
  T_TOTAL="${GPU_CHECK_TOTAL_S:-300}" T_INFO="${GPU_CHECK_INFO_S:-30}" T_TRITON="${GPU_CHECK_TRITON_TESTS_S:-60}"
  T_BUILD="${GPU_CHECK_BUILD_S:-30}" T_CUDA="${GPU_CHECK_CUDA_TESTS_S:-60}" T_BENCH="${GPU_CHECK_BENCH_S:-90}"
  T_QUICK="${GPU_CHECK_BENCH_QUICK_S:-$T_BENCH}"
  T_MIN="${GPU_CHECK_MIN_S:-10}" BENCH_JOBS="${GPU_CHECK_BENCH_JOBS:-2}"
else
  PY="${PYTHON:-$(command -v python || command -v python3 || echo python)}"
  OUT="${OUT:-benchmarks/results/gpu-$STAMP}"
  DEV=cuda
  unset TRITON_INTERPRET
  T_TOTAL="${GPU_CHECK_TOTAL_S:-540}" T_INFO="${GPU_CHECK_INFO_S:-30}" T_TRITON="${GPU_CHECK_TRITON_TESTS_S:-200}"
  T_BUILD="${GPU_CHECK_BUILD_S:-150}" T_CUDA="${GPU_CHECK_CUDA_TESTS_S:-200}" T_BENCH="${GPU_CHECK_BENCH_S:-150}"
  T_QUICK="${GPU_CHECK_BENCH_QUICK_S:-210}"
  T_MIN="${GPU_CHECK_MIN_S:-10}" BENCH_JOBS="${GPU_CHECK_BENCH_JOBS:-1}"
fi
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")" || exit 2
trap 'rm -rf "$WORK"' EXIT
LOGS="$WORK/logs" BENCH="$WORK/bench"
mkdir -p "$LOGS" "$BENCH" "$WORK/status"
export PY DRY DEV WORK LOGS BENCH GPU_CHECK_TEST_WORKERS="${GPU_CHECK_TEST_WORKERS:-8}"
T0=$(date +%s)
DEADLINE=$((T0 + T_TOTAL))
NSTEP=0

# ---------------------------------------------------------------- running and recording steps

record() {  # record INDEX NAME STATUS SECONDS BUDGET NOTE
  printf '%s\t%s\t%s\t%s\t%s\n' "$2" "$3" "$4" "$5" "$6" > "$WORK/status/$(printf %02d "$1")"
  printf '== %-28s %-10s %4ss  %s\n' "$2" "$3" "$4" "$6"
}
step_status() { cat "$WORK"/status/* | awk -F '\t' -v n="$1" '$1 == n { print $2 }'; }

run_step() {  # run_step NAME BUDGET [SKIP_REASON]: run step_NAME under timeout, log, record
  local name=$1 budget=$2 skip=${3:-} idx=$((NSTEP += 1))
  if [ -n "${GPU_CHECK_ONLY:-}" ] && [ "$name" != info ] && [[ " $GPU_CHECK_ONLY " != *" $name "* ]]; then
    skip="not in GPU_CHECK_ONLY"
  fi
  local log="$LOGS/$name.log" left=$((DEADLINE - $(date +%s)))
  if [ -n "$skip" ]; then
    echo "skipped: $skip" > "$log"; record "$idx" "$name" skipped 0 "$budget" "$skip"; return
  fi
  if [ "$left" -lt "$budget" ]; then budget=$left; fi
  if [ "$budget" -lt "$T_MIN" ]; then
    echo "skipped: no time left (${left}s of GPU_CHECK_TOTAL_S=$T_TOTAL)" > "$log"
    record "$idx" "$name" skipped 0 0 "no time left (GPU_CHECK_TOTAL_S=$T_TOTAL)"; return
  fi
  local t0=$SECONDS rc status note=""
  echo "# step $name, budget ${budget}s, $(date -u +%H:%M:%S) UTC" > "$log"
  timeout --signal=INT --kill-after=15 "$budget" bash "$REPO/benchmarks/gpu_check.sh" __step "$name" >> "$log" 2>&1
  rc=$?
  local secs=$((SECONDS - t0))
  case $rc in
    0) status=ok ;;
    124|137) status=timed-out; note="after ${budget}s" ;;
    *) status=failed; note="exit $rc" ;;
  esac
  if [ "$name" = build ] && [ "$DRY" = 1 ] && [ "$rc" = 0 ]; then
    status=skipped; note="dry run: fastgen._C imports, nothing built"
  fi
  if [ "$status" != ok ] && [ "$status" != skipped ]; then
    { echo "   --- last lines of $name.log:"; tail -n 12 "$log" | tr '\r' '\n' | tail -n 12 | sed 's/^/   | /'; } >&2
  fi
  record "$idx" "$name" "$status" "$secs" "$budget" "$note"
}

parallel_step() {  # parallel_step JOBS NAME BUDGET [SKIP]: run_step with at most JOBS running
  local jobs_max=$1; shift
  if [ "$jobs_max" -le 1 ]; then run_step "$@"; return; fi
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n; done
  NSTEP=$((NSTEP + 1)); local idx=$NSTEP
  ( NSTEP=$((idx - 1)); run_step "$@" ) &
}

echo "gpu_check.sh$([ "$DRY" = 1 ] && echo " --dry-run"): OUT=$OUT, total budget ${T_TOTAL}s"
run_step info "$T_INFO"
run_step build "$T_BUILD"
parallel_step 2 test_triton "$T_TRITON"
case "$(step_status build)" in
  ok|skipped) parallel_step 2 test_cuda "$T_CUDA" ;;
  *) parallel_step 2 test_cuda "$T_CUDA" "build $(step_status build)" ;;
esac
wait  # both test runs end before the benchmarks time anything
for b in bench_quick bench_gaussian_reparam_kl bench_vq_nearest bench_vq_nearest_bf16 bench_vq \
         bench_attention_fp16 bench_attention_bf16 glow_step glow_step_32 bench_gpt_sampling; do
  parallel_step "$BENCH_JOBS" "$b" "$([ "$b" = bench_quick ] && echo "$T_QUICK" || echo "$T_BENCH")"
done
wait
echo "steps done in $(($(date +%s) - T0))s"

# ---------------------------------------------------------------- summary and packing

cat > "$WORK/summary.py" <<'EOF'
import glob, os, re, sys
work, out, dry, total = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
logs = os.path.join(work, "logs")
steps = [l.rstrip("\n").split("\t") for p in sorted(glob.glob(os.path.join(work, "status", "*")))
         for l in open(p)]

def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read().replace("\r", "\n")
    except OSError:
        return ""

def log(name):
    return read(os.path.join(logs, name + ".log"))

COUNT = r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)"

def pytest_counts(text):
    """(counts dict, how): the final pytest line, else the progress characters."""
    for line in reversed(text.splitlines()):
        if re.search(r" in [0-9.]+s", line) and (re.search(COUNT, line) or "no tests ran" in line):
            return {k.rstrip("s") if k.startswith("error") else k: int(n) for n, k in re.findall(COUNT, line)}, "final"
    counts = {}
    for line in text.splitlines():
        if re.fullmatch(r"[.sFExX]+\s*(\[\s*\d+%\])?", line.strip()):
            for ch, key in ((".", "passed"), ("s", "skipped"), ("F", "failed"), ("E", "error"),
                            ("x", "xfailed"), ("X", "xpassed")):
                counts[key] = counts.get(key, 0) + line.split("[")[0].count(ch)
    return counts, "partial: from the progress dots, pytest printed no final line"

md = []
device = (read(os.path.join(work, "device_smi.txt")).strip() or read(os.path.join(work, "device_torch.txt")).strip()
          or "unknown (see the info log)")
torch_dev = read(os.path.join(work, "device_torch.txt")).strip()
mode = " --dry-run (CPU, Triton interpreter)" if dry else ""
md.append(f"# gpu_check{mode}: {device}")
md.append("")
info = log("info")
for key in ("python", "torch", "triton", "commit"):
    m = re.search(rf"^{key} .*$", info, re.M)
    if m:
        md.append(f"- {m.group(0)}")
if torch_dev and torch_dev != device:
    md.append(f"- torch sees: {torch_dev}")
md.append(f"- total wall time: {total} s")
md.append("")
md.append("## Steps")
md.append("")
md.append("| step | status | wall s | budget s | note |")
md.append("|---|---|---:|---:|---|")
for name, status, secs, budget, note in steps:
    md.append(f"| {name} | {status} | {secs} | {budget} | {note} |")
md.append("")
md.append("## Tests")
md.append("")
what = ("triton backend", "cpu backend") if dry else ("`gpu` tests of the Triton backend",
                                                      "the other `gpu` tests: CUDA C++ backend, ...")
for name, what in zip(("test_triton", "test_cuda"), what):
    text = log(name)
    status = next((s for n, s, *_ in steps if n == name), "?")
    if status == "skipped" and text.startswith("skipped"):
        md.append(f"- {name} ({what}): {text.strip()}")
        continue
    counts, how = pytest_counts(text)
    shown = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("passed", "failed", "error", "skipped"))
    extra = ", ".join(f"{v} {k}" for k, v in counts.items() if k not in ("passed", "failed", "error", "skipped") and v)
    shown += ", " + extra if extra else ""
    shown += "" if how == "final" else " (" + how + ")"
    md.append(f"- {name} ({what}): {shown}")
    bad = [l for l in text.splitlines() if l.startswith(("FAILED ", "ERROR "))]
    for l in bad[:25]:
        md.append(f"  - `{l[:200]}`")
    if len(bad) > 25:
        md.append(f"  - ... {len(bad) - 25} more in logs/{name}.log")
md.append("")
md.append("## Headline")
md.append("")
ROW = re.compile(r"^(\S+)\s+(fwd\+bwd|fwd|bwd)\s+(\S+)\s+(\S+)\s+([0-9.]+|-)\s+([0-9.]+x|-)\s+(ok|FAILED)(.*)$")
table = []
for name, *_ in steps:
    groups = {}
    for line in log(name).splitlines():
        m = ROW.match(line.strip())
        if m:
            op, mode, shape, prov, ms, vs, st, rest = m.groups()
            groups.setdefault((op, mode, shape), []).append((prov, ms, vs, st, rest.strip()))
    for (op, mode, shape), rows in groups.items():
        by = {p: ms for p, ms, *_ in rows}
        for prov, ms, vs, st, rest in rows:
            if st == "FAILED":
                table.append(f"| {name} | {op} | {mode} | {shape} | {prov} | FAILED {rest[:80]} | | |")
            elif prov.startswith("fastgen-"):
                vc = "-"
                if by.get("compile", "-") != "-" and float(ms) > 0:
                    vc = "%.2fx" % (float(by["compile"]) / float(ms))
                table.append(f"| {name} | {op} | {mode} | {shape} | {prov} | {ms} | {vs} | {vc} |")
if table:
    md.append("| step | op | mode | shape | provider | ms | vs eager | vs compile |")
    md.append("|---|---|---|---|---|---:|---:|---:|")
    md += table
else:
    md.append("(no `fastgen bench` table in the logs)")
md.append("")
for name in ("glow_step", "glow_step_32"):
    rows = [l.rsplit(None, 4) for l in log(name).splitlines() if l.startswith("glow training step")]
    if rows:
        md.append(f"- {name}: {rows[0][0].strip()}: " + ", ".join(
            f"{r[1]} {r[3]} ms ({r[4]})" for r in rows if len(r) == 5) + " (wall ms, speedup vs eager)")
gpt = [l.strip() for l in log("bench_gpt_sampling").splitlines() if "kv_cache" in l and "->" in l]
if gpt:
    md.append(f"- bench_gpt_sampling: {gpt[-1]}")
md.append("")
print("\n".join(md))
EOF

TOTAL_S=$(($(date +%s) - T0))
if ! "$PY" "$WORK/summary.py" "$WORK" "$OUT" "$DRY" "$TOTAL_S" > "$OUT/summary.md" 2> "$WORK/summary.err"; then
  { echo "# gpu_check: summary script failed ($(tail -n 1 "$WORK/summary.err"))"; echo
    echo "| step | status | wall s | budget s | note |"; echo "|---|---|---:|---:|---|"
    cat "$WORK"/status/* | sed 's/\t/ | /g; s/^/| /; s/$/ |/'; } > "$OUT/summary.md"
fi

tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
if [ -n "$(find "$BENCH" -type f)" ]; then tar -czf "$OUT/bench.tar.gz" -C "$WORK" bench; fi
[ -s "$BENCH/bench_quick/results.csv" ] && cp "$BENCH/bench_quick/results.csv" "$OUT/bench_quick.csv"
headline=()
for f in "$BENCH"/*/results.csv; do
  [ -s "$f" ] && [ "$f" != "$BENCH/bench_quick/results.csv" ] && headline+=("$f")
done
if [ "${#headline[@]}" -gt 0 ]; then awk 'FNR == 1 && NR != 1 { next } 1' "${headline[@]}" > "$OUT/bench_headline.csv"; fi
[ -s "$BENCH/gpt_sampling/gpt_sampling.csv" ] && cp "$BENCH/gpt_sampling/gpt_sampling.csv" "$OUT/gpt_sampling.csv"

status=0
if grep -qP '\t(failed|timed-out)\t' "$WORK"/status/*; then status=1; fi
mapfile -t files < <(cd "$OUT" && find . -type f | sed 's|^\./||' | sort)
{ echo "## Files"; echo; printf -- '- %s\n' "${files[@]}"; } >> "$OUT/summary.md"
if [ "${#files[@]}" -gt 8 ]; then
  echo "WARNING: $OUT holds ${#files[@]} files; the device tool brings back 8. Would be lost:" >&2
  printf '  %s\n' "${files[@]:8}" >&2
  status=1
fi
echo
cat "$OUT/summary.md"
echo "gpu_check.sh: ${#files[@]} files in $OUT; exit $status"
exit $status
