"""openvino-ir for audio: Whisper's ct2 weights converted where they were pulled.

The audio stage loads an OpenVINO IR through OpenVINO GenAI's WhisperPipeline, on the NPU through its
static pipeline, which takes optimum's default (stateful) export and makes the decoder stateless with
static shapes itself; a stateless export does not load at all (GenAI 2026.4 asks the decoder for its
``beam_idx`` input: "Port for tensor name beam_idx was not found"). The only Whisper weights
reachable are CTranslate2's, so the pull fetches those first and converts them with
``convert-openvino``'s converter (int8 weights, the default stateful export). When this image cannot convert (no optimum-cli, no torch) or
the export fails, the pull fails with ``ConversionFailed`` (exit status 3, not retried) and the
operator falls back to the next device; a converter killed by a signal (out of memory) fails with
``ConversionInterrupted``, which is retried.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from livetranslate.workloads.modelcache.errors import ConversionFailed, ConversionInterrupted
from livetranslate.workloads.modelcache.sources import NeedSpace

CONVERT_SPACE_FACTOR = 3  # a float32 checkpoint (twice the ct2 weights) plus the IR itself


@contextlib.contextmanager
def _converting_in(work: Path) -> Iterator[None]:
    """Temporary files of the converter on the cache volume, its chatter off our stdout.

    Pods have a read-only root filesystem, and stdout carries only the result line.
    """
    saved_env = {k: os.environ.get(k) for k in ("TMPDIR", "HF_HOME")}
    saved_tempdir = tempfile.tempdir
    scratch = work / "tmp"
    scratch.mkdir()
    os.environ["TMPDIR"] = tempfile.tempdir = str(scratch)
    os.environ.setdefault("HF_HOME", str(work / "hf-home"))
    sys.stdout.flush()
    saved_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved_stdout, 1)
        os.close(saved_stdout)
        tempfile.tempdir = saved_tempdir
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def convert_openvino(name: str, ct2: Path, out: Path, work: Path, need_space: NeedSpace) -> None:
    """ct2 Whisper -> int8 OpenVINO IR, the export GenAI's pipelines load on CPU, GPU and NPU."""
    cli = Path(sys.executable).with_name("optimum-cli")
    if shutil.which("optimum-cli") is None and not cli.exists():
        raise ConversionFailed(
            f"cannot convert {name} to openvino-ir here: optimum-cli is missing "
            "(this image lacks the convert extra)"
        )
    try:
        from livetranslate.workloads.audio.convert import convert
    except ImportError as exc:
        raise ConversionFailed(f"cannot convert {name} to openvino-ir here: {exc}") from None
    need_space(CONVERT_SPACE_FACTOR * sum(p.stat().st_size for p in ct2.rglob("*") if p.is_file()))
    try:
        with _converting_in(work):
            convert(ct2, out, weight_format="int8", stateless=False, keep_checkpoint=work / "checkpoint")
    except subprocess.CalledProcessError as exc:
        if exc.returncode < 0:  # a signal: the OOM killer, or the pod being stopped
            raise ConversionInterrupted(
                f"converting {name} to openvino-ir was interrupted: optimum-cli was killed by signal "
                f"{-exc.returncode} (out of memory?); the pull is retried"
            ) from None
        raise ConversionFailed(
            f"converting {name} to openvino-ir failed: optimum-cli exited with {exc.returncode} "
            "(its output is in this pod's log)"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise
        raise ConversionFailed(f"converting {name} to openvino-ir failed: {exc}") from None
    except (ImportError, ValueError, RuntimeError, KeyError) as exc:
        raise ConversionFailed(f"converting {name} to openvino-ir failed: {exc}") from None
