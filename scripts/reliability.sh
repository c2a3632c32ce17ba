#!/usr/bin/env bash
# Runs every reliability benchmark (issue 6: each benchmarks/bench_<name>.py that records
# "reliability" rows in benchmarks/results/<name>.json; a results file is re-run with the
# arguments it was recorded with) and regenerates RELIABILITY.md from the results, so the table
# always says what the last runs measured.
#
#   scripts/reliability.sh                 every benchmark (the soak alone takes about 35 minutes)
#   scripts/reliability.sh --skip-long     all but the long ones (soak); their last results stay
#   scripts/reliability.sh --only chaos,security      (names of results files)
#   scripts/reliability.sh --table-only    no benchmark: only regenerate RELIABILITY.md
#   scripts/reliability.sh --dry-run       print what would run, run nothing
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
dry_run=0
only=""
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --skip-long) skip_long=1 ;;
    --table-only) table_only=1 ;;
    --only) only=",$2,"; shift ;;
    --) shift; extra=("$@"); break ;;
    --dry-run) dry_run=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "reliability.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

failed=()
if [[ $table_only -eq 0 ]]; then
  # What to run: every results file with "reliability" rows, re-run with the arguments it was
  # recorded with (its "command"), so the new figures measure the same thing; then every
  # reliability benchmark (one whose source writes "reliability" rows) without results, with its
  # defaults. One line each: name <TAB> script <TAB> shell-quoted arguments.
  plan=$("$python" -P - <<'PY'
import json, shlex
from pathlib import Path
seen = set()
for path in sorted(Path("benchmarks/results").glob("*.json")):
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        continue
    if not isinstance(data, dict) or "reliability" not in data:
        continue
    words = shlex.split(str(data.get("command") or ""))
    at = next((i for i, w in enumerate(words) if w.split("/")[-1].startswith("bench_") and w.endswith(".py")), None)
    script = f"benchmarks/{words[at].split('/')[-1]}" if at is not None else f"benchmarks/bench_{path.stem}.py"
    if not Path(script).exists():
        continue
    seen.add(script)
    print(f"{path.stem}\t{script}\t{shlex.join(words[at + 1:]) if at is not None else ''}")
for script in sorted(Path("benchmarks").glob("bench_*.py")):
    if str(script) not in seen and '"reliability"' in script.read_text():
        print(f"{script.stem.removeprefix('bench_')}\t{script}\t")
PY
)
  while IFS=$'\t' read -r name bench argstr; do
    [[ -z "$name" ]] && continue
    if [[ -n "$only" && "$only" != *",$name,"* ]]; then continue; fi
    script_name=$(basename "$bench" .py); script_name=${script_name#bench_}
    if [[ $skip_long -eq 1 && "$long" == *" $script_name "* ]]; then
      echo "== $name: skipped (long; keeping its last results)"; continue
    fi
    eval "recorded=($argstr)"
    if [[ $dry_run -eq 1 ]]; then
      echo "$name: $python -P $bench $argstr ${extra[*]}"; continue
    fi
    echo "== $name ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg)): $bench $argstr ${extra[*]}"
    if ! "$python" -P "$bench" "${recorded[@]}" "${extra[@]}" < /dev/null; then
      echo "== $name: FAILED (its previous results, if any, stay in the table)" >&2
      failed+=("$name")
    fi
  done <<< "$plan"
fi
[[ $dry_run -eq 1 ]] && exit 0

echo "== RELIABILITY.md"
"$python" -P benchmarks/reliability_report.py
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "benchmarks that failed: ${failed[*]}" >&2
  exit 1
fi
