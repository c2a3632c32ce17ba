#!/usr/bin/env bash
# The import contracts of pyproject.toml ([tool.importlinter]), checked by import-linter.
# livetranslate.operator and livetranslate.workloads live in folders outside livetranslate/ (the
# package-dir mapping), which import-linter cannot follow in an editable install: the package is
# laid out here the way the wheel installs it, in a temporary folder removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${LT_VENV:-$(pwd)/.venv}
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
cp -r livetranslate "$tree/livetranslate"
cp -r operator "$tree/livetranslate/operator"
cp -r workloads "$tree/livetranslate/workloads"
cp -r testing/livetranslate_testing "$tree/livetranslate_testing"
here=$(pwd)
cd "$tree"
PYTHONPATH="$tree" "$venv/bin/lint-imports" "$here/pyproject.toml" "$@"
