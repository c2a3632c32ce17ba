#!/usr/bin/env bash
# Lints first (scripts/lint_fast.sh: ruff alone, seconds), sets up a bare machine
# (scripts/bootstrap.sh) and runs every other check CI runs: types, the import contracts, the
# generated-files check, then the whole pytest suite (unit, integration with real processes, and
# the e2e tier, which skips with a reason where no Kubernetes cluster can be had). Bootstrap has
# installed every tool the other tiers need, so any other skip fails the run (tests/conftest.py).
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -k crd).
set -euo pipefail
export PYTHONSAFEPATH=1
cd "$(dirname "$0")/.."
echo "== ruff (the fast lane: before the install)"
bash scripts/lint_fast.sh
bash scripts/bootstrap.sh
venv=${LT_VENV:-$(pwd)/.venv}
export PATH="$venv/bin:$PATH"

bash scripts/check_layers.sh  # mypy and the import contracts, on the package as installed
echo "== generated files are current"
python scripts/check_generated.py
echo "== pytest"
export LT_TESTS_REQUIRE_ALL=${LT_TESTS_REQUIRE_ALL:-1}
set +e
pytest -p no:cacheprovider "$@"
rc=$?
set -e
# 5 = no tests collected: that must fail loudly, never pass quietly.
exit $rc
