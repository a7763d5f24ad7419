"""Two ASGI middlewares around every route:

- SecurityHeaders: a Content-Security-Policy allowing only this service (no inline script or style, no framing),
  X-Frame-Options DENY, X-Content-Type-Options nosniff, no referrer; `Cache-Control: no-store` on everything but
  the static assets (job data, results and thumbnails are never kept by a browser or proxy). A route that sets a
  policy of its own keeps it instead (the viewer: the same plus 'wasm-unsafe-eval' for its image decoders).
- AuditTrail: one audit line per request (producer.gateway.audit) with its route, status and client address, the
  identity producer.gateway.caller found, and what the route noted (job id, study, source, destination); none for
  a request the caller marked unaudited (a flood's refusals after the first of their window).
"""

from __future__ import annotations

from typing import Any

from producer.gateway.audit import AuditLog, now_iso
from producer.gateway.caller import AUDIT_SKIP, AUDIT_STATE

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
CACHEABLE_PREFIXES = ("/static/", "/viewer/assets/")
CSP_HEADER = b"content-security-policy"


class SecurityHeaders:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cacheable = scope["path"].startswith(CACHEABLE_PREFIXES)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control" or cacheable]
                own_policy = any(k.lower() == CSP_HEADER for k, _ in headers)
                headers += [(k, v) for k, v in HEADERS if not (own_policy and k == CSP_HEADER)]
                if not cacheable:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class AuditTrail:
    def __init__(self, app, audit: AuditLog):
        self.app, self.audit = app, audit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status, started = {"code": 500}, now_iso()  # the line is written at the end, stamped with the start

        async def send_noting_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            self._write(scope, status["code"], started)

    def _write(self, scope: dict[str, Any], status: int, started: str) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or getattr(route, "path_format", None) or scope["path"][:200]
        state = scope.get("state") or {}
        if state.get(AUDIT_SKIP):
            return
        fields = dict(state.get(AUDIT_STATE) or {})
        fields.setdefault("actor", "anonymous")
        client = scope.get("client")
        self.audit.write(
            time=started,
            action=f"{scope['method']} {path}",
            outcome=str(status),
            client=client[0] if client else "",
            **fields,
        )
