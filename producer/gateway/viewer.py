"""The viewer (issue 25): its built page under /viewer and a read-only DICOMweb proxy for it under /v1/viewer.

- `/viewer` serves the bundle `ops/setup.sh` builds with Node.js from `producer/gateway/viewer_web/` into its
  `dist/` folder (out of git). Without a build the route answers 503 with a page that says so; jobs are unaffected.
  The page and its assets carry no patient data and need no token, like the jobs page.
- `/v1/viewer/servers` lists the DICOMweb roots this service is configured for (its credentials file), by index.
  The browser names a server by that index, never by URL, so the proxy reaches only configured roots, with the
  service's own credentials; nothing the browser sends becomes a host, a path outside the DICOMweb resources
  below, or a header other than a checked Accept.
- The proxy forwards QIDO-RS searches (studies, a study's series) with an allow-list of query keys, and WADO-RS
  series metadata and frames. Metadata loses its BulkDataURIs: they name the PACS, which the page never calls.
- `/v1/viewer/structures`: the known structures' names and colours (producer.formats.structures), the list the
  page offers for a label's name.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from producer.formats.structures import KNOWN
from producer.gateway.dicomweb import DicomwebError, DicomwebServer, ServerDirectory

BUNDLE = Path(__file__).resolve().parent / "viewer_web" / "dist"
UID = r"^[0-9]+(\.[0-9]+)*$"
FRAMES = r"^[0-9]{1,6}(,[0-9]{1,6}){0,63}$"
QIDO_KEYS = frozenset(
    {
        "PatientName",
        "PatientID",
        "StudyDate",
        "StudyInstanceUID",
        "AccessionNumber",
        "ModalitiesInStudy",
        "StudyDescription",
        "Modality",
        "SeriesInstanceUID",
        "SeriesNumber",
        "limit",
        "offset",
        "fuzzymatching",
    }
)
MAX_QIDO_VALUE = 128
FRAME_ACCEPT_DEFAULT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
# The page's own policy, on the page and its assets (the decode worker runs under its script's policy): everything
# from this service; 'wasm-unsafe-eval' lets the image loader's codecs compile their WebAssembly in that worker
# (JPEG, JPEG-LS, JPEG 2000, HTJ2K); no inline script or style, no eval.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' blob: data:; "
    "worker-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".wasm": "application/wasm", ".json": "application/json"}

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>viewer not built</title></head>
<body><h1>The viewer was not built</h1>
<p>This service has no viewer bundle ({where}). Run <code>ops/setup.sh</code> on a machine with Node.js 20 and npm
to build it. Jobs, their page (<a href="/">/</a>) and the API work without it.</p></body></html>
"""


class DicomwebProxy:
    """One DicomwebServer per configured root, opened on first use and shared (requests' pooled sessions)."""

    def __init__(self, servers: ServerDirectory):
        self.servers = servers
        self.roots = sorted(servers.credentials)
        self._open: dict[int, DicomwebServer] = {}
        self._lock = threading.Lock()

    def server(self, index: int) -> DicomwebServer:
        if not 0 <= index < len(self.roots):
            raise HTTPException(404, f"no DICOMweb server {index}: this service has {len(self.roots)}")
        with self._lock:
            if index not in self._open:
                self._open[index] = self.servers.open(self.roots[index])
            return self._open[index]

    def get(self, index: int, path: str, accept: str, params: dict[str, str] | None = None) -> Response:
        server = self.server(index)
        try:
            upstream = server.read(path, accept, params)
        except DicomwebError as error:
            raise HTTPException(502, str(error)) from None
        if upstream.status_code == 204:
            return JSONResponse([])
        if upstream.status_code == 404:
            raise HTTPException(404, f"{path} is not on the DICOMweb server {server.root}")
        if upstream.status_code >= 400:
            raise HTTPException(502, f"{path}: the DICOMweb server {server.root} answered HTTP {upstream.status_code}")
        return Response(upstream.content, media_type=upstream.headers.get("content-type", accept))


def _without_bulk_data(instances: Any) -> Any:
    if not isinstance(instances, list):
        raise HTTPException(502, "the DICOMweb server's metadata is not a list of instances")
    for instance in instances:
        if isinstance(instance, dict):
            for tag in [
                tag for tag, element in instance.items() if isinstance(element, dict) and "BulkDataURI" in element
            ]:
                del instance[tag]
    return instances


def _qido_params(request: Request) -> dict[str, str]:
    params = {}
    for key, value in request.query_params.items():
        if key not in QIDO_KEYS:
            raise HTTPException(422, f"query key {key[:40]!r} is not allowed (allowed: {', '.join(sorted(QIDO_KEYS))})")
        if len(value) > MAX_QIDO_VALUE or any(ord(c) < 32 for c in value):
            raise HTTPException(422, f"query value for {key} is too long or has control characters")
        params[key] = value
    return params


def _frame_accept(request: Request) -> str:
    accept = request.headers.get("accept", "")
    return accept if accept.startswith("multipart/related") and len(accept) < 200 else FRAME_ACCEPT_DEFAULT


def viewer_router(servers: ServerDirectory, guard: list[Any], bundle: Path = BUNDLE) -> APIRouter:
    """The viewer's routes; `guard`: the dependencies of every /v1 route (the bearer token)."""
    router = APIRouter()
    proxy = DicomwebProxy(servers)
    assets = (bundle / "assets").resolve()

    @router.get("/viewer", include_in_schema=False)
    def viewer_page():
        index = bundle / "index.html"
        if not index.is_file():
            return HTMLResponse(NOT_BUILT.format(where=f"no {bundle.name}/index.html"), status_code=503)
        headers = {"Cache-Control": "no-cache", "Content-Security-Policy": CONTENT_SECURITY_POLICY}
        return FileResponse(index, media_type="text/html", headers=headers)

    @router.get("/viewer/assets/{name:path}", include_in_schema=False)
    def viewer_asset(name: str):
        path = (assets / name).resolve()
        if not path.is_relative_to(assets) or not path.is_file():
            raise HTTPException(404, "no such viewer asset")
        media_type = MEDIA_TYPES.get(path.suffix)
        if media_type is None and path.name.endswith("wasm"):  # the codecs' files are named decodewasm, wasm
            media_type = "application/wasm"
        # the policy goes with the assets too: a worker runs under the policy of its own script's response
        headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY}
        return FileResponse(path, media_type=media_type or "application/octet-stream", headers=headers)

    @router.get("/v1/viewer/servers", dependencies=guard, tags=["viewer"], summary="The configured DICOMweb roots")
    def list_servers():
        return [{"id": index, "root": root} for index, root in enumerate(proxy.roots)]

    @router.get("/v1/viewer/structures", dependencies=guard, tags=["viewer"], summary="Known structures for labels")
    def list_structures():
        return [{"name": known.words[0], "rgb": list(known.structure.rgb)} for known in KNOWN]

    @router.get("/v1/viewer/dicomweb/{server}/studies", dependencies=guard, tags=["viewer"], summary="QIDO-RS studies")
    def search_studies(request: Request, server: int):
        return proxy.get(server, "studies", "application/dicom+json", _qido_params(request))

    @router.get(
        "/v1/viewer/dicomweb/{server}/studies/{study}/series",
        dependencies=guard,
        tags=["viewer"],
        summary="QIDO-RS a study's series",
    )
    def search_series(request: Request, server: int, study: str = PathParam(pattern=UID, max_length=64)):
        return proxy.get(server, f"studies/{study}/series", "application/dicom+json", _qido_params(request))

    @router.get(
        "/v1/viewer/dicomweb/{server}/studies/{study}/series/{series}/metadata",
        dependencies=guard,
        tags=["viewer"],
        summary="WADO-RS series metadata (without bulk data URIs)",
    )
    def series_metadata(
        server: int,
        study: str = PathParam(pattern=UID, max_length=64),
        series: str = PathParam(pattern=UID, max_length=64),
    ):
        response = proxy.get(server, f"studies/{study}/series/{series}/metadata", "application/dicom+json")
        if isinstance(response, JSONResponse):  # 204: nothing there
            return response
        try:
            instances = json.loads(response.body)
        except ValueError:
            raise HTTPException(502, "the DICOMweb server's metadata is not JSON") from None
        return JSONResponse(_without_bulk_data(instances), media_type="application/dicom+json")

    @router.get(
        "/v1/viewer/dicomweb/{server}/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
        dependencies=guard,
        tags=["viewer"],
        summary="WADO-RS frames (multipart, as the PACS sends them)",
    )
    def frames(
        request: Request,
        server: int,
        study: str = PathParam(pattern=UID, max_length=64),
        series: str = PathParam(pattern=UID, max_length=64),
        sop: str = PathParam(pattern=UID, max_length=64),
        frames: str = PathParam(pattern=FRAMES),
    ):
        path = f"studies/{study}/series/{series}/instances/{sop}/frames/{frames}"
        return proxy.get(server, path, _frame_accept(request))

    return router
