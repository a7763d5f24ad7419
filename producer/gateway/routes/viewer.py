"""The viewer's routes (issue 25; producer.gateway.viewer holds the proxy and says what is where):

    GET /viewer                                   the page (503 if ops/setup.sh did not build it)
    GET /viewer/assets/{name}                     its script, style, decode worker and codecs
    GET /v1/viewer/servers                        the DICOMweb roots this service may use, by index (read scope)
    GET /v1/viewer/structures                     known structures' names and colours for a label (read scope)
    GET /v1/viewer/dicomweb/{server}/studies[...]  QIDO-RS, WADO-RS metadata and frames of a root (read scope)

They are the page's, not part of the public API: they stay out of the OpenAPI document (and so out of its fuzzing).
The page and its assets carry the viewer's own Content-Security-Policy (producer.gateway.viewer).
"""

from __future__ import annotations

import json
import threading

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from producer.formats.structures import KNOWN
from producer.gateway import viewer
from producer.gateway.caller import Reader, gateway_of, note

router = APIRouter(include_in_schema=False)
_proxies_lock = threading.Lock()


def _note(request: Request, server: int, study: str = "", series: str = "") -> None:
    """The audit line says which server, study and series the page read (the middleware writes it)."""
    roots = proxy_of(request).roots
    source = roots[server] if 0 <= server < len(roots) else ""
    note(request, resource="viewer", source=source, study_uid=study, series_uid=series)


def proxy_of(request: Request) -> viewer.DicomwebProxy:
    """The app's one proxy (its pooled connections), made on first use from the gateway's server directory."""
    state = request.app.state
    with _proxies_lock:
        if getattr(state, "viewer_proxy", None) is None:
            state.viewer_proxy = viewer.DicomwebProxy(gateway_of(request).servers)
        return state.viewer_proxy


@router.get("/viewer")
def viewer_page():
    index = viewer.BUNDLE / "index.html"
    if not index.is_file():
        return HTMLResponse(viewer.NOT_BUILT.format(where=f"no {viewer.BUNDLE.name}/index.html"), status_code=503)
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": viewer.CONTENT_SECURITY_POLICY}
    return FileResponse(index, media_type="text/html", headers=headers)


@router.get("/viewer/assets/{name:path}")
def viewer_asset(name: str):
    assets = (viewer.BUNDLE / "assets").resolve()
    path = (assets / name).resolve()
    if not path.is_relative_to(assets) or not path.is_file():
        raise HTTPException(404, "no such viewer asset")
    media_type = viewer.MEDIA_TYPES.get(path.suffix)
    if media_type is None and path.name.endswith("wasm"):  # the codecs' files are named decodewasm, wasm
        media_type = "application/wasm"
    # the policy goes with the assets too: a worker runs under the policy of its own script's response
    headers = {"Content-Security-Policy": viewer.CONTENT_SECURITY_POLICY}
    return FileResponse(path, media_type=media_type or "application/octet-stream", headers=headers)


@router.get("/v1/viewer/servers")
def list_servers(request: Request, identity: Reader):
    return [{"id": index, "root": root} for index, root in enumerate(proxy_of(request).roots)]


@router.get("/v1/viewer/structures")
def list_structures(identity: Reader):
    return [{"name": known.words[0], "rgb": list(known.structure.rgb)} for known in KNOWN]


@router.get("/v1/viewer/dicomweb/{server}/studies")
def search_studies(request: Request, identity: Reader, server: int):
    _note(request, server)
    return proxy_of(request).get(server, "studies", "application/dicom+json", viewer.qido_params(request))


@router.get("/v1/viewer/dicomweb/{server}/studies/{study}/series")
def search_series(
    request: Request, identity: Reader, server: int, study: str = PathParam(pattern=viewer.UID, max_length=64)
):
    _note(request, server, study)
    path = f"studies/{study}/series"
    return proxy_of(request).get(server, path, "application/dicom+json", viewer.qido_params(request))


@router.get("/v1/viewer/dicomweb/{server}/studies/{study}/series/{series}/metadata")
def series_metadata(
    request: Request,
    identity: Reader,
    server: int,
    study: str = PathParam(pattern=viewer.UID, max_length=64),
    series: str = PathParam(pattern=viewer.UID, max_length=64),
):
    _note(request, server, study, series)
    response = proxy_of(request).get(server, f"studies/{study}/series/{series}/metadata", "application/dicom+json")
    if isinstance(response, JSONResponse):  # 204: nothing there
        return response
    try:
        instances = json.loads(response.body)
    except ValueError:
        raise HTTPException(502, "the DICOMweb server's metadata is not JSON") from None
    return JSONResponse(viewer.without_bulk_data(instances), media_type="application/dicom+json")


@router.get("/v1/viewer/dicomweb/{server}/studies/{study}/series/{series}/instances/{sop}/frames/{frames}")
def frames(
    request: Request,
    identity: Reader,
    server: int,
    study: str = PathParam(pattern=viewer.UID, max_length=64),
    series: str = PathParam(pattern=viewer.UID, max_length=64),
    sop: str = PathParam(pattern=viewer.UID, max_length=64),
    frames: str = PathParam(pattern=viewer.FRAMES),
):
    _note(request, server, study, series)
    path = f"studies/{study}/series/{series}/instances/{sop}/frames/{frames}"
    return proxy_of(request).get(server, path, viewer.frame_accept(request))
