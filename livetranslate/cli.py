"""The ``livetranslate`` command. Each subcommand lives in its own module and is imported only when
it runs, so ``livetranslate crd`` never loads Whisper and ``livetranslate stream`` never loads Kopf.
Every module named here exposes ``main(argv: list[str]) -> int`` with its own argparse parser.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("livetranslate.local", "run the whole pipeline (audio, translation, gateway) on this machine"),
    "stream": ("livetranslate.stream", "stream a WAV file to a gateway and print captions"),
    "operator": ("livetranslate.operator.main", "run the operator against the current kubeconfig"),
    "crd": ("livetranslate.crd", "print the TranslationPipeline CRD YAML"),
    "languages": ("livetranslate.languages", "list the language pairs that translate offline (Apertium)"),
    "serve": ("livetranslate.serve", "run one workload service (audio | translate | gateway)"),
    "convert-openvino": (
        "livetranslate.workloads.audio.convert",
        "convert CTranslate2 Whisper weights into an OpenVINO IR",
    ),
    "model-cache": (
        "livetranslate.workloads.modelcache.cli",
        "pull, verify and wait for models in a pipeline's model cache",
    ),
    "bench": ("livetranslate.bench", "benchmarks shipped with the product (autoscaling)"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: livetranslate COMMAND [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'livetranslate COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        return _dispatch(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:
        # The reader went away (`livetranslate languages | head`): not an error worth a traceback.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _dispatch(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        from livetranslate import __version__

        print(__version__)
        return 0
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"livetranslate: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
