"""The gateway's HTTP API (FastAPI), one router per resource (producer.gateway.routes):

    POST   /v1/jobs                      202 {"id", "status_url"}: JSON (DICOMweb source) or multipart (upload)
    GET    /v1/jobs                      the caller's recent jobs, newest first (an admin's: everyone's)
    GET    /v1/jobs/{id}                 state, error, progress, metrics, stored SEG
    DELETE /v1/jobs/{id}                 a finished job and all its data
    GET    /v1/jobs/{id}/result?format=  seg | nifti | npz bytes
    GET    /v1/jobs/{id}/thumbnail.png   the mask over the study's image
    GET    /v1/audit                     the audit trail (admins)
    GET    /v1/health                    no credential
    GET    /metrics                      Prometheus (admins)
    GET    /  and  /docs                 the jobs page and the API docs, every asset served from here
    GET    /viewer, /v1/viewer/...        the viewer and its read-only DICOMweb proxy (producer.gateway.routes.viewer)

Every /v1 route but health and /metrics need `Authorization: Bearer <credential>` (producer.gateway.caller): a named
token or an OpenID Connect JWT, with the route's scope. The page shell, the docs, the OpenAPI schema and the static
assets carry no patient or job data and are served without one; the page asks for one (or reads it from the URL
fragment `#token=...`, which browsers never send to a server). Every request is an audit line and carries the
security headers (producer.gateway.middleware).
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from producer.gateway.config import GatewayConfig
from producer.gateway.middleware import AuditTrail, SecurityHeaders
from producer.gateway.openapi import install_schema
from producer.gateway.routes import audit, jobs, pages, service, sessions, viewer
from producer.gateway.service import Gateway
from worker.contract.version import PACKAGE_VERSION as __version__


def create_app(config: GatewayConfig, segmenter=None) -> FastAPI:
    gateway = Gateway(config, segmenter)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        gateway.start()
        yield
        gateway.stop()

    app = FastAPI(
        title="litemedsam-fleet gateway",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
        description="Box-prompted segmentation of PACS series; DICOM SEG back by STOW-RS to the configured DICOMweb "
        "servers only. Every /v1 route but /v1/health needs a bearer credential with the route's scope "
        "(submit, read, admin); a job is seen by its creator and admins only.",
    )
    app.state.gateway = gateway
    for router in (jobs.router, sessions.router, audit.router, service.router, pages.router, viewer.router):
        app.include_router(router)
    import swagger_ui_bundle

    app.mount("/static/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")
    app.add_middleware(AuditTrail, audit=gateway.audit)
    app.add_middleware(SecurityHeaders)
    install_schema(app, gateway.servers.allowed)

    @app.exception_handler(StarletteHTTPException)
    async def method_not_allowed(request: Request, error: StarletteHTTPException):
        """405's Allow names every method of the path (Starlette's names only the first route's)."""
        if error.status_code == 405:
            methods: set[str] = set()
            for route in app.router.routes:
                if route.matches(request.scope)[0] != Match.NONE:
                    methods |= set(getattr(route, "methods", None) or ())
            error.headers = {**(error.headers or {}), "Allow": ", ".join(sorted(methods))}
        return await http_exception_handler(request, error)

    return app
