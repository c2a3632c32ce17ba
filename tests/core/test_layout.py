"""The import namespace maps the design's folders without shadowing the standard library."""

from __future__ import annotations

import importlib
import operator
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stdlib_operator_is_not_shadowed() -> None:
    assert hasattr(operator, "itemgetter")
    assert not str(Path(operator.__file__ or "")).startswith(str(ROOT / "operator"))


def test_namespace_maps_design_folders() -> None:
    for name, folder in [
        ("livetranslate.operator", "operator"),
        ("livetranslate.workloads.audio", "workloads/audio"),
        ("livetranslate.workloads.translate", "workloads/translate"),
        ("livetranslate.workloads.gateway", "workloads/gateway"),
    ]:
        mod = importlib.import_module(name)
        assert Path(mod.__file__ or "").resolve().parent == (ROOT / folder).resolve()


def test_cli_lists_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-P", "-m", "livetranslate.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    for cmd in ("up", "stream", "operator", "crd"):
        assert f"  {cmd}" in out
