"""Every `livetranslate COMMAND --help` is written for users: plain text (no reStructuredText
backticks, no internals) and a help line for every option."""

from __future__ import annotations

import contextlib
import importlib
import io
import re

import pytest

from livetranslate.cli import COMMANDS


def help_text(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = importlib.import_module(COMMANDS[command][0]).main(["--help"])
        except SystemExit as done:  # argparse's --help
            code = done.code
    assert code in (0, None), out.getvalue()
    return out.getvalue()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_is_plain_and_every_option_is_explained(command: str) -> None:
    text = help_text(command)
    assert "``" not in text and "HANDLER_MODULES" not in text and "subreaper" not in text, text
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^  -", line):
            explained = re.search(r"\S\s{2,}\S", line.strip()) or (
                i + 1 < len(lines) and re.match(r"^\s{6,}\S", lines[i + 1])
            )
            assert explained, f"{command}: option without help: {line.strip()!r}"


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "-f", "/nonexistent/pipeline.yaml"],
        ["stream", "/nonexistent/speech.wav"],
        ["languages", "--from", "xx"],
        ["convert-openvino", "--output", "/nonexistent/ir", "--model", "/nonexistent/whisper"],
    ],
    ids=lambda a: a[0],
)
def test_a_users_mistake_is_one_clear_line_and_a_failure(argv: list[str]) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code: object = importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])
        except SystemExit as done:  # sys.exit("message"): the interpreter prints it to stderr
            code = 1 if isinstance(done.code, str) else done.code
            if isinstance(done.code, str):
                print(done.code, file=err)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith(f"livetranslate {argv[0]}: "), lines


def test_stream_prints_a_japanese_sentence_without_spaces_between_its_finals() -> None:
    from livetranslate.stream import Printer

    out = io.StringIO()
    printer = Printer(out=out, as_json=False, partials=False)
    for ev in (
        {"type": "session.started", "sessionId": "s", "targetLanguages": ["en"]},
        {"type": "transcript.final", "segmentId": 0, "text": "みなさん、おは", "start": 0.0, "end": 1.0},
        {"type": "transcript.final", "segmentId": 1, "text": "ようございます。", "start": 1.0, "end": 2.0},
        {
            "type": "translation",
            "sentenceId": 0,
            "segmentIds": [0, 1],
            "language": "en",
            "text": "Good morning, everyone.",
            "quality": "ok",
        },
    ):
        printer.event(ev)
    assert "みなさん、おはようございます。" in out.getvalue(), out.getvalue()
