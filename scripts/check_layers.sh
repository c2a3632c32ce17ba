#!/usr/bin/env bash
# Types (mypy) and the import contracts (import-linter, pyproject [tool.importlinter]) over the
# package laid out the way the wheel installs it. livetranslate.operator and
# livetranslate.workloads live in folders outside livetranslate/ (the package-dir mapping), which
# neither tool follows in an editable install: run on the folders, mypy saw every cross-module
# type as Any (15 errors hid behind it). The layout is made in a temporary folder removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${LT_VENV:-$(pwd)/.venv}
here=$(pwd)
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
cp -r livetranslate "$tree/livetranslate"
cp -r operator "$tree/livetranslate/operator"
cp -r workloads "$tree/livetranslate/workloads"
cp -r testing/livetranslate_testing "$tree/livetranslate_testing"
cp -r benchmarks "$tree/benchmarks"
find "$tree" -name __pycache__ -prune -exec rm -rf {} +
cd "$tree"
echo "== mypy"
mypy=("$venv/bin/mypy" --config-file "$here/pyproject.toml" --cache-dir "$here/.mypy_cache/layout")
PYTHONPATH="$tree" "${mypy[@]}" -p livetranslate -p livetranslate_testing
PYTHONPATH="$tree" "${mypy[@]}" benchmarks
echo "== import contracts"
PYTHONPATH="$tree" "$venv/bin/lint-imports" "$here/pyproject.toml"
