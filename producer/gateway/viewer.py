"""The viewer (issue 25): where its built page lies and the read-only DICOMweb proxy behind it; the routes are in
producer.gateway.routes.viewer (/viewer, /viewer/assets/..., /v1/viewer/...).

- `/viewer` serves the bundle `ops/setup.sh` builds with Node.js from `producer/gateway/viewer_web/` into its
  `dist/` folder (out of git). Without a build the route answers 503 with a page that says so; jobs are unaffected.
  The page and its assets carry no patient data and need no token, like the jobs page.
- `/v1/viewer/servers` lists the DICOMweb roots this service may use (ServerDirectory.allowed), by index.
  The browser names a server by that index, never by URL, so the proxy reaches only configured roots, with the
  service's own credentials; nothing the browser sends becomes a host, a path outside the DICOMweb resources
  below, or a header other than a checked Accept.
- The proxy forwards QIDO-RS searches (studies, a study's series) with an allow-list of query keys, and WADO-RS
  series metadata and frames. Metadata loses its BulkDataURIs: they name the PACS, which the page never calls.
- `/v1/viewer/structures`: the known structures' names and colours (producer.formats.structures), the list the
  page offers for a label's name.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, Response

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
        self.roots = sorted(servers.allowed)
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


def without_bulk_data(instances: Any) -> Any:
    if not isinstance(instances, list):
        raise HTTPException(502, "the DICOMweb server's metadata is not a list of instances")
    for instance in instances:
        if isinstance(instance, dict):
            for tag in [
                tag for tag, element in instance.items() if isinstance(element, dict) and "BulkDataURI" in element
            ]:
                del instance[tag]
    return instances


def qido_params(request: Request) -> dict[str, str]:
    params = {}
    for key, value in request.query_params.items():
        if key not in QIDO_KEYS:
            raise HTTPException(422, f"query key {key[:40]!r} is not allowed (allowed: {', '.join(sorted(QIDO_KEYS))})")
        if len(value) > MAX_QIDO_VALUE or any(ord(c) < 32 for c in value):
            raise HTTPException(422, f"query value for {key} is too long or has control characters")
        params[key] = value
    return params


def frame_accept(request: Request) -> str:
    accept = request.headers.get("accept", "")
    return accept if accept.startswith("multipart/related") and len(accept) < 200 else FRAME_ACCEPT_DEFAULT
