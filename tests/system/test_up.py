"""The product as a user runs it: `livetranslate up`, then `livetranslate stream` with real speech."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from livetranslate import local
from livetranslate.api import ModelCacheSpec
from livetranslate_testing.speech import Utterance, compose, word_error_rate, write_wav
from tests.system.conftest import ROOT, Up, livetranslate_cmd, running_up

pytestmark = pytest.mark.slow


def stream(up: Up, wav: Path, *extra: str, timeout: float = 120) -> tuple[int, list[dict[str, Any]]]:
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    done = subprocess.run(
        livetranslate_cmd("stream", str(wav), "--url", up.ws_url, "--json", *extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, events


def check_transcript(events: list[dict[str, Any]], reference: str, max_wer: float) -> None:
    finals = [e for e in events if e["type"] == "transcript.final"]
    ids = [f["segmentId"] for f in finals]
    assert ids == list(range(len(ids))), f"finals not numbered 0..n-1 exactly once: {ids}"
    hypothesis = " ".join(f["text"] for f in finals)
    wer = word_error_rate(reference, hypothesis)
    assert wer <= max_wer, f"WER {wer:.2f}: {hypothesis!r}"
    translations = [e for e in events if e["type"] == "translation"]
    # Sentences: consecutive ids, each translated once, their finals covering every final once.
    assert [t["sentenceId"] for t in translations] == list(range(len(translations)))
    covered = [i for t in translations for i in t["segmentIds"]]
    assert covered == ids, "every final in exactly one translated sentence"
    assert all(t["segmentId"] == t["segmentIds"][-1] and t["language"] == "es" for t in translations)
    assert all(t["text"].strip() for t in translations)
    assert len(translations) < len(finals) or len(finals) <= 4, "sentences, not one per final"
    assert events[-1]["type"] == "session.ended"


def test_stream_real_speech_through_up(up: Up, speech_wav: tuple[Path, str]) -> None:
    wav, reference = speech_wav
    code, events = stream(up, wav, "--realtime")
    assert code == 0, events
    check_transcript(events, reference, max_wer=0.25)
    translations = " ".join(e["text"] for e in events if e["type"] == "translation").lower()
    # Apertium's Spanish for words of the reference, not the English echoed back.
    assert any(w in translations for w in ("reunión", "minutos", "informe", "proyecto", "mes"))
    finals = [e for e in events if e["type"] == "transcript.final"]
    assert all(0 <= f["latency"] < 10 for f in finals)


def test_stream_at_44100_hz_stereo(up: Up, speech_wav: tuple[Path, str], tmp_path: Path) -> None:
    wav, reference = speech_wav
    resampled = tmp_path / "speech-44k-stereo.wav"
    subprocess.run(["sox", "-R", str(wav), "-r", "44100", "-c", "2", "-b", "16", str(resampled)], check=True)
    code, events = stream(up, resampled)
    assert code == 0, events
    check_transcript(events, reference, max_wer=0.25)


def test_stream_prints_sentences_of_a_file_without_overload(up: Up, speech_wav: tuple[Path, str]) -> None:
    """The README's own command, piped: plain lines, each sentence with its translation under
    it; the file goes out as fast as the pipeline transcribes it and never overloads it."""
    wav, _ = speech_wav
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    done = subprocess.run(
        livetranslate_cmd("stream", str(wav), "--url", up.ws_url),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "overloaded" not in done.stdout and "error" not in done.stdout, done.stdout
    assert "\033" not in done.stdout and "\r" not in done.stdout  # no terminal control codes in a pipe
    sentences = [i for i, line in enumerate(lines) if line.startswith("[")]
    assert len(sentences) >= 2, done.stdout
    for i in sentences:
        assert lines[i + 1].startswith("    es: "), done.stdout
    assert " sentences, " in done.stderr


def test_audio_service_killed_mid_session(up: Up, speech_wav: tuple[Path, str]) -> None:
    """`up` restarts the audio child; the gateway tells the client, buffers, replays: the session
    survives and its transcript is still whole."""
    wav, reference = speech_wav
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    proc = subprocess.Popen(
        livetranslate_cmd("stream", str(wav), "--url", up.ws_url, "--json", "--realtime"),
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    mark = len(up.lines)
    time.sleep(6.0)  # mid-way through the second sentence
    os.kill(up.pid_of("audio"), signal.SIGKILL)
    up.wait_for_line(r"audio: exited with code", 20, start=mark)
    out, _ = proc.communicate(timeout=180)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, out
    errors = [e for e in events if e["type"] == "error"]
    assert any(e["code"] == "upstream_unavailable" for e in errors), events
    up.wait_for_line(r"audio: ready in", 120, start=mark)
    check_transcript(events, reference, max_wer=0.35)


def up_refusing(path: Path, spec: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``livetranslate up -f`` on a spec written to ``path``, expected to stop at once."""
    path.write_text("apiVersion: livetranslate.io/v1alpha1\nkind: TranslationPipeline\n" + spec)
    return subprocess.run(
        livetranslate_cmd("up", "-f", str(path), *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
        cwd=ROOT,
        check=False,
    )


def test_up_refuses_a_spec_it_cannot_run(tmp_path: Path) -> None:
    spec = "metadata: {name: town-hall}\nspec:\n  targetLanguages: [de]\n"
    done = up_refusing(tmp_path / "pipeline.yaml", spec, "--port", "0")
    assert done.returncode == 2
    assert "spec.targetLanguages[0]" in done.stderr and "en->de" in done.stderr
    done = up_refusing(tmp_path / "bad.yaml", "metadata: {name: x}\nspec:\n  targetLanguages: []\n")
    assert done.returncode == 2 and "spec.targetLanguages" in done.stderr


def test_up_refuses_a_model_it_cannot_load(tmp_path: Path) -> None:
    def up_with(model: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        spec = f"metadata: {{name: x}}\nspec:\n  audio: {{model: '{model}'}}\n"
        logs = str(tmp_path / "logs")
        return up_refusing(
            tmp_path / "pipeline.yaml", spec, "--port", "0", "--log-dir", logs, timeout=timeout
        )

    # refused before anything starts: a size name that is not packaged, a path that is not here
    done = up_with("small")
    assert done.returncode == 2 and "spec.audio.model" in done.stderr and "tiny.en, base" in done.stderr
    done = up_with(str(tmp_path / "missing"))
    assert done.returncode == 2 and "is not a directory on this machine" in done.stderr
    # a directory that holds no model: up stops as soon as the audio stage says why, not at its
    # startup timeout
    (tmp_path / "empty").mkdir()
    done = up_with(str(tmp_path / "empty"), timeout=120)
    assert done.returncode != 0 and "audio: the model" in done.stderr and "did not load" in done.stderr, (
        done.stderr
    )


def test_up_refuses_a_language_whisper_does_not_hear(tmp_path: Path) -> None:
    spec = "metadata: {name: x}\nspec:\n  sourceLanguage: ast\n  targetLanguages: [es]\n"
    done = up_refusing(tmp_path / "pipeline.yaml", spec, "--port", "0")
    assert done.returncode == 2 and "spec.sourceLanguage: Whisper does not transcribe ast" in done.stderr


BILINGUAL = (
    ("Good morning everyone, thank you for joining the meeting today.", "en-us", "en"),
    ("Buenos días a todos, gracias por venir a la reunión de hoy.", "es", "es"),
    ("The budget for next year is ready for your review.", "en-gb", "en"),
    ("El presupuesto del próximo año está listo para su revisión.", "es", "es"),
)


def test_an_auto_pipeline_translates_each_language_it_hears(tmp_path: Path) -> None:
    """sourceLanguage auto through `livetranslate up`: the packaged multilingual model, detection
    among the languages Apertium can use, each sentence translated from the language it was
    spoken in, and the language it was spoken in passed through."""
    samples, _ = compose([Utterance(t, v, pause_after=1.2) for t, v, _ in BILINGUAL])
    wav = write_wav(tmp_path / "bilingual.wav", samples)
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(
        "apiVersion: livetranslate.io/v1alpha1\nkind: TranslationPipeline\nmetadata: {name: mixed}\n"
        "spec:\n  sourceLanguage: auto\n  targetLanguages: [es, en]\n"
    )
    with running_up("-f", str(spec)) as handle:
        assert any("base on CPU" in line for line in handle.lines), handle.lines
        code, events = stream(handle, wav, "--realtime")
    assert code == 0, events
    # Ctrl-C is a clean stop: the temporary folder (pipeline.json, the logs) goes with it
    logs = next(line.split("logs: ", 1)[1] for line in handle.lines if line.startswith("logs: "))
    assert logs.startswith(tempfile.gettempdir()) and not Path(logs).exists(), handle.lines[-5:]
    finals = [e for e in events if e["type"] == "transcript.final"]
    languages = [f.get("language") for f in finals]
    assert {"en", "es"} <= set(languages), [(f["text"], f.get("language")) for f in finals]
    # each utterance's words in the language it was spoken in (the first final of each utterance)
    by_text = " | ".join(f"{f['language']}:{f['text']}" for f in finals)
    assert "es:" in by_text and ("buenos" in by_text.lower() or "presupuesto" in by_text.lower()), by_text
    translations = [e for e in events if e["type"] == "translation"]
    source = [t for t in translations if t["quality"] == "source"]
    made = [t for t in translations if t["quality"] == "ok"]
    # Spanish sentences were translated into English and passed through as Spanish, and the
    # other way round
    assert {t["language"] for t in source} == {"en", "es"} and {t["language"] for t in made} == {"en", "es"}
    english = " ".join(t["text"] for t in made if t["language"] == "en").lower()
    assert any(w in english for w in ("budget", "year", "meeting", "morning", "good")), english


def test_up_names_the_fields_only_a_cluster_uses() -> None:
    """The YAML a user applies to a cluster runs under `up` too; what `up` cannot act on (one
    process per stage, on this CPU, from the models installed here) is named, not silently
    dropped, and the default pipeline sets none of it."""
    assert local.cluster_only(local.load_pipeline(None)[2]) == []
    _, _, spec = local.load_pipeline(ROOT / "examples" / "town-hall-cpu.yaml")
    assert local.cluster_only(spec) == [
        "spec.audio.replicas (one process)",
        "spec.translation.replicas (one process)",
        "spec.gateway.replicas (one process)",
        "spec.audio.devices (audio runs on this machine's CPU)",
    ]
    cached = spec.model_copy(update={"modelCache": ModelCacheSpec(size="2Gi")})
    assert local.cluster_only(cached)[0].startswith("spec.modelCache")
