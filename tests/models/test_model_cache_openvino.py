"""openvino-ir for the NPU: ct2 weights pulled, then converted in the pull's scratch area."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from livetranslate.workloads.audio import convert as converter
from livetranslate.workloads.audio import packaged
from livetranslate.workloads.audio.engines import load_engine
from livetranslate.workloads.audio.settings import AudioSettings
from livetranslate.workloads.modelcache import openvino
from livetranslate.workloads.modelcache.errors import (
    EXIT_PERMANENT,
    ConversionFailed,
    ConversionInterrupted,
    DigestMismatch,
)
from livetranslate.workloads.modelcache.layout import check_model, model_dir
from livetranslate.workloads.modelcache.pull import PullRequest, pull
from livetranslate_testing import speech
from tests.models.conftest import CliRunner, make_model, partial_dirs

TINY_SHA256 = hashlib.sha256((packaged.tiny_en_dir() / "model.bin").read_bytes()).hexdigest()


def _req(cache: Path, source: str = "packaged:tiny.en", **kw: object) -> PullRequest:
    return PullRequest(cache=cache, stage="audio", name="tiny.en", format="openvino-ir", source=source, **kw)  # type: ignore[arg-type]


@pytest.mark.slow
def test_tiny_en_is_converted_to_an_ir_the_audio_engine_loads(tmp_path: Path, cli: CliRunner) -> None:
    args = ("--cache", tmp_path, "--stage", "audio", "--name", "tiny.en", "--device", "npu")
    done = cli("pull", *args, "--sha256", TINY_SHA256)
    assert done.code == 0, done.err
    final = model_dir(tmp_path, "audio", "tiny.en", "openvino-ir")
    assert done.line["format"] == "openvino-ir" and done.line["path"] == str(final)
    manifest = check_model(final, full=True)
    names = {f.path for f in manifest.files}
    assert {"openvino_encoder_model.xml", "openvino_decoder_model.xml", "openvino_tokenizer.xml"} <= names
    # the stateful export (one decoder holding its KV cache): what GenAI loads on every device; a
    # stateless one (a separate decoder-with-past) fails on "Port for tensor name beam_idx"
    assert "openvino_decoder_with_past_model.xml" not in names
    assert manifest.sourceSha256 == TINY_SHA256 and manifest.sha256 == done.line["sha256"]
    assert json.loads((final / "manifest.json").read_text())["source"] == "packaged:tiny.en"
    assert partial_dirs(tmp_path) == []
    assert cli("pull", *args, "--sha256", TINY_SHA256).line["cached"] is True
    # What an audio pod placed on an NPU does with it, here on OpenVINO's CPU device.
    engine = load_engine(AudioSettings(model=str(final), workers=1, device="cpu"))
    text = speech.SENTENCES[0]
    heard = engine.transcribe(speech.speak(text, "en-us")).text
    assert engine.name == "openvino" and speech.word_error_rate(text, heard) <= 0.3, heard


def test_the_asked_digest_is_checked_on_the_weights_that_go_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(converter, "convert", lambda *a, **k: pytest.fail("converted unchecked weights"))
    with pytest.raises(DigestMismatch, match=f"sha256 of model.bin is {TINY_SHA256}, expected {'0' * 64}"):
        pull(_req(tmp_path, sha256="0" * 64))
    assert partial_dirs(tmp_path) == []


def test_a_failed_export_says_so_and_places_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def export_fails(model: Path, output: Path, **kw: object) -> Path:
        assert kw == {"weight_format": "int8", "stateless": False, "keep_checkpoint": kw["keep_checkpoint"]}
        output.mkdir()
        (output / "openvino_encoder_model.xml").write_text("<half/>")
        raise subprocess.CalledProcessError(1, ["optimum-cli", "export", "openvino"])

    monkeypatch.setattr(converter, "convert", export_fails)
    with pytest.raises(ConversionFailed) as exc:
        pull(_req(tmp_path, str(make_model(tmp_path / "src"))))
    assert str(exc.value) == (
        "converting tiny.en to openvino-ir failed: optimum-cli exited with 1 (its output is in this pod's log)"
    )
    assert (
        not model_dir(tmp_path, "audio", "tiny.en", "openvino-ir").exists() and partial_dirs(tmp_path) == []
    )


def test_an_image_without_the_converter_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: CliRunner
) -> None:
    monkeypatch.setattr(openvino.shutil, "which", lambda _name: None)
    monkeypatch.setattr(openvino.sys, "executable", str(tmp_path / "bin" / "python"))
    term = tmp_path / "term"
    done = cli("pull", "--cache", tmp_path, "--stage", "audio", "--name", "tiny.en", "--device", "npu",
               "--termination-log", term)  # fmt: skip
    # the status of a model that cannot exist here: the Job fails at once and is not retried
    assert done.code == EXIT_PERMANENT and done.error == (
        "livetranslate model-cache: cannot convert tiny.en to openvino-ir here: optimum-cli is missing "
        "(this image lacks the convert extra)"
    )
    assert json.loads(term.read_text())["reason"] == "ConversionFailed"


def test_a_converter_killed_by_a_signal_is_worth_another_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(model: Path, output: Path, **kw: object) -> Path:
        raise subprocess.CalledProcessError(-9, ["optimum-cli", "export", "openvino"])  # the OOM killer

    monkeypatch.setattr(converter, "convert", killed)
    with pytest.raises(ConversionInterrupted) as exc:
        pull(_req(tmp_path, str(make_model(tmp_path / "src"))))
    assert exc.value.exit_code == 1 and exc.value.reason == "ConversionInterrupted"
    assert "killed by signal 9" in str(exc.value)
    assert partial_dirs(tmp_path) == []


def test_only_audio_models_have_an_openvino_ir(tmp_path: Path) -> None:
    with pytest.raises(ConversionFailed, match="openvino-ir is a format of audio models, not of translation"):
        pull(PullRequest(tmp_path, "translation", "org/llm", "openvino-ir", "hf:org/llm"))
