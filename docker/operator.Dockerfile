# syntax=docker/dockerfile:1.7
# The LiveTranslate operator (`livetranslate operator`): Kopf, the CRD models, no model code.
# Build from the repository root:  docker build -f docker/operator.Dockerfile -t livetranslate-operator:0.1.0 .
# Runs as UID 10001 with a read-only root filesystem; the only writable path it needs is /tmp
# (the chart mounts an emptyDir there). Probes: Kopf's liveness endpoint on :8081/healthz (the
# chart's livenessProbe/readinessProbe), metrics on :9090/metrics.

FROM python:3.11.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Pass a mirror with --build-arg PIP_INDEX_URL=... where PyPI is not reachable.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY livetranslate ./livetranslate
COPY operator ./operator
COPY workloads ./workloads
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install -c requirements.lock ".[operator]" \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11.11-slim-bookworm
LABEL org.opencontainers.image.title="livetranslate-operator" \
      org.opencontainers.image.description="Kopf operator reconciling TranslationPipeline resources" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 livetranslate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin livetranslate
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONSAFEPATH=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    LT_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8081 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=4)"]
ENTRYPOINT ["livetranslate"]
CMD ["operator"]
