"""The NPU path on OpenVINO's CPU device: convert the packaged CTranslate2 weights to an IR, then
check the OpenVINO engine hears the same words as faster-whisper.

The converted IR is cached (keyed by the source model.bin) under the user cache directory, so
only the first run on a machine pays for the export (about two minutes on 2 cores).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from livetranslate.workloads.audio.engines import is_openvino_dir, load_engine, packaged_model_dir
from livetranslate.workloads.audio.settings import AudioSettings
from livetranslate_testing import speech

pytestmark = pytest.mark.slow


def _cache_dir() -> Path:
    src = packaged_model_dir() / "model.bin"
    stat = src.stat()
    key = hashlib.sha1(f"{src}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "livetranslate" / "test-openvino" / key


@pytest.fixture(scope="module")
def openvino_ir() -> Path:
    pytest.importorskip("optimum.intel", reason="the convert extra (optimum-intel) is not installed")
    out = _cache_dir() / "ir"
    if not is_openvino_dir(out):
        from livetranslate.workloads.audio.convert import main

        shutil.rmtree(out, ignore_errors=True)
        assert main(["--output", str(out)]) == 0
    return out


def test_converted_model_transcribes_like_faster_whisper(openvino_ir: Path) -> None:
    ov = load_engine(AudioSettings(model=str(openvino_ir), workers=1))  # engine auto-detected from the IR
    fw = load_engine(AudioSettings(workers=1))
    assert ov.name == "openvino" and fw.name == "faster-whisper"
    for text, voice in zip(speech.SENTENCES[:3], ("en-us", "en-gb", "en-us+f4"), strict=True):
        audio = speech.speak(text, voice)
        h_ov, h_fw = ov.transcribe(audio), fw.transcribe(audio)
        assert speech.word_error_rate(h_fw.text, h_ov.text) <= 0.2, (h_fw.text, h_ov.text)
        assert speech.word_error_rate(text, h_ov.text) <= 0.3, h_ov.text
        # word timings come back too: the streaming policy commits and trims by them
        assert h_ov.words and h_ov.words[-1].end <= len(audio) / speech.SAMPLE_RATE + 0.5
        assert all(a.start <= b.start for a, b in zip(h_ov.words, h_ov.words[1:], strict=False))


def test_converter_refuses_a_directory_that_is_not_whisper(tmp_path: Path) -> None:
    from livetranslate.workloads.audio.convert import read_ct2_model

    bogus = tmp_path / "model.bin"
    bogus.write_bytes(b"\x02\x00\x00\x00")
    with pytest.raises(ValueError, match="too old"):
        read_ct2_model(bogus)
