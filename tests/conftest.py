"""Suite-wide fixtures. Area fixtures live in each area's own conftest.py."""

from __future__ import annotations

import os

# Both kubernetes clients read $KUBECONFIG at import time: never let a developer's real cluster
# config leak into the emulator-backed tests. The e2e tier sets its own.
os.environ.setdefault("KUBECONFIG", os.devnull)
os.environ.setdefault("LT_LOG_FORMAT", "text")
