# syntax=docker/dockerfile:1
# The fleet's images: the worker (the package with its `worker` extra: OpenVINO, no torch) and the gateway
# (`producer serve`). The one-off exporter and a worker with the models baked in: ops/export.Dockerfile.
#
#   docker build -f ops/worker.Dockerfile --target worker -t litemedsam-fleet-worker .
#       models come from a volume or folder mounted read-only at /models (compose.yaml: LITEMEDSAM_MODELS)
#   docker build -f ops/worker.Dockerfile --target gateway -t litemedsam-fleet-gateway .
#
# PYTHON_IMAGE defaults to the official python:3.11-slim; without a registry, ops/images.sh builds a local
# equivalent (--build-arg PYTHON_IMAGE=litemedsam-local/python:3.11-slim; compose.yaml passes $PYTHON_IMAGE).
# Builds need the network for apt and pip (--network host; compose.yaml builds so).
# The worker stage is last, so it is the default target; the classic builder (no BuildKit) also builds the
# stages before its target, which is why the torch stages live in their own file.
# Build context: the repository root (see .dockerignore).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LITEMEDSAM_MODELS_DIR=/models \
    LITEMEDSAM_COMPILE_CACHE_DIR=/home/fleet/.cache/ov-cache
# libgomp: OpenCV's and OpenVINO's CPU plugins link against OpenMP
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 fleet \
 && mkdir /models /data && chown fleet /models /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY producer ./producer
COPY models ./models
RUN pip install ".[worker]"

# The hospital gateway (`producer serve`): the worker's packages (it can run jobs in its own process) plus the
# producer's formats and the HTTP service. Job records live in /data (compose.yaml mounts a volume there).
FROM base AS gateway
RUN pip install ".[worker,producer,gateway]"
USER fleet
EXPOSE 8000
CMD ["producer", "serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/data"]

# The default target: models from a volume at /models.
FROM base AS worker
USER fleet
EXPOSE 9808
HEALTHCHECK --interval=60s --timeout=20s --start-period=120s \
  CMD ["sh", "-c", "worker ping --timeout 10 --node \"worker@$(hostname)\""]
CMD ["worker", "start", "--hostname", "worker@%h", "--metrics-port", "9808"]
