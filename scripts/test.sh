#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite. Without a GPU, Triton kernels run under the
# interpreter and the C++/CPU kernels natively; the CUDA kernels are compiled and linked.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k vae -x`. The tests run in
# FASTGEN_TEST_WORKERS pytest-xdist processes (default 2: most of the suite is single-threaded
# Triton-interpreter work; 1 runs them in this process).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$FASTGEN_ROOT"
export TRITON_INTERPRET="${TRITON_INTERPRET:-$(.venv/bin/python -c 'import torch; print(0 if torch.cuda.is_available() else 1)')}"
# A backend that should be live but is not fails the run instead of skipping.
# (cuda_emu: the CUDA kernels on the CPU execution model, built by setup.sh unless FASTGEN_CUDA_EMU=0)
export FASTGEN_TEST_REQUIRE="${FASTGEN_TEST_REQUIRE:-cpu,triton$([ "${FASTGEN_CUDA_EMU:-0}" = 1 ] && echo ,cuda_emu)}"
export FASTGEN_TEST_REQUIRE_CUDA_BUILD="${FASTGEN_TEST_REQUIRE_CUDA_BUILD:-$FASTGEN_FORCE_CUDA}"
WORKERS="${FASTGEN_TEST_WORKERS:-2}"
if [ "$WORKERS" -gt 1 ]; then set -- -n "$WORKERS" "$@"; fi
# --durations: the slowest tests in the log, where CI time is lost first
exec .venv/bin/python -m pytest -q --durations=25 "$@"
