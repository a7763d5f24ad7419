"""Who calls a route and whether they may: the FastAPI dependency every guarded route declares.

`Caller(scope)` reads the bearer credential; refuses it unchecked if its client address is over its rate of
requests without a valid credential (producer.gateway.limits.FailedAuthLimits: 429 with Retry-After, one audit
line per window, the others none); identifies it (producer.gateway.identity: 401 if it does not, counted against the
address); checks the route's scope (producer.gateway.access: 403), counts the request against the identity's rate
(producer.gateway.limits: 429 with Retry-After), and leaves the identity on the request for the audit line.
`note(request, ...)` adds what a route knows (job id, study, source, destination) to that audit line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from producer.gateway.access import Forbidden, can_see, require_scope
from producer.gateway.identity import ADMIN, READ, SUBMIT, AuthError, Identity
from producer.gateway.limits import AddressLimited, LimitExceeded
from producer.gateway.service import Gateway

bearer = HTTPBearer(auto_error=False, description="A named API token, or an OpenID Connect access token (JWT)")
AUDIT_STATE = "audit"  # request.state key: the fields of this request's audit line
AUDIT_SKIP = "audit_skip"  # request.state key: true when this request writes no audit line (a flood's repeats)


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway


def note(request: Request, **fields: Any) -> None:
    """Add fields to this request's audit line (producer.gateway.audit.AuditEvent's names)."""
    current = getattr(request.state, AUDIT_STATE, None) or {}
    current.update({key: value for key, value in fields.items() if value not in (None, "")})
    setattr(request.state, AUDIT_STATE, current)


def unaudited(request: Request) -> None:
    """This request writes no audit line: a refusal its window's audit line already stands for."""
    setattr(request.state, AUDIT_SKIP, True)


def owned(request: Request, identity: Identity, kind: str, resource_id: str, lookup: Callable[[str], Any]) -> Any:
    """The job or session `resource_id` if the identity may see it (producer.gateway.access), else a 404 as if it
    did not exist; the audit line names it and its owner."""
    note(request, resource=kind, resource_id=resource_id)
    try:
        resource = lookup(resource_id)
    except KeyError:
        resource = None
    if resource is None or not can_see(identity, resource):
        raise HTTPException(404, f"no {kind} {resource_id}")
    note(request, owner=resource.owner)
    return resource


def too_many(error: LimitExceeded) -> HTTPException:
    return HTTPException(429, error.detail, headers={"Retry-After": str(error.retry_after)})


class Caller:
    """Depends(Caller("read")) -> the Identity of an authenticated caller holding that scope."""

    def __init__(self, scope: str):
        self.scope = scope

    def __call__(
        self, request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
    ) -> Identity:
        gateway = gateway_of(request)
        presented = credentials.credentials if credentials else None
        address = request.client.host if request.client else ""
        try:
            gateway.failed_auth.admit(address, presented)
        except AddressLimited as limited:
            if limited.audit:
                note(request, detail=f"{limited.detail}; {limited.refused} refused since the last such line")
            else:
                unaudited(request)
            raise too_many(limited) from None
        try:
            identity = gateway.auth.identify(presented)
        except AuthError as error:
            gateway.failed_auth.failed(address, presented)
            note(request, detail=str(error))
            raise HTTPException(401, str(error), headers={"WWW-Authenticate": "Bearer"}) from None
        gateway.failed_auth.succeeded(presented or "")
        note(request, actor=identity.name, via=identity.via)
        try:
            require_scope(identity, self.scope)
        except Forbidden as error:
            raise HTTPException(403, str(error)) from None
        try:
            gateway.limits.request(identity)
        except LimitExceeded as error:
            raise too_many(error) from None
        return identity


# The parameter types of guarded routes: `identity: Reader` means "an authenticated caller with the read scope".
Submitter = Annotated[Identity, Depends(Caller(SUBMIT))]
Reader = Annotated[Identity, Depends(Caller(READ))]
Admin = Annotated[Identity, Depends(Caller(ADMIN))]
