"""Suite-wide fixtures. Area fixtures live in each area's own conftest.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Both kubernetes clients read $KUBECONFIG at import time: never let a developer's real cluster
# config leak into the emulator-backed tests. The e2e tier sets its own.
os.environ.setdefault("KUBECONFIG", os.devnull)
os.environ.setdefault("LT_LOG_FORMAT", "text")


# ------------------------------------------------------------------ no silent skips in a full run
# Skips name a missing tool (Debian's prometheus, chromium, a built llama-server, an extra). The
# test command installs every one of them, so there a skip means a broken install, and a green run
# that skipped half a tier would hide it: scripts/test.sh sets LT_TESTS_REQUIRE_ALL=1 and any
# skip outside tests/e2e (which needs a kind cluster no machine of ours has) fails instead.
E2E = os.path.join("tests", "e2e") + os.sep


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if (
        report.skipped
        and os.environ.get("LT_TESTS_REQUIRE_ALL") == "1"
        and not hasattr(report, "wasxfail")
        and E2E not in str(item.path)
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in a full run (LT_TESTS_REQUIRE_ALL=1): {reason}"
