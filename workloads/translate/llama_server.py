"""llama.cpp's own ``llama-server``: the CPU engine that decodes a micro-batch together.

Why this engine: the ``openai`` backend's micro-batches only pay off when the server decodes the
prompts of one batch in the same forward passes. llama-cpp-python's server does not (it decodes
one sequence at a time and keeps only the first prompt of a list); ``llama-server`` does: it runs
``--parallel`` slots with continuous batching, so one ``/v1/completions`` call with a prompt list
(the ``list`` batch mode, as vLLM takes it) fills several slots that advance together, one
``llama_decode`` per step for all of them.

No registry reachable here ships a ``llama-server`` binary, but the llama-cpp-python sdist carries
the llama.cpp sources it binds (``vendor/llama.cpp``, with ``tools/server``). :func:`build` takes
them from there and builds only the ``llama-server`` target, statically linked, with the CPU flags
this fleet needs (a native build uses instructions some machines lack and dies with an illegal
instruction). The binary is cached under ``~/.cache/livetranslate/llama-server/<key>/`` where the
key is the source version plus a hash of the flags, so a machine builds it once.

    python -m livetranslate.workloads.translate.llama_server build   # once (bootstrap does it)
    python -m livetranslate.workloads.translate.llama_server path    # where the binary is
    python -m livetranslate.workloads.translate.llama_server serve --model M.gguf --port 8081
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# The llama-cpp-python release whose vendored llama.cpp is built (the same sources the Python
# bindings of this project's other tools were built from).
SOURCE_PACKAGE = "llama-cpp-python"
SOURCE_VERSION = "0.3.36"
# CPU feature set: portable across this fleet (AVX2/FMA/F16C, no AVX-512), never -march=native.
CPU_FLAGS: tuple[str, ...] = (
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DGGML_AVX512=OFF",
)
# One self-contained binary (no shared libraries to find at run time), no web UI (its assets would
# be fetched from the network at build time), no TLS (the engine listens on loopback), no tests.
BUILD_FLAGS: tuple[str, ...] = CPU_FLAGS + (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)
BINARY_ENV = "LT_LLAMA_SERVER"  # an explicit binary wins over the cache
BINARY_NAME = "llama-server"


class BuildError(RuntimeError):
    """The sources could not be fetched or the build failed; the message says which step."""


def cache_key() -> str:
    digest = hashlib.sha1(" ".join(BUILD_FLAGS).encode()).hexdigest()[:12]
    return f"{SOURCE_VERSION}-{digest}"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "livetranslate" / "llama-server"


def cached_binary() -> Path:
    return cache_root() / cache_key() / BINARY_NAME


def find_binary() -> Path | None:
    """The binary to run: ``$LT_LLAMA_SERVER`` if set, else the cached build, else None.

    A ``llama-server`` on PATH is not taken silently: it may be a native build that dies on
    another machine, or a version whose flags differ from what this module passes.
    """
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        path = Path(explicit)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    path = cached_binary()
    return path if path.is_file() and os.access(path, os.X_OK) else None


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """One build per machine at a time: parallel bootstraps wait and then find the binary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: Sequence[str], log_path: Path, step: str, cwd: Path | None = None) -> None:
    with log_path.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(list(cmd), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        raise BuildError(f"{step} failed (exit {proc.returncode}); log {log_path}:\n" + "\n".join(tail))


def fetch_sdist(dest: Path, log_path: Path) -> Path:
    """The source distribution, through pip (its HTTP cache makes a second fetch local)."""
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-d",
            str(dest),
            f"{SOURCE_PACKAGE}=={SOURCE_VERSION}",
        ],
        log_path,
        "downloading the llama-cpp-python sdist",
    )
    found = sorted(dest.glob(f"{SOURCE_PACKAGE.replace('-', '_')}-{SOURCE_VERSION}.tar.gz"))
    if not found:
        raise BuildError(f"pip download left no {SOURCE_PACKAGE} {SOURCE_VERSION} sdist in {dest}")
    return found[0]


def extract_llama_cpp(sdist: Path, dest: Path) -> Path:
    """Only ``vendor/llama.cpp`` of the sdist: the sources llama-server builds from."""
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
        if not members:
            raise BuildError(f"{sdist.name} carries no vendor/llama.cpp")
        tar.extractall(dest, members=members, filter="data")
    roots = sorted(dest.glob("*/vendor/llama.cpp"))
    if not roots or not (roots[0] / "tools" / "server").is_dir():
        raise BuildError(f"{sdist.name}: vendor/llama.cpp has no tools/server")
    return roots[0]


@dataclass
class BuildInfo:
    binary: Path
    seconds: float
    built: bool
    flags: list[str] = field(default_factory=list)


def build(
    *, jobs: int | None = None, sdist: Path | None = None, force: bool = False, work_dir: Path | None = None
) -> BuildInfo:
    """Build llama-server into the cache unless it is there (idempotent, safe to run in parallel).

    ``work_dir`` keeps the sources and the CMake tree (a rebuild there is incremental); without
    it they go to a temporary folder removed afterwards.
    """
    target = cached_binary()
    started = time.monotonic()
    with _lock(cache_root() / f"{cache_key()}.lock"):
        if target.is_file() and not force:
            return BuildInfo(target, 0.0, built=False, flags=list(BUILD_FLAGS))
        target.parent.mkdir(parents=True, exist_ok=True)
        keep = work_dir is not None
        work = work_dir or Path(tempfile.mkdtemp(prefix="llama-server-build-", dir=target.parent))
        work.mkdir(parents=True, exist_ok=True)
        log_path = target.parent / "build.log"
        log_path.write_text("")
        try:
            src_tar = sdist or fetch_sdist(work, log_path)
            source = extract_llama_cpp(src_tar, work)
            build_dir = work / "build"
            _run(
                ["cmake", "-S", str(source), "-B", str(build_dir), *BUILD_FLAGS], log_path, "cmake configure"
            )
            _run(
                [
                    "cmake",
                    "--build",
                    str(build_dir),
                    "--target",
                    BINARY_NAME,
                    "-j",
                    str(jobs or os.cpu_count() or 2),
                ],
                log_path,
                "cmake build",
            )
            produced = build_dir / "bin" / BINARY_NAME
            if not produced.is_file():
                raise BuildError(f"the build left no {produced}")
            # Proves the binary runs on this CPU (an illegal instruction shows here, not in a test).
            _run([str(produced), "--version"], log_path, "running the built llama-server")
            staged = target.with_suffix(".new")
            shutil.copy2(produced, staged)
            staged.replace(target)  # atomic: a reader sees no binary or the whole one
        finally:
            if not keep:
                shutil.rmtree(work, ignore_errors=True)
        seconds = round(time.monotonic() - started, 1)
        (target.parent / "build-info.json").write_text(
            json.dumps(
                {
                    "source": f"{SOURCE_PACKAGE}=={SOURCE_VERSION}",
                    "flags": list(BUILD_FLAGS),
                    "seconds": seconds,
                    "jobs": jobs or os.cpu_count(),
                    "loadavg": list(os.getloadavg()),
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                indent=2,
            )
            + "\n"
        )
        log.info("llama-server built", extra={"fields": {"binary": str(target), "seconds": seconds}})
        return BuildInfo(target, seconds, built=True, flags=list(BUILD_FLAGS))


# Tokens of KV cache each slot owns by default: a prompt with the default contextSegments (3: a
# window of up to 5 earlier segments and their translations, about 35 tokens each, after the
# instruction and example) plus its output fits with room. contextSegments 32 (63 segments) needs
# about 2,500: pass ctx_size for it.
CTX_PER_SLOT = 1024


def server_command(
    binary: Path,
    model: Path,
    *,
    port: int,
    host: str = "127.0.0.1",
    aliases: Sequence[str] = (),
    parallel: int = 32,
    ctx_size: int | None = None,
    threads: int | None = None,
    kv_unified: bool = False,
    metrics: bool = True,
    gpu_layers: int | None = None,
    backend_sampling: bool | None = None,
) -> list[str]:
    """The command line that serves ``model`` as an OpenAI-compatible, batching engine.

    ``parallel`` slots decode together (continuous batching); give it at least as many slots as
    sessions it serves, so each session's prompt stays cached in a slot of its own (the
    translation context window only grows between jumps, so the next prompt of a session extends
    the cached one and only the new line is processed). ``ctx_size`` defaults to
    ``parallel * CTX_PER_SLOT``.

    Each slot gets its own KV cache (``--no-kv-unified``) unless ``kv_unified``: with one unified
    buffer, every decode step attends over the cells of all slots, so the cost of a batched step
    grows with every other session's cached prompt. Measured with Gemma-3-270M on 2 cores, 32 warm
    sessions, prompt lists of 16, one thread: 1.70 segments/s unified, 2.98 per slot.
    ``--metrics`` adds ``/metrics`` (``llamacpp:requests_processing``,
    ``llamacpp:n_busy_slots_per_decode``, ...).

    ``gpu_layers`` offloads that many layers (``--n-gpu-layers``; a number above the model's
    layer count offloads all of them) to a binary built with a GPU backend; the CPU build warns
    "no usable GPU found, --gpu-layers option will be ignored" and serves on the CPU.
    ``backend_sampling`` (default: on when offloading) picks each next token inside the model's
    graph rather than in the server's one host thread. On a GPU the host path costs about 0.7 ms
    per sequence per token over Gemma-3-270M's 262,144-token vocabulary: a 32-sequence step took
    37 ms with it and 15 ms without (an H200; 511 against 795 tokens/s; docs/translation.md). On
    a CPU it buys nothing (79 against 78 tokens/s on 2 cores), so it stays off there.
    """
    ctx = ctx_size if ctx_size is not None else parallel * CTX_PER_SLOT
    cmd = [
        str(binary),
        "--model",
        str(model),
        "--host",
        host,
        "--port",
        str(port),
        "--parallel",
        str(parallel),
        "--cont-batching",
        "--kv-unified" if kv_unified else "--no-kv-unified",
        "--ctx-size",
        str(ctx),
        "--threads",
        str(threads or os.cpu_count() or 2),
        "--no-webui",
    ]
    if aliases:
        cmd += ["--alias", ",".join(aliases)]
    if metrics:
        cmd.append("--metrics")
    if gpu_layers is not None:
        cmd += ["--n-gpu-layers", str(gpu_layers)]
    if backend_sampling is None:
        backend_sampling = gpu_layers is not None
    if backend_sampling:
        cmd.append("--backend-sampling")
    return cmd


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m livetranslate.workloads.translate.llama_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build llama-server into the cache unless it is there")
    b.add_argument("--jobs", type=int, default=None)
    b.add_argument(
        "--sdist", type=Path, default=None, help="a local llama-cpp-python sdist (else pip downloads it)"
    )
    b.add_argument("--force", action="store_true")
    b.add_argument("--work-dir", type=Path, default=None, help="keep sources and build tree here")
    sub.add_parser("path", help="print the binary's path (exit 1 when it is not built)")
    s = sub.add_parser("serve", help="run llama-server with this project's settings")
    s.add_argument("--model", type=Path, required=True, help="a GGUF file")
    s.add_argument("--port", type=int, default=8081)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--alias", action="append", default=[], help="model name(s) the API answers to")
    s.add_argument("--parallel", type=int, default=32, help="slots: at least the sessions served")
    s.add_argument(
        "--ctx-size", type=int, default=None, help=f"KV cache tokens (default: {CTX_PER_SLOT} per slot)"
    )
    s.add_argument("--kv-unified", action="store_true", help="one KV buffer shared by all slots")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument(
        "--gpu-layers",
        type=int,
        default=None,
        help="layers offloaded to the GPU (a build with a GPU backend; 999: all)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "build":
        try:
            info = build(jobs=args.jobs, sdist=args.sdist, force=args.force, work_dir=args.work_dir)
        except BuildError as exc:
            sys.stderr.write(f"llama-server build: {exc}\n")
            return 1
        state = f"built in {info.seconds:g} s" if info.built else "already built"
        sys.stdout.write(f"{info.binary} ({state})\n")
        return 0
    binary = find_binary()
    if binary is None:
        sys.stderr.write(
            f"llama-server is not built ({cached_binary()} missing; run the build "
            f"subcommand, or set {BINARY_ENV})\n"
        )
        return 1
    if args.command == "path":
        sys.stdout.write(f"{binary}\n")
        return 0
    cmd = server_command(
        binary,
        args.model,
        port=args.port,
        host=args.host,
        aliases=args.alias,
        parallel=args.parallel,
        ctx_size=args.ctx_size,
        threads=args.threads,
        kv_unified=args.kv_unified,
        gpu_layers=args.gpu_layers,
    )
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
