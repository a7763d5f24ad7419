"""/v1/sessions: interactive segmentation (producer.sessions) over HTTP.

    POST   /v1/sessions                          201 a session of a DICOMweb series (JSON) or uploaded files
    GET    /v1/sessions                          the caller's open sessions (an admin: everyone's)
    GET    /v1/sessions/{id}                     shape, spacing, modality, labels
    POST   /v1/sessions/{id}/interactions        a box or a click on a named label -> what changed (RLE per slice)
    POST   /v1/sessions/{id}/undo | /redo        one step back or forward on a label
    GET    /v1/sessions/{id}/labels/{n}/mask?z=  one slice of a label (RLE)
    PATCH  /v1/sessions/{id}/labels/{n}          a label's display colour {"colour": [r, g, b]} (SEG, RTSTRUCT)
    GET    /v1/sessions/{id}/slices/{z}.png      the 8-bit slice the engine sees
    GET    /v1/sessions/{id}/result?format=      npz | nifti | seg
    POST   /v1/sessions/{id}/store               the SEG (and RTSTRUCT) into the source study (STOW-RS)
    DELETE /v1/sessions/{id}                     close it and drop its data

A session belongs to its creator, as a job does (others get 404; an admin sees all); its DICOMweb root must be one
the site configured. Bounds (sessions, bytes, idle time) are the gateway's SessionLimits (429 past them)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydicom import dcmread
from starlette.datastructures import UploadFile

from producer.discovery import discover
from producer.formats.base import StudySource
from producer.formats.registry import format_of
from producer.gateway.access import owner_filter
from producer.gateway.caller import Reader, Submitter, gateway_of, note, owned, too_many
from producer.gateway.dicomweb import DicomwebError
from producer.gateway.identity import Identity
from producer.gateway.limits import LimitExceeded
from producer.gateway.schemas import GUARDED, UID_PATTERN, problems
from producer.gateway.uploads import MEDIA_TYPES, files_part, save_uploads
from producer.sessions import Session, SessionLimit, SessionUnavailable, new_session_id, rle
from worker.contract.study import StudyError

SESSION_ID_PATTERN = r"^[0-9a-f]{32}$"
SessionId = Annotated[str, PathParam(pattern=SESSION_ID_PATTERN, description="32 hex digits")]
router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


class SeriesRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = Field(min_length=1, description="a DICOMweb root the service is configured for")
    study: str = Field(pattern=UID_PATTERN, max_length=64, description="StudyInstanceUID")
    series: str = Field(pattern=UID_PATTERN, max_length=64, description="SeriesInstanceUID")


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dicomweb: SeriesRef
    modality: str | None = Field(None, max_length=32, description="overrides the series' Modality tag")


class ClickIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    point: list[float] = Field(min_length=2, max_length=3, description="[x, y, z] voxel ([x, y] on a 2D image)")
    positive: bool = Field(True, description="foreground (true) or background (false)")


class Interaction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(min_length=1, max_length=64, pattern=r"\S", description="the label's name")
    box: list[float] | None = Field(
        None, min_length=4, max_length=6, description="[x0, y0, z0, x1, y1, z1] (3D) or [x0, y0, x1, y1], inclusive"
    )
    click: ClickIn | None = None


class LabelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(min_length=1, max_length=64, pattern=r"\S")


Channel = Annotated[int, Field(strict=True, ge=0, le=255)]


class LabelUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    colour: list[Channel] = Field(
        min_length=3,
        max_length=3,
        description="[red, green, blue], 0-255: the label's display colour in the viewer, the SEG "
        "(RecommendedDisplayCIELabValue) and the RTSTRUCT (ROIDisplayColor)",
    )


class LabelDescription(BaseModel):
    name: str
    number: int
    box: list[float] | None
    clicks: list[dict[str, Any]]
    volume_ml: float | None
    colour: list[int]
    can_undo: bool
    can_redo: bool


class StoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    formats: list[Literal["seg", "rtstruct"]] = Field(default_factory=lambda: ["seg"], min_length=1, max_length=2)


class Change(BaseModel):
    label: str
    number: int
    changed: list[int]
    masks: dict[str, list[int]] = Field(description="slice -> run lengths of the label's mask, off/on from off")
    seconds: float
    worker: str = Field(description='who computed it: a fleet worker\'s node name, or "gateway"')
    volume_ml: float | None
    colour: list[int]


def _session(request: Request, identity: Identity, session_id: str) -> Session:
    session = owned(request, identity, "session", session_id, gateway_of(request).sessions.get)
    note(request, source=session.origin.get("dicomweb", "upload"))
    return session


def _document(session: Session) -> dict[str, Any]:
    image = session.study.image
    shape = list(image.shape) if session.is_3d else list(image.shape[:2])
    reference = session.context.dicom
    return {
        "id": session.id,
        "shape": shape,
        "spacing": list(session.study.spacing) if session.study.spacing else None,
        "modality": session.study.modality,
        "labels": [session.describe(label) for label in session.labels],
        "slice_uids": (
            [str(ds.SOPInstanceUID) for ds in reference.slice_datasets()]
            if reference is not None and session.is_3d and not reference.is_multiframe
            else None
        ),
        "source": session.origin,
    }


def _unprocessable(error: Exception) -> HTTPException:
    if isinstance(error, ValidationError):
        return HTTPException(422, error.errors(include_url=False, include_context=False, include_input=False))
    return HTTPException(422, str(error))


async def _body(request: Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(await request.json())
    except ValueError as error:
        raise _unprocessable(error) from None


def _source_of(folder: Path) -> StudySource:
    """The one study in an upload or a retrieved series: what discovery finds, or one npz of any name."""
    npz = sorted(folder.glob("*.npz"))
    if len(npz) == 1 and len(list(folder.iterdir())) == 1:
        return StudySource(npz[0].stem, npz[0], "npz")
    found = discover(folder)
    if len(found.studies) != 1:
        names = ", ".join(s.name for s in found.studies) or "none"
        left = "; ".join(f"{note.path.name}: {note.reason}" for note in found.skipped[:3])
        raise HTTPException(
            422, f"a session opens exactly one series or image; the input holds {names}{f' ({left})' if left else ''}"
        )
    return found.studies[0]


def _open(request: Request, identity: Identity, session_id: str, modality: str | None, origin: dict) -> Session:
    gateway = gateway_of(request)
    source = _source_of(gateway.session_dir(session_id) / "input")
    try:
        study, context = format_of(source).load_image(source, modality)
        session = Session(study, context, source, gateway.session_engine, identity.name, origin, session_id)
        return gateway.sessions.add(session)
    except StudyError as error:
        raise HTTPException(422, str(error)) from None
    except SessionLimit as error:
        raise HTTPException(429, str(error), headers={"Retry-After": "60"}) from None
    except SessionUnavailable as error:
        raise _unavailable(error) from None


def _unavailable(error: SessionUnavailable) -> HTTPException:
    return HTTPException(503, str(error), headers={"Retry-After": "10"})


UPLOAD_SCHEMA = {
    "type": "object",
    "required": ["files"],
    "properties": {
        "files": files_part("DICOM files of one series, or one NIfTI, or one npz holding imgs (and spacing)"),
        "modality": {"type": "string", "maxLength": 32},
    },
}


@router.post(
    "",
    status_code=201,
    summary="Open a session: a DICOMweb series (JSON) or uploaded files (multipart); no prompts needed",
    responses=problems(*GUARDED, 400, 413, 415, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/SessionRequest"}},
                "multipart/form-data": {"schema": UPLOAD_SCHEMA},
            },
        }
    },
)
async def create_session(request: Request, identity: Submitter):
    gateway = gateway_of(request)
    note(request, resource="session")
    try:
        gateway.limits.start(identity, "session", len(gateway.sessions.owned_by(identity.name)))
        gateway.sessions.check_room()
    except LimitExceeded as error:
        raise too_many(error) from None
    except SessionLimit as error:
        raise HTTPException(429, str(error), headers={"Retry-After": "60"}) from None
    session_id = new_session_id()
    folder = gateway.session_dir(session_id) / "input"
    opened = False
    try:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            body = await _body(request, SessionRequest)
            try:
                root = gateway.servers.allowed_root(body.dicomweb.root)
            except DicomwebError as error:
                raise HTTPException(422, f"dicomweb: {error}") from None
            note(request, source=root, study_uid=body.dicomweb.study, series_uid=body.dicomweb.series)
            try:
                with gateway.servers.open(root) as server:
                    server.fetch_series(body.dicomweb.study, body.dicomweb.series, folder)
            except DicomwebError as error:
                raise HTTPException(422, str(error)) from None
            origin = {"dicomweb": root, "study": body.dicomweb.study, "series": body.dicomweb.series}
            session = _open(request, identity, session_id, body.modality, origin)
        elif content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=100_000, max_fields=10)
            files = [value for value in form.getlist("files") if isinstance(value, UploadFile)]
            if not files:
                raise HTTPException(422, 'multipart upload: give the image as one or more "files" parts')
            note(request, source="upload")
            await save_uploads(folder, files, gateway.config.max_upload_mb << 20)
            modality = form.get("modality")
            session = _open(request, identity, session_id, modality if isinstance(modality, str) else None, {})
        else:
            raise HTTPException(415, "send application/json (a DICOMweb series) or multipart/form-data (files)")
        opened = True
    finally:
        if not opened:  # nothing half-kept: a session that did not open leaves no files
            shutil.rmtree(gateway.session_dir(session_id), ignore_errors=True)
    note(request, resource_id=session.id, owner=session.owner)
    return JSONResponse(_document(session), status_code=201, headers={"Location": f"/v1/sessions/{session.id}"})


@router.get("", summary="Open sessions (the caller's; an admin: everyone's)", responses=problems(*GUARDED))
def list_sessions(request: Request, identity: Reader) -> list[dict[str, Any]]:
    note(request, resource="session")
    return [_document(s) for s in gateway_of(request).sessions.owned_by(owner_filter(identity))]


@router.get(
    "/{session_id}", summary="A session: its image's shape and spacing, its labels", responses=problems(*GUARDED, 404)
)
def get_session(session_id: SessionId, request: Request, identity: Reader) -> dict[str, Any]:
    return _document(_session(request, identity, session_id))


@router.post(
    "/{session_id}/interactions",
    response_model=Change,
    summary="A box (restarts the label) or a click (refines it) on a named label; new names make new labels",
    responses=problems(*GUARDED, 400, 404, 503),
)
def interact(session_id: SessionId, body: Interaction, request: Request, identity: Submitter) -> dict[str, Any]:
    session = _session(request, identity, session_id)
    if (body.box is None) == (body.click is None):
        raise HTTPException(422, "give a box or a click, one of them")
    try:
        if body.box is not None:
            change = session.interact(body.label, box=body.box)
        else:
            assert body.click is not None
            change = session.interact(body.label, point=body.click.point, positive=body.click.positive)
    except StudyError as error:
        raise HTTPException(422, str(error)) from None
    except SessionUnavailable as error:  # the session stays as it was: the interaction can be sent again
        raise _unavailable(error) from None
    return session.answer(change)


def _step(request: Request, identity: Identity, session_id: str, body: LabelRef, forward: bool) -> dict[str, Any]:
    session = _session(request, identity, session_id)
    try:
        change = session.redo(body.label) if forward else session.undo(body.label)
    except KeyError as error:
        raise HTTPException(404, str(error.args[0])) from None
    except StudyError as error:
        raise HTTPException(409, str(error)) from None
    return session.answer(change)


@router.post(
    "/{session_id}/undo",
    response_model=Change,
    summary="Undo a label's last interaction",
    responses=problems(*GUARDED, 400, 404, 409),
)
def undo(session_id: SessionId, body: LabelRef, request: Request, identity: Submitter) -> dict[str, Any]:
    return _step(request, identity, session_id, body, forward=False)


@router.post(
    "/{session_id}/redo",
    response_model=Change,
    summary="Redo a label's undone interaction",
    responses=problems(*GUARDED, 400, 404, 409),
)
def redo(session_id: SessionId, body: LabelRef, request: Request, identity: Submitter) -> dict[str, Any]:
    return _step(request, identity, session_id, body, forward=True)


@router.get(
    "/{session_id}/labels/{number}/mask", summary="One slice of a label's mask (RLE)", responses=problems(*GUARDED, 404)
)
def label_mask(
    session_id: SessionId,
    request: Request,
    identity: Reader,
    number: int = PathParam(ge=1, le=255),
    z: int = Query(0, ge=0),
) -> dict[str, Any]:
    session = _session(request, identity, session_id)
    if number > len(session.labels) or z >= session.shape[0]:
        raise HTTPException(404, f"no label {number} or slice {z} in session {session_id}")
    return {"z": z, "rle": rle(session.labels[number - 1].mask[z])}


@router.patch(
    "/{session_id}/labels/{number}",
    response_model=LabelDescription,
    summary="Set a label's display colour (the viewer's overlay, the SEG's and the RTSTRUCT's colour of it)",
    responses=problems(*GUARDED, 400, 404),
)
def update_label(
    session_id: SessionId,
    body: LabelUpdate,
    request: Request,
    identity: Submitter,
    number: int = PathParam(ge=1, le=255),
) -> dict[str, Any]:
    session = _session(request, identity, session_id)
    if number > len(session.labels):
        raise HTTPException(404, f"no label {number} in session {session_id}")
    try:
        label = session.set_colour(session.labels[number - 1].name, body.colour)
    except StudyError as error:
        raise HTTPException(422, str(error)) from None
    return session.describe(label)


@router.get(
    "/{session_id}/slices/{z}.png",
    summary="The 8-bit slice the engine sees",
    responses={200: {"content": {"image/png": {}}}, **problems(*GUARDED, 404)},
)
def slice_png(session_id: SessionId, request: Request, identity: Reader, z: int = PathParam(ge=0)) -> Response:
    from PIL import Image

    session = _session(request, identity, session_id)
    if z >= session.shape[0]:
        raise HTTPException(404, f"session {session_id} has {session.shape[0]} slices")
    plane = session.study.image[z] if session.is_3d else session.study.image
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(plane)).save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png")


@router.get(
    "/{session_id}/result",
    summary="The session's label map: npz (segs), NIfTI or DICOM SEG",
    responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}}, **problems(*GUARDED, 404, 409)},
)
def result(session_id: SessionId, request: Request, identity: Reader, format: Literal["seg", "nifti", "npz"] = "npz"):
    session = _session(request, identity, session_id)
    folder = gateway_of(request).session_dir(session.id) / "result"
    shutil.rmtree(folder, ignore_errors=True)
    try:
        with session.lock:
            files = session.write_results(folder)
    except StudyError as error:
        raise HTTPException(409, str(error)) from None
    if format not in files:
        raise HTTPException(
            404, f"this session's image gives no {format} result (it gives: {', '.join(sorted(files))})"
        )
    return FileResponse(
        files[format], media_type=MEDIA_TYPES[format], filename=f"{session.study.study_id}-{files[format].name}"
    )


@router.post(
    "/{session_id}/store",
    summary="Store the SEG (and RTSTRUCT) into the source study on its DICOMweb server",
    responses=problems(*GUARDED, 404, 409, 502),
)
async def store(session_id: SessionId, request: Request, identity: Submitter) -> dict[str, Any]:
    gateway = gateway_of(request)
    session = _session(request, identity, session_id)
    body = await _body(request, StoreRequest) if await request.body() else StoreRequest()
    root = session.origin.get("dicomweb")
    if not root:
        raise HTTPException(409, "only a session opened from a DICOMweb series can store into its study")
    folder = gateway.session_dir(session.id) / "store"
    shutil.rmtree(folder, ignore_errors=True)
    try:
        with session.lock:
            files = session.write_results(folder, tuple(body.formats))
    except StudyError as error:
        raise HTTPException(409, str(error)) from None
    missing = [kind for kind in body.formats if kind not in files]
    if missing:
        raise HTTPException(409, f"no {', '.join(missing)} could be built for this image")
    stored = []
    try:
        with gateway.servers.open(root) as server:
            for kind in body.formats:
                instance = server.store_instance(dcmread(files[kind]))
                stored.append(
                    {
                        "kind": kind,
                        "study_instance_uid": instance.study_uid,
                        "series_instance_uid": instance.series_uid,
                        "sop_instance_uid": instance.sop_uid,
                        "already_present": instance.already_present,
                    }
                )
                note(request, stored_to=server.root, stored_uid=instance.sop_uid)
    except DicomwebError as error:
        raise HTTPException(502, str(error)) from None
    return {"stored": stored}


@router.delete(
    "/{session_id}", status_code=204, summary="Close a session and drop its data", responses=problems(*GUARDED, 404)
)
def delete_session(session_id: SessionId, request: Request, identity: Submitter) -> Response:
    session = _session(request, identity, session_id)
    gateway_of(request).sessions.close(session.id)
    return Response(status_code=204)
