#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the quick benchmark of every op, printing the table.
# Extra arguments go to `fastgen bench`, e.g. `bash scripts/bench.sh --op gaussian_reparam_kl`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$FASTGEN_ROOT"
exec .venv/bin/fastgen bench --quick "$@"
