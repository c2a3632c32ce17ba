# syntax=docker/dockerfile:1.7
# The translation stage (`livetranslate serve translate`): vLLM / OpenAI-compatible / Apertium
# backends. On GPU nodes the operator runs vLLM's official OpenAI server image next to it as a
# second container; this image itself carries no CUDA. The offline backend is baked in: Debian's
# Apertium language pairs and apertium-apy (bound to loopback by the service).
# Build from the repository root:  docker build -f docker/translate.Dockerfile -t livetranslate-translate:0.1.0 .
# Choose the pairs with --build-arg APERTIUM_PACKAGES="apertium-eng-spa ..." (the names in
# livetranslate/capabilities.py); the default installs every pair that table knows (44 packages,
# 277 MiB under /usr/share/apertium; tests/chart/test_dockerfiles.py keeps the two equal).
# Runs as UID 10001, read-only root filesystem; writable: /tmp (HOME). Probes: :8080/healthz, /readyz.

FROM python:3.11.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY livetranslate ./livetranslate
COPY operator ./operator
COPY workloads ./workloads
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install -c requirements.lock ".[translate]" \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11.11-slim-bookworm
LABEL org.opencontainers.image.title="livetranslate-translate" \
      org.opencontainers.image.description="Translation service: vLLM, OpenAI-compatible and offline Apertium backends" \
      org.opencontainers.image.licenses="Apache-2.0"
ARG APERTIUM_PACKAGES="apertium-eng-spa apertium-eng-cat apertium-en-gl apertium-eo-en apertium-eu-en apertium-hbs-eng apertium-isl-eng apertium-mkd-eng apertium-fr-es apertium-es-pt apertium-es-ro apertium-spa-ita apertium-spa-cat apertium-es-gl apertium-eu-es apertium-eo-es apertium-oc-es apertium-spa-arg apertium-spa-ast apertium-fra-cat apertium-por-cat apertium-cat-ita apertium-oc-ca apertium-eo-ca apertium-arg-cat apertium-cat-srd apertium-srd-ita apertium-pt-gl apertium-eo-fr apertium-br-fr apertium-afr-nld apertium-rus-ukr apertium-bel-rus apertium-mkd-bul apertium-hbs-mkd apertium-hbs-slv apertium-pol-szl apertium-nno-nob apertium-dan-nor apertium-swe-dan apertium-swe-nor apertium-isl-swe apertium-ind-zlm apertium-urd-hin"
RUN apt-get update \
 && apt-get install -y --no-install-recommends apertium apertium-apy ${APERTIUM_PACKAGES} \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 livetranslate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin livetranslate
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONSAFEPATH=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    LT_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["livetranslate"]
CMD ["serve", "translate"]
