#!/usr/bin/env bash
# The fast lint lane: ruff check and ruff format --check alone, in a small virtualenv of its own
# (.venv-lint, seconds to make), before scripts/bootstrap.sh spends minutes installing the stack.
# A lint or format error fails CI at once.
# The ruff version is the lockfile's, so this lane and the full one agree.
set -euo pipefail
export PYTHONSAFEPATH=1  # the operator/ folder must not shadow the standard library
cd "$(dirname "$0")/.."
lint_venv=${LT_LINT_VENV:-$(pwd)/.venv-lint}
ruff_pin=$(grep -E '^ruff==' requirements.lock)
if [ "$("$lint_venv/bin/ruff" --version 2>/dev/null | awk '{print "ruff==" $2}')" != "$ruff_pin" ]; then
  python3 -m venv "$lint_venv"
  "$lint_venv/bin/python" -m pip install -q --disable-pip-version-check "$ruff_pin" 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
fi
"$lint_venv/bin/ruff" check livetranslate operator workloads testing tests benchmarks scripts
"$lint_venv/bin/ruff" format --check livetranslate operator workloads testing tests benchmarks scripts
