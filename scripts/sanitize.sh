#!/usr/bin/env bash
# ASan + UBSan build of fastgen's CPU extension, and the cpu-backend tests run against it.
#
#   bash scripts/sanitize.sh [extra pytest arguments]
#
# The build goes to a copy of the source tree ($FASTGEN_SANITIZE_DIR, default
# /tmp/fastgen-sanitize): the normal build/ folder and fastgen/_C*.so are never touched. The tests
# run from that copy with libasan / libubsan preloaded (the Python interpreter is not built with
# them). Slow (the sanitized build takes minutes; the tests run several times slower): CI does not
# run it. Selected by default: the cpu-backend cases (-k "cpu-cpu"), the bad-input contract and the
# native device checks; extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
DEST="${FASTGEN_SANITIZE_DIR:-/tmp/fastgen-sanitize}"
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"

echo "== copying the source tree to $DEST"
mkdir -p "$DEST"
rm -rf "$DEST/csrc" "$DEST/fastgen" "$DEST/kernels" "$DEST/tests"
# tar keeps the files' times: a rerun recompiles only what changed (build-temp stays)
tar -C "$ROOT" --exclude '__pycache__' --exclude '*.so' -cf - csrc fastgen kernels tests | tar -C "$DEST" -xf -
cp "$ROOT/setup.py" "$DEST/"
[ -e "$DEST/pyproject.toml" ] || cp "$ROOT/pyproject.toml" "$DEST/" 2>/dev/null || true
ln -sfn ../kernels "$DEST/fastgen/kernels"   # what setup.py's package_dir maps, for a run from the tree

echo "== building the sanitized CPU extension in $DEST (log: $DEST/build.log)"
( cd "$DEST" && CFLAGS="-O1 -g $SAN" LDFLAGS="$SAN" FASTGEN_SKIP_CUDA_BUILD=1 FASTGEN_CUDA_EMU=0 \
    flock /tmp/fastgen_build.lock "$PY" setup.py -q build_ext --inplace --build-temp "$DEST/build-temp" \
    > "$DEST/build.log" 2>&1 ) || { tail -30 "$DEST/build.log"; exit 1; }

PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export LD_PRELOAD="$PRELOAD"
# leaks: CPython and torch keep allocations alive on purpose; the interest is memory errors and UB
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allow_user_segv_handler=1:detect_odr_violation=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONPATH="$DEST" TRITON_INTERPRET=1 FASTGEN_TEST_REQUIRE=cpu
cd "$DEST"
"$PY" - <<'PY'
import fastgen, fastgen._ext as e, os
assert e.NATIVE is not None, e.NATIVE_ERROR
print("== fastgen from", os.path.dirname(fastgen.__file__), "; extension", e.NATIVE.__file__)
assert e.NATIVE.__file__.startswith(os.environ["PYTHONPATH"]), "not the sanitized build"
PY
if [ $# -eq 0 ]; then
  set -- tests/test_op_contract.py tests/test_ops_*.py -k "cpu-cpu or native"
fi
echo "== pytest $* (ASan + UBSan)"
"$PY" -m pytest -q -p no:cacheprovider -x "$@"
