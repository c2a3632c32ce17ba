"""Fails when a committed generated file differs from what its generator produces now.

Each entry maps a committed path to a command whose stdout must equal it byte for byte.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GENERATED: dict[str, list[str]] = {
    "crds/translationpipelines.livetranslate.io.yaml": [
        sys.executable,
        "-P",
        "-m",
        "livetranslate.cli",
        "crd",
    ],
    "charts/livetranslate/crds/translationpipelines.livetranslate.io.yaml": [
        sys.executable,
        "-P",
        "-m",
        "livetranslate.cli",
        "crd",
    ],
    # The reliability table, from the committed benchmarks/results/*.json (scripts/reliability.sh).
    "RELIABILITY.md": [sys.executable, "-P", "benchmarks/reliability_report.py", "--stdout"],
}


def _shown(cmd: list[str]) -> str:
    """The command as a user types it."""
    if cmd[2:4] == ["-m", "livetranslate.cli"]:
        return "livetranslate " + " ".join(cmd[4:])
    return "python " + " ".join(cmd[1:])


def main() -> int:
    stale = []
    for rel, cmd in GENERATED.items():
        path = ROOT / rel
        if not path.exists():
            stale.append(f"{rel}: missing (generate it with: {_shown(cmd)})")
            continue
        now = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
        if now != path.read_text():
            stale.append(f"{rel}: differs from `{_shown(cmd)}`; regenerate and commit")
    for line in stale:
        print(f"stale generated file: {line}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
