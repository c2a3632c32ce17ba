#!/usr/bin/env bash
# Sets up a bare machine and runs the embedded default pipeline on this machine's CPU.
# Arguments go to `livetranslate up` (e.g. scripts/up.sh -f examples/town-hall.yaml).
set -euo pipefail
export PYTHONSAFEPATH=1
cd "$(dirname "$0")/.."
LT_EXTRAS=${LT_EXTRAS:-local,operator} bash scripts/bootstrap.sh
exec "${LT_VENV:-$(pwd)/.venv}/bin/livetranslate" up "$@"
