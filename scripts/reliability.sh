#!/usr/bin/env bash
# Runs every reliability benchmark (issue 6: each benchmarks/bench_<name>.py that records
# "reliability" rows in benchmarks/results/<name>.json) and regenerates RELIABILITY.md from the
# results, so the table always says what the last runs measured.
#
#   scripts/reliability.sh                 every benchmark (the soak alone takes about 35 minutes)
#   scripts/reliability.sh --skip-long     all but the long ones (soak); their last results stay
#   scripts/reliability.sh --only chaos,security
#   scripts/reliability.sh --table-only    no benchmark: only regenerate RELIABILITY.md
#
# Extra arguments after -- go to every benchmark run.
set -euo pipefail
export PYTHONSAFEPATH=1
cd "$(dirname "$0")/.."
venv=${LT_VENV:-$(pwd)/.venv}
python="$venv/bin/python"

long=" soak "
skip_long=0
table_only=0
only=""
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --skip-long) skip_long=1 ;;
    --table-only) table_only=1 ;;
    --only) only=",$2,"; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "reliability.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

failed=()
if [[ $table_only -eq 0 ]]; then
  # A reliability benchmark is one that writes "reliability" rows (the shared results convention).
  for bench in $(grep -l '"reliability"' benchmarks/bench_*.py | sort); do
    name=$(basename "$bench" .py); name=${name#bench_}
    if [[ -n "$only" && "$only" != *",$name,"* ]]; then continue; fi
    if [[ $skip_long -eq 1 && "$long" == *" $name "* ]]; then
      echo "== $name: skipped (long; keeping benchmarks/results/$name.json)"; continue
    fi
    echo "== $name ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))"
    if ! "$python" -P "$bench" "${extra[@]}"; then
      echo "== $name: FAILED (its previous results, if any, stay in the table)" >&2
      failed+=("$name")
    fi
  done
fi

echo "== RELIABILITY.md"
"$python" -P benchmarks/reliability_report.py
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "benchmarks that failed: ${failed[*]}" >&2
  exit 1
fi
