"""The service itself: /v1/health (no credential) and /metrics (Prometheus, admins)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from producer.gateway.caller import Admin, gateway_of
from producer.gateway.schemas import GUARDED, Health, problems

router = APIRouter(tags=["service"])


@router.get("/v1/health", summary="Liveness (no credential)", response_model=Health)
def health(request: Request) -> Health:
    gateway = gateway_of(request)
    return Health(status="ok", mode=gateway.segmenter.mode, pending=gateway.queue.pending, version=request.app.version)


@router.get(
    "/metrics",
    summary="Prometheus metrics (admins)",
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **problems(*GUARDED)},
)
def metrics(request: Request, identity: Admin) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(gateway_of(request).telemetry.exposition(), media_type=CONTENT_TYPE_LATEST)
