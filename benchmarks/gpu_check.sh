#!/usr/bin/env bash
# Run on a GPU machine (the device tool; DESIGN.md §5): build fastgen into the existing torch
# environment, run the whole test suite (the `gpu` tests included), then the benchmarks.
# Logs and results go to $OUT (default benchmarks/results/gpu-<date>); commit them under
# benchmarks/results/ with the device name. Keeps going after a failing step; exits non-zero
# if any step failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python}"
OUT="${OUT:-benchmarks/results/gpu-$(date +%Y%m%d-%H%M)}"
mkdir -p "$OUT"
status=0
step() {  # step NAME CMD... : run CMD, log to $OUT/NAME.log, remember failures
  local name=$1; shift
  echo "== $name: $*"
  if "$@" > "$OUT/$name.log" 2>&1; then echo "   ok"; else echo "   FAILED (see $OUT/$name.log)"; tail -n 30 "$OUT/$name.log"; status=1; fi
}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
step build "$PY" -m pip install -v --no-build-isolation --no-deps -e .
step info "$PY" -m fastgen info
cat "$OUT/info.log"
step pytest "$PY" -m pytest -q -rs tests
tail -n 5 "$OUT/pytest.log"
step bench_quick "$PY" -m fastgen bench --quick --device cuda --out "$OUT/bench"
step bench_gaussian_reparam_kl "$PY" benchmarks/bench_gaussian_reparam_kl.py --device cuda --out "$OUT/bench"
step bench_vq_nearest "$PY" benchmarks/bench_vq_nearest.py --device cuda --out "$OUT/bench"
step bench_vq_nearest_bf16 "$PY" benchmarks/bench_vq_nearest.py --device cuda --dtype bf16 --out "$OUT/bench"
step bench_vq "$PY" -m fastgen bench --op vq_quantize,vq_ema_update --device cuda --out "$OUT/bench_vq"
step bench_attention_fp16 "$PY" -m fastgen bench --op flash_attention,decode_attention --device cuda --dtype fp16 --out "$OUT/bench_attn_fp16"
step bench_attention_bf16 "$PY" -m fastgen bench --op flash_attention --device cuda --dtype bf16 --mode fwd+bwd --out "$OUT/bench_attn_bf16"
step glow_step "$PY" benchmarks/flows_cpu_time.py --device cuda --repeats 9
step glow_step_32 "$PY" benchmarks/flows_cpu_time.py --device cuda --repeats 9 --size 32
step bench_gpt_sampling "$PY" benchmarks/bench_gpt_sampling.py --device cuda --out "$OUT/gpt_sampling.csv"
cat "$OUT"/bench_*.log | grep -v "^\s*$" | tail -n 60
exit $status
