"""Pulls over HTTP from a real server on loopback: one file, a tar.gz of a folder, a 404, and a Job
killed in the middle of a download."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from livetranslate.workloads.modelcache.errors import SourceUnavailable
from livetranslate.workloads.modelcache.layout import check_model, model_dir, model_key
from livetranslate.workloads.modelcache.pull import PullRequest, pull
from tests.models.conftest import CliRunner, Served, make_model, partial_dirs


def _req(cache: Path, name: str, source: str, **kw: object) -> PullRequest:
    return PullRequest(cache=cache, stage="audio", name=name, format="ct2", source=source, **kw)  # type: ignore[arg-type]


def test_a_single_file_uri_is_the_model_and_its_digest_is_checked(tmp_path: Path, http_files: Served) -> None:
    weights = os.urandom(300_000)
    (http_files.root / "weights.bin").write_bytes(weights)
    url = f"{http_files.url}/weights.bin"
    digest = hashlib.sha256(weights).hexdigest()
    done = pull(_req(tmp_path / "models", url, url, sha256=digest))
    assert (done.path / "weights.bin").read_bytes() == weights
    assert done.manifest.sha256 == digest and done.manifest.source == url
    assert [(f.path, f.bytes) for f in done.manifest.files] == [("weights.bin", 300_000)]


def test_a_tar_gz_of_a_model_folder_is_unpacked(tmp_path: Path, http_files: Served) -> None:
    src = make_model(tmp_path / "whisper-small")
    with tarfile.open(http_files.root / "whisper-small.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="whisper-small")
    url = f"{http_files.url}/whisper-small.tar.gz"
    done = pull(_req(tmp_path / "models", "small", url))
    assert {f.path for f in done.manifest.files} == {"model.bin", "config.json", "extra/vocabulary.txt"}
    assert (done.path / "model.bin").read_bytes() == (src / "model.bin").read_bytes()
    assert partial_dirs(tmp_path / "models") == []


def test_an_http_error_names_the_uri_and_the_status(
    tmp_path: Path, http_files: Served, cli: CliRunner
) -> None:
    url = f"{http_files.url}/missing.tar.gz"
    with pytest.raises(SourceUnavailable) as exc:
        pull(_req(tmp_path / "models", "w", url))
    assert str(exc.value) == f"{url}: HTTP 404 File not found"
    done = cli("pull", "--cache", tmp_path / "models", "--stage", "audio", "--name", "w", "--source", url)
    assert done.code == 1 and done.error == f"livetranslate model-cache: {url}: HTTP 404 File not found"
    assert not model_dir(tmp_path / "models", "audio", "w", "ct2").exists()


def test_a_corrupt_archive_is_refused(tmp_path: Path, http_files: Served) -> None:
    (http_files.root / "broken.tar.gz").write_bytes(b"\x1f\x8b" + os.urandom(1000))
    with pytest.raises(SourceUnavailable, match=r"broken.tar.gz: not a readable tar archive"):
        pull(_req(tmp_path / "models", "w", f"{http_files.url}/broken.tar.gz"))
    assert partial_dirs(tmp_path / "models") == []


def test_a_job_killed_mid_download_leaves_debris_the_next_pull_clears(
    tmp_path: Path, http_files: Served
) -> None:
    cache = tmp_path / "models"
    name = "stalled"
    (http_files.root / "stall").mkdir()
    cmd = [sys.executable, "-P", "-m", "livetranslate.cli", "model-cache", "pull", "--cache", str(cache)]
    cmd += ["--stage", "audio", "--name", name, "--source", f"{http_files.url}/stall/model.bin"]
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        partial = cache / ".partial"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            halves = list(partial.glob(f"{model_key('audio', name, 'ct2')}-*/fetch/model.bin"))
            if halves and halves[0].stat().st_size >= 1 << 20:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the download never started")
    finally:
        job.send_signal(signal.SIGKILL)  # as the kubelet does when a Job's pod is evicted
        job.wait(10)
    assert len(partial_dirs(cache)) == 1
    assert not model_dir(cache, "audio", name, "ct2").exists(), "a half model is never at its path"
    # the retried Job finds the file whole this time
    (http_files.root / "whole").mkdir()
    (http_files.root / "whole" / "model.bin").write_bytes(b"y" * 2_000_000)
    done = pull(_req(cache, name, f"{http_files.url}/whole/model.bin"))
    assert check_model(done.path, full=True).bytes == 2_000_000
    assert partial_dirs(cache) == []
