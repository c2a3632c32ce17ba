#!/usr/bin/env bash
# Sets up a bare machine (scripts/bootstrap.sh) and runs every check CI runs: lint, types, the
# generated-files check, then the whole pytest suite (unit, integration with real processes, and
# the e2e tier, which skips with a reason where no Kubernetes cluster can be had). Bootstrap has
# installed every tool the other tiers need, so any other skip fails the run (tests/conftest.py).
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -k crd).
set -euo pipefail
export PYTHONSAFEPATH=1
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
venv=${LT_VENV:-$(pwd)/.venv}
export PATH="$venv/bin:$PATH"

echo "== ruff"
ruff check livetranslate operator workloads tests benchmarks
echo "== mypy"
mypy livetranslate operator workloads benchmarks
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
