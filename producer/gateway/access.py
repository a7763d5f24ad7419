"""Who may see and change what: a resource (a job; later a session) belongs to the identity that made it, and only
that identity or an admin sees it; each route needs a scope. The one place these rules are decided."""

from __future__ import annotations

from typing import Protocol

from producer.gateway.identity import Identity


class Owned(Protocol):
    id: str
    owner: str


class Forbidden(Exception):
    """The identity lacks the route's scope (403)."""


def require_scope(identity: Identity, scope: str) -> None:
    if scope not in identity.scopes and not identity.is_admin:
        raise Forbidden(f"{identity.name} lacks the {scope!r} scope this needs")


def can_see(identity: Identity, resource: Owned) -> bool:
    return identity.is_admin or (bool(resource.owner) and resource.owner == identity.name)


def owner_filter(identity: Identity) -> str | None:
    """Whose resources a listing shows: everyone's for an admin (None), else the identity's own."""
    return None if identity.is_admin else identity.name
