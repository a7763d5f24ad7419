"""/v1/audit: the audit trail for admins, newest first, filtered by resource id or actor."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from producer.gateway.caller import Admin, gateway_of, note
from producer.gateway.schemas import GUARDED, JOB_ID_PATTERN, problems

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("", summary="The audit trail, newest first (admins)", responses=problems(*GUARDED))
def read_audit(
    request: Request,
    identity: Admin,
    limit: int = Query(200, ge=1, le=5000),
    resource_id: str | None = Query(None, pattern=JOB_ID_PATTERN, description="only this job's lines"),
    actor: str | None = Query(None, min_length=1, max_length=200, description="only this identity's lines"),
) -> list[dict[str, Any]]:
    note(request, resource="audit")
    return gateway_of(request).audit.read(limit, resource_id=resource_id or "", actor=actor or "")
