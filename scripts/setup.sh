#!/usr/bin/env bash
# Set up fastgen from a bare machine: a virtual environment in .venv with torch and the test
# tools, and fastgen installed editable with its native extension built.
#   CPU kernels always; CUDA kernels too when nvcc is found (compiled and linked even with no
#   GPU, so CI catches CUDA build errors). FASTGEN_FORCE_CUDA=0 (or FASTGEN_SKIP_CUDA_BUILD=1)
#   builds the CPU kernels only: ~4 minutes instead of ~15 on 2 cores.
# A second run does nothing it need not: packages are installed only when the requirement list
# changed (stamp .venv/.fastgen-deps), the editable install only when setup.py / pyproject.toml
# changed (stamp .venv/.fastgen-editable), and the native extension only when csrc/, setup.py,
# the build switches or torch changed (scripts/build_ext.py: stamp in build/, and ninja
# recompiles only the changed files in the persistent build/ folder).
# Usage: source scripts/setup.sh   (or bash scripts/setup.sh; then `source .venv/bin/activate`)
set -euo pipefail
FASTGEN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"  # physical: symlinked views build the real tree
cd "$FASTGEN_ROOT"

PYTHON_BIN="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $PYTHON_BIN"
  "$PYTHON_BIN" -m venv .venv
fi
# torch 2.14.1 is the CUDA 13.0 build (it also runs on CPU-only machines).
FASTGEN_REQS="torch==${FASTGEN_TORCH_VERSION:-2.14.1} numpy tqdm matplotlib pytest pytest-xdist hypothesis ninja setuptools>=64 wheel faiss-cpu diffusers==0.42.1 vector-quantize-pytorch==1.32.0"
if [ "$(cat .venv/.fastgen-deps 2>/dev/null || true)" != "$FASTGEN_REQS" ]; then
  echo "== installing torch and tools"
  # shellcheck disable=SC2086  # one word per requirement
  .venv/bin/python -m pip install -q --disable-pip-version-check $FASTGEN_REQS
  echo "$FASTGEN_REQS" > .venv/.fastgen-deps
else
  echo "== packages already installed (.venv/.fastgen-deps matches)"
fi

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

if [ "${FASTGEN_FORCE_CUDA:-1}" != "0" ] && [ "${FASTGEN_SKIP_CUDA_BUILD:-0}" != "1" ] \
   && CUDA_HOME_FOUND=$(find_cuda_home); then
  export CUDA_HOME="$CUDA_HOME_FOUND" FASTGEN_FORCE_CUDA=1
  # SASS for A100 / H100 and PTX that newer GPUs (B200, RTX 50xx) JIT-compile at first use
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0+PTX}"
  echo "== building fastgen (CPU + CUDA for $TORCH_CUDA_ARCH_LIST, CUDA_HOME=$CUDA_HOME)"
else
  export FASTGEN_FORCE_CUDA=0
  echo "== building fastgen (CPU kernels; no CUDA toolkit found, or FASTGEN_FORCE_CUDA=0 / FASTGEN_SKIP_CUDA_BUILD=1)"
fi
export MAX_JOBS="${MAX_JOBS:-2}"
# fastgen._C_emu: the CUDA kernels compiled against the CPU execution model (csrc/emu/, backend
# "cuda_emu"), so the tests run every CUDA kernel without a GPU; FASTGEN_CUDA_EMU=0 skips it
# (about 1.5 minutes on 2 cores). A build switch: in build_ext.py's stamp.
export FASTGEN_CUDA_EMU="${FASTGEN_CUDA_EMU:-1}"
# the package itself, editable (its Python files are used in place); the extension is built below
EDITABLE_KEY="$(cat setup.py pyproject.toml | sha256sum | cut -d' ' -f1) $(.venv/bin/python -c 'import sys; print(sys.version_info[:3])')"
if [ "$(cat .venv/.fastgen-editable 2>/dev/null || true)" != "$EDITABLE_KEY" ] \
   || ! .venv/bin/python -c "import importlib.util as u, sys; s = u.find_spec('fastgen'); sys.exit(s is None or not s.origin.startswith('$FASTGEN_ROOT/'))" 2>/dev/null; then
  echo "== installing fastgen (editable)"
  FASTGEN_SKIP_EXT=1 .venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
  echo "$EDITABLE_KEY" > .venv/.fastgen-editable
fi
.venv/bin/python scripts/build_ext.py
export PATH="$FASTGEN_ROOT/.venv/bin:$PATH"
if [ "${FASTGEN_SETUP_QUIET:-0}" != "1" ] && [ "${VIRTUAL_ENV:-}" != "$FASTGEN_ROOT/.venv" ]; then
  echo "== fastgen is ready. To use it (the fastgen command, python) in your shell:"
  echo "     source $FASTGEN_ROOT/.venv/bin/activate"
fi
