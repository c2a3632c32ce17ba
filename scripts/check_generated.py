"""Fails when a committed generated file differs from what its generator produces now.

Each entry maps a committed path to a command whose stdout must equal it byte for byte.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GENERATED: dict[str, list[str]] = {
    "crds/translationpipelines.livetranslate.io.yaml": [sys.executable, "-P", "-m", "livetranslate.cli", "crd"],
    "charts/livetranslate/crds/translationpipelines.livetranslate.io.yaml": [
        sys.executable, "-P", "-m", "livetranslate.cli", "crd"],
}


def main() -> int:
    stale = []
    for rel, cmd in GENERATED.items():
        path = ROOT / rel
        if not path.exists():
            stale.append(f"{rel}: missing (generate it with: {' '.join(cmd[3:])})")
            continue
        now = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
        if now != path.read_text():
            stale.append(f"{rel}: differs from `livetranslate {' '.join(cmd[5:])}`; regenerate and commit")
    for line in stale:
        print(f"stale generated file: {line}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
