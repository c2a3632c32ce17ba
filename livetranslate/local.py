"""``livetranslate up [-f pipeline.yaml]``: the whole pipeline on this machine's CPU.

Reads the same TranslationPipeline YAML a user would ``kubectl apply``, resolves it the way the
operator would on a cluster without accelerators (audio on CPU with the packaged tiny.en Whisper,
translation on the offline Apertium backend unless the spec names an OpenAI-compatible endpoint),
writes the resolved document to a temporary ``pipeline.json`` and runs the three workloads as
child processes (``livetranslate serve ...``) on loopback ports, watched and restarted by
supervisor.py; Ctrl-C or SIGTERM stops the gateway first (it finalises open sessions while its
upstreams still run), then the rest.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from livetranslate.api import (
    API_VERSION,
    KIND,
    TranslationPipelineSpec,
    describe_validation_error,
    is_model_path,
)
from livetranslate.capabilities import backend_problems, installed_modes, speech_problems
from livetranslate.config import Endpoints, Placement, ResolvedPipeline
from livetranslate.procs import free_port
from livetranslate.supervisor import STAGES, Runner, UpError, _become_subreaper, _die_with_parent

# testing/livetranslate_testing/chaos.py starts its children with the same parent-death signal.
__all__ = [
    "UpError",
    "_die_with_parent",
    "cluster_only",
    "load_pipeline",
    "main",
    "page_port",
    "resolve_local",
]


def load_pipeline(path: Path | None) -> tuple[str, str, TranslationPipelineSpec]:
    """(name, namespace, spec) from a YAML file (the first TranslationPipeline in it), or defaults."""
    if path is None:
        return "local", "default", TranslationPipelineSpec()
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise UpError(f"{path}: {exc}") from exc
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        if doc.get("kind") == KIND:
            if doc.get("apiVersion") != API_VERSION:
                raise UpError(
                    f"{path}: apiVersion {doc.get('apiVersion')!r}; this version reads {API_VERSION}"
                )
            meta = doc.get("metadata") or {}
            try:
                spec = TranslationPipelineSpec.model_validate(doc.get("spec") or {})
            except ValueError as exc:
                raise UpError(f"{path}: {describe_validation_error(exc)}") from exc
            return str(meta.get("name") or "local"), str(meta.get("namespace") or "default"), spec
    raise UpError(f"{path}: no {KIND} resource (apiVersion {API_VERSION}) in the file")


def resolve_local(
    name: str, namespace: str, spec: TranslationPipelineSpec, ports: dict[str, int]
) -> ResolvedPipeline:
    """What the operator would decide on a CPU-only cluster, with loopback endpoints."""
    if spec.translation.backend == "vllm":
        raise UpError(
            "spec.translation.backend: vllm needs a GPU; livetranslate up runs on this "
            "machine's CPU (use apertium, or openai with spec.translation.endpoint)"
        )
    if spec.translation.backend == "openai":
        backend, model = "openai", spec.translation.model
        reason = f"backend openai at {spec.translation.endpoint}"
    else:
        backend, model = "apertium", "apertium"
        reason = "no GPU on this machine: offline Apertium on CPU"
    # Checked against the Apertium modes this machine really has: a missing pair names its package.
    problems = speech_problems(spec.sourceLanguage) + backend_problems(
        backend,
        spec.sourceLanguage,
        list(spec.targetLanguages),
        endpoint=spec.translation.endpoint,
        installed_modes=installed_modes() if backend == "apertium" else None,
    )
    if problems:
        raise UpError("; ".join(problems))
    model = spec.audio_model()
    if is_model_path(model):
        if "://" in model and not model.startswith("file://"):
            raise UpError(
                f"spec.audio.model: {model} is a remote URI; livetranslate up loads models from this "
                "machine (a packaged name: tiny.en, base; or a directory of converted weights)"
            )
        if not Path(model.removeprefix("file://")).expanduser().is_dir():
            raise UpError(
                f"spec.audio.model: {model} is not a directory on this machine (converted "
                "faster-whisper or OpenVINO weights; or a packaged name: tiny.en, base)"
            )
    placement = Placement(
        audioDevice="cpu",
        audioReason="livetranslate up runs on this machine's CPU",
        translationBackend=backend,
        translationModel=model,
        translationReason=reason,
    )
    endpoints = Endpoints(**{stage: f"http://127.0.0.1:{ports[stage]}" for stage in STAGES})
    return ResolvedPipeline(
        name=name, namespace=namespace, generation=1, spec=spec, placement=placement, endpoints=endpoints
    )


def cluster_only(spec: TranslationPipelineSpec) -> list[str]:
    """The fields this spec sets that only a cluster acts on: ``up`` runs one process per stage
    on this machine's CPU from the models installed here, so it names them rather than ignore
    them silently (the same YAML applied to a cluster uses every one)."""
    unused = []
    if spec.modelCache is not None:
        unused.append("spec.modelCache (the models installed on this machine are used)")
    if "scaling" in spec.model_fields_set:
        unused.append("spec.scaling (no autoscaler: one process per stage)")
    for stage in ("audio", "translation", "gateway"):
        if "replicas" in getattr(spec, stage).model_fields_set:
            unused.append(f"spec.{stage}.replicas (one process)")
    if "devices" in spec.audio.model_fields_set and spec.audio.devices[:1] != ["cpu"]:
        unused.append("spec.audio.devices (audio runs on this machine's CPU)")
    for key in ("fallbackModels", "sleepAfterIdle", "fallback"):
        if key in spec.translation.model_fields_set:
            unused.append(f"spec.translation.{key} (vLLM and its fallback chain run on a cluster)")
    return unused


def page_port(preferred: int, host: str) -> tuple[int, str | None]:
    """The gateway's port: ``preferred`` unless another program holds it (0 asks for any free
    one), and, when it moved, why, for a warning the user cannot miss."""
    port = free_port(preferred, host)
    if preferred and port != preferred:
        return port, (
            f"port {preferred} is held by another program; the page moves to port {port} "
            "(stop that program, or choose a port with --port)"
        )
    return port, None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="livetranslate up",
        description="Run the whole pipeline on this machine's CPU: speech recognition, translation and "
        "the gateway with its captions page. Takes the same TranslationPipeline YAML you "
        "would kubectl apply; without -f it translates English into Spanish. Ctrl-C stops it.",
    )
    parser.add_argument("-f", "--file", type=Path, help="TranslationPipeline YAML (default: en -> es)")
    parser.add_argument("--host", default="127.0.0.1", help="address the gateway binds (default loopback)")
    parser.add_argument(
        "--port",
        type=int,
        default=8080,
        help="gateway port (default 8080; 0 picks a free one; a port another program "
        "holds moves to a free one, with a warning)",
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        help="where the services' logs go (default: a temporary folder, removed at a "
        "clean stop and kept when a service failed)",
    )
    parser.add_argument("--redis-url", help="share session state through this Redis (REDIS_URL)")
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for every service to be ready (default 600)",
    )
    args = parser.parse_args(argv)
    out = sys.stdout

    try:
        name, namespace, spec = load_pipeline(args.file)
        gateway_port, moved = page_port(args.port, args.host)
        ports = {"gateway": gateway_port, "audio": free_port(), "translation": free_port()}
        resolved = resolve_local(name, namespace, spec, ports)
    except (UpError, OSError) as exc:
        print(f"livetranslate up: {exc}", file=sys.stderr)
        return 2
    if moved:
        print(f"livetranslate up: WARNING: {moved}", file=sys.stderr)
    unused = cluster_only(spec)
    if unused:
        print(f"livetranslate up: on a cluster only, not used here: {'; '.join(unused)}", file=sys.stderr)

    workdir = Path(tempfile.mkdtemp(prefix="livetranslate-up-"))
    log_dir = args.log_dir or workdir
    log_dir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "pipeline.json"
    config_path.write_text(resolved.to_json())
    extra_env: dict[str, str] = {"LT_GATEWAY_PIPELINE": name}
    if args.redis_url:
        extra_env["REDIS_URL"] = args.redis_url

    targets = ", ".join(spec.targetLanguages)
    out.write(
        f"livetranslate up: pipeline {name!r}: {spec.sourceLanguage} -> {targets}; audio "
        f"{spec.audio_model()} on CPU; translation {resolved.placement.translationBackend}\n"
        f"logs: {log_dir}\n"
    )
    out.flush()
    runner = Runner(resolved, config_path, log_dir, args.host, out, extra_env)

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    # Both explicitly: a shell starts background jobs with SIGINT ignored, and Python then keeps
    # it ignored, so a Ctrl-C sent later (or `kill -INT`) would never stop us otherwise.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    _become_subreaper()
    try:
        for child in runner.children.values():
            runner.start(child)
            runner.say(
                f"{child.stage}: starting on 127.0.0.1:{child.port} (pid {child.proc.pid if child.proc else '?'})"
            )
        runner.wait_ready(args.startup_timeout)
        gw = ports["gateway"]
        shown = "127.0.0.1" if args.host in ("127.0.0.1", "0.0.0.0") else args.host
        runner.say(
            f"\nLiveTranslate is ready: open http://{shown}:{gw}/\n"
            f"  stream a file: livetranslate stream FILE.wav --url ws://{shown}:{gw}/v1/stream\n"
            f"  Ctrl-C stops everything."
        )
        while True:
            runner.check_children()
            runner.note_recovered()
            time.sleep(0.5)
    except KeyboardInterrupt:
        runner.say("stopping…")
    except UpError as exc:
        print(f"livetranslate up: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        runner.stop()
        if code and args.log_dir is None:
            runner.say(f"the services' logs stay in {log_dir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        runner.say("stopped")
    return code
