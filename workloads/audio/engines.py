"""Speech-to-text engines behind one interface, chosen by the device the operator placed us on.

faster-whisper (CTranslate2) serves CPU (int8) and CUDA (float16); OpenVINO GenAI's
``WhisperPipeline`` serves Intel NPU/GPU (and CPU, which is how CI checks that path). This module
finds the model a spec names and loads the engine for it; the interface and what a pass returns are
in transcription.py, each engine in a module of its own. One engine instance is shared by every
session; its ``transcribe`` is safe to call from several worker threads at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from livetranslate.workloads.audio.faster_whisper_engine import FasterWhisperEngine
from livetranslate.workloads.audio.openvino_engine import OpenVinoEngine
from livetranslate.workloads.audio.packaged import PACKAGED, ModelLoadError, packaged_model_dir
from livetranslate.workloads.audio.settings import AudioSettings
from livetranslate.workloads.audio.transcription import (
    PACKAGED_MODEL,
    Engine,
    Hypothesis,
    SegmentStats,
    Word,
    is_glued,
)

# What the audio service, the streaming policy, the tests and the benchmarks import from here.
__all__ = [
    "PACKAGED_MODEL",
    "Engine",
    "FasterWhisperEngine",
    "Hypothesis",
    "ModelLoadError",
    "OpenVinoEngine",
    "SegmentStats",
    "Word",
    "is_glued",
    "is_openvino_dir",
    "load_engine",
    "packaged_model_dir",
    "resolve_model_path",
]

log = logging.getLogger(__name__)


def resolve_model_path(model: str) -> Path:
    """A spec's model string as a local directory: a packaged model (tiny.en, base) or a mounted path.

    Other size names would need a download from a model hub, which production pods must not
    depend on at startup: those deployments mount converted weights and name the path.
    """
    name = model or PACKAGED_MODEL
    if name in PACKAGED:
        return packaged_model_dir(name)
    path = Path(name.removeprefix("file://")).expanduser()
    if path.is_dir():
        return path
    raise ModelLoadError(
        f"model {model!r} is neither a packaged model ({', '.join(PACKAGED)}) nor an existing directory; "
        "mount converted weights and set spec.audio.model (or LT_AUDIO_MODEL) to their path"
    )


def is_openvino_dir(path: Path) -> bool:
    return (path / "openvino_encoder_model.xml").exists()


def load_engine(settings: AudioSettings) -> Engine:
    """The engine the settings and the placed device call for; raises ModelLoadError."""
    model_name = settings.model or PACKAGED_MODEL
    model_dir = resolve_model_path(model_name)
    device = settings.device
    engine = settings.engine
    if engine == "auto":
        engine = "openvino" if device == "npu" or is_openvino_dir(model_dir) else "faster-whisper"
    if engine == "openvino":
        if not is_openvino_dir(model_dir):
            raise ModelLoadError(
                f"{model_dir} is not an OpenVINO IR; run `livetranslate convert-openvino` and point "
                "spec.audio.model at its output"
            )
        ov_device = settings.openvino_device or {"npu": "NPU", "gpu": "GPU"}.get(device, "CPU")
        return OpenVinoEngine(
            model_dir,
            ov_device,
            settings.openvino_cache_dir,
            model_name,
            device="cpu" if device == "auto" else device,
        )
    if device == "auto":
        device = "cuda" if _cuda_available() else "cpu"
    if device == "npu":
        raise ModelLoadError("the npu device needs the openvino engine and an OpenVINO IR model")
    on_gpu = device in ("gpu", "cuda")
    compute_type = settings.compute_type or ("float16" if on_gpu else "int8")
    log.info(
        "loading faster-whisper",
        extra={
            "fields": {
                "model_dir": str(model_dir),
                "device": device,
                "compute_type": compute_type,
                "workers": settings.worker_count(),
                "cpu_threads": settings.cpu_threads(),
            }
        },
    )
    return FasterWhisperEngine(
        model_dir,
        "cuda" if on_gpu else "cpu",
        compute_type,
        settings.worker_count(),
        settings.cpu_threads(),
        settings.beam_size,
        model_name,
        settings.dynamic_padding,
    )


def _cuda_available() -> bool:
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count()) > 0
    except (ImportError, RuntimeError):
        return False
