"""The pages for people: the jobs page (/), the API docs (/docs) and their assets, all served by this service (the
Content-Security-Policy of producer.gateway.middleware allows nothing else). They hold no patient or job data and
need no credential: the page's script asks for one."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from producer.gateway.page import DOCS, DOCS_JS, PAGE, PAGE_CSS, PAGE_JS

router = APIRouter(include_in_schema=False)


@router.get("/")
def page() -> HTMLResponse:
    return HTMLResponse(PAGE)


@router.get("/docs")
def docs() -> HTMLResponse:
    return HTMLResponse(DOCS)


@router.get("/static/page.js")
def page_js() -> Response:
    return Response(PAGE_JS, media_type="text/javascript")


@router.get("/static/page.css")
def page_css() -> Response:
    return Response(PAGE_CSS, media_type="text/css")


@router.get("/static/docs.js")
def docs_js() -> Response:
    return Response(DOCS_JS, media_type="text/javascript")
