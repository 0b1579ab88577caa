#!/usr/bin/env bash
# Set up fastgen from a bare machine: a virtual environment in .venv with torch and the test
# tools, and fastgen installed editable with its native extension built.
#   CPU kernels always; CUDA kernels too when nvcc is found (compiled and linked even with no
#   GPU, so CI catches CUDA build errors). FASTGEN_FORCE_CUDA=0 skips them.
# Usage: source scripts/setup.sh   (or bash scripts/setup.sh)
set -euo pipefail
FASTGEN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$FASTGEN_ROOT"

PYTHON_BIN="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $PYTHON_BIN"
  "$PYTHON_BIN" -m venv .venv
fi
echo "== installing torch and tools"
# torch 2.14.1 is the CUDA 13.0 build (it also runs on CPU-only machines).
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==${FASTGEN_TORCH_VERSION:-2.14.1}" \
  numpy tqdm matplotlib pytest pytest-xdist ninja "setuptools>=64" wheel faiss-cpu "diffusers==0.42.1"

# The CUDA toolkit's own folder: the one whose lib64 holds libcudart. The nvcc on PATH may be a
# wrapper script elsewhere, and torch's guess from it fails at link time.
find_cuda_home() {
  local c
  for c in "${CUDA_HOME:-}" "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc 2>/dev/null || echo /nonexistent)")")")" \
           /usr/local/cuda /usr/local/cuda-*; do
    if [ -n "$c" ] && compgen -G "$c/lib64/libcudart.so*" > /dev/null; then
      readlink -f "$c"; return 0
    fi
  done
  # nvcc may be a script that execs the real one: read its target out of it
  c=$(grep -o '/[^ "]*/bin/nvcc' "$(command -v nvcc 2>/dev/null || echo /dev/null)" 2>/dev/null | head -n 1 || true)
  if [ -n "$c" ] && compgen -G "$(dirname "$(dirname "$c")")/lib64/libcudart.so*" > /dev/null; then
    readlink -f "$(dirname "$(dirname "$c")")"; return 0
  fi
  return 1
}

if [ "${FASTGEN_FORCE_CUDA:-1}" != "0" ] && CUDA_HOME_FOUND=$(find_cuda_home); then
  export CUDA_HOME="$CUDA_HOME_FOUND" FASTGEN_FORCE_CUDA=1
  # SASS for A100 / H100 and PTX that newer GPUs (B200, RTX 50xx) JIT-compile at first use
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0+PTX}"
  echo "== building fastgen (CPU + CUDA for $TORCH_CUDA_ARCH_LIST, CUDA_HOME=$CUDA_HOME)"
else
  export FASTGEN_FORCE_CUDA=0
  echo "== building fastgen (CPU kernels; no CUDA toolkit found or FASTGEN_FORCE_CUDA=0)"
fi
export MAX_JOBS="${MAX_JOBS:-2}"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
.venv/bin/python -c "import fastgen; fastgen.info()"
export PATH="$FASTGEN_ROOT/.venv/bin:$PATH"
