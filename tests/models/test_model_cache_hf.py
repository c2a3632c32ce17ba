"""Pulls from the Hugging Face Hub at its boundary: the hub's own client offline and unreachable for
real, and a fake hub (``HfApi.model_info`` and ``snapshot_download`` replaced) for what only a
reachable hub can answer."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import huggingface_hub
import pytest
from huggingface_hub import errors
from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling

from livetranslate.procs import free_port
from livetranslate.workloads.modelcache.errors import DigestMismatch, SourceUnavailable
from livetranslate.workloads.modelcache.layout import model_dir
from livetranslate.workloads.modelcache.pull import PullRequest, pull
from tests.models.conftest import CliRunner, partial_dirs

REPO = "acme/tiny-mt"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
WEIGHTS = b"\x07" * 50_000
CONFIG = b'{"model_type": "tiny"}'


class FakeHub:
    """What a reachable hub would say about REPO, and what its download writes."""

    def __init__(self, lfs_sha256: str | None = None, fail: Exception | None = None) -> None:
        self.lfs_sha256 = lfs_sha256 or hashlib.sha256(WEIGHTS).hexdigest()
        self.fail = fail
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def model_info(self, repo: str, **kw: Any) -> SimpleNamespace:
        self.calls.append(("model_info", {"repo": repo, **kw}))
        if self.fail is not None:
            raise self.fail
        return SimpleNamespace(
            sha=COMMIT,
            siblings=[
                RepoSibling(rfilename="config.json", size=len(CONFIG)),
                RepoSibling(
                    rfilename="model.safetensors",
                    size=135,
                    lfs=BlobLfsInfo(size=len(WEIGHTS), sha256=self.lfs_sha256, pointer_size=135),
                ),
            ],
        )

    def snapshot_download(self, repo: str, **kw: Any) -> str:
        self.calls.append(("snapshot_download", {"repo": repo, **kw}))
        local = Path(kw["local_dir"])
        (local / ".cache" / "huggingface").mkdir(parents=True)
        (local / ".cache" / "huggingface" / "model.safetensors.metadata").write_text(COMMIT)
        (local / "config.json").write_bytes(CONFIG)
        (local / "model.safetensors").write_bytes(WEIGHTS)
        return str(local)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: hub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    return hub


def _req(cache: Path, source: str = f"hf:{REPO}", **kw: Any) -> PullRequest:
    return PullRequest(cache=cache, stage="translation", name=REPO, format="hf", source=source, **kw)


def test_a_repo_is_downloaded_at_the_commit_its_metadata_named(tmp_path: Path, fake_hub: FakeHub) -> None:
    done = pull(_req(tmp_path, token="hf_secret_token"))
    assert {f.path for f in done.manifest.files} == {"config.json", "model.safetensors"}, "no .cache"
    assert done.manifest.source == f"hf:{REPO}@{COMMIT}"
    (_, info), (_, download) = fake_hub.calls
    assert info["files_metadata"] is True and info["token"] == "hf_secret_token"
    assert download["revision"] == COMMIT and download["token"] == "hf_secret_token"


def test_a_revision_is_passed_to_the_hub(tmp_path: Path, fake_hub: FakeHub) -> None:
    pull(_req(tmp_path, f"hf:{REPO}@v2"))
    assert fake_hub.calls[0][1]["revision"] == "v2"


def test_a_file_that_differs_from_the_hubs_lfs_digest_is_refused(tmp_path: Path, fake_hub: FakeHub) -> None:
    fake_hub.lfs_sha256 = "f" * 64
    with pytest.raises(DigestMismatch) as exc:
        pull(_req(tmp_path))
    got = hashlib.sha256(WEIGHTS).hexdigest()
    assert str(exc.value) == f"hf:{REPO}: model.safetensors: sha256 {got}, the source says {'f' * 64}"
    assert not model_dir(tmp_path, "translation", REPO, "hf").exists() and partial_dirs(tmp_path) == []


def _response(status: int) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", f"https://huggingface.co/api/models/{REPO}"))


@pytest.mark.parametrize(
    ("fail", "says"),
    [
        (errors.GatedRepoError("gated", response=_response(403)), "the repo is gated"),
        (
            errors.RepositoryNotFoundError("nope", response=_response(401)),
            "repository not found or no access (HTTP 401/403/404)",
        ),
        (errors.HfHubHTTPError("forbidden", response=_response(403)), "no access (HTTP 403)"),
    ],
    ids=["gated", "not-found", "forbidden"],
)
def test_no_access_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: Exception, says: str
) -> None:
    hub = FakeHub(fail=fail)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: hub)
    with pytest.raises(SourceUnavailable, match=f"^hf:{re.escape(REPO)}: .*{re.escape(says)}"):
        pull(_req(tmp_path))


def test_the_token_file_is_read_and_passed_on(tmp_path: Path, fake_hub: FakeHub, cli: CliRunner) -> None:
    token = tmp_path / "token"
    token.write_text("hf_from_a_secret\n")
    args = ("--cache", tmp_path / "models", "--stage", "translation", "--name", REPO)
    done = cli("pull", *args, "--token-file", token)
    assert done.code == 0, done.err
    assert done.line["format"] == "hf" and fake_hub.calls[0][1]["token"] == "hf_from_a_secret"
    assert "hf_from_a_secret" not in done.err
    missing = cli("pull", *args, "--token-file", tmp_path / "nope")
    assert missing.code == 1 and "cannot read the token file" in missing.error


@pytest.mark.parametrize("hub", ["offline", "unreachable"])
def test_the_real_hub_client_offline_or_unreachable_gives_one_clear_line(tmp_path: Path, hub: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    if hub == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cmd = [sys.executable, "-P", "-m", "livetranslate.cli", "model-cache", "pull", "--cache", str(tmp_path)]
    cmd += [
        "--stage",
        "translation",
        "--name",
        "Qwen/Qwen2.5-7B-Instruct",
        "--termination-log",
        str(tmp_path / "t"),
    ]
    done = subprocess.run(
        cmd, env={**env, "LT_LOG_FORMAT": "text"}, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("livetranslate model-cache: hf:Qwen/Qwen2.5-7B-Instruct: the Hugging Face hub is ")
    assert (
        "offline (HF_HUB_OFFLINE is set)" if hub == "offline" else "unreachable at http://127.0.0.1:"
    ) in line
    assert '"reason":"SourceUnavailable"' in (tmp_path / "t").read_text()
    assert partial_dirs(tmp_path) == [], "the hub client's own files stayed in the removed scratch area"
