"""/v1/jobs: create (a DICOMweb series as JSON, or uploaded files), list, read, fetch results, delete.

A job belongs to its creator: others get 404 as if it did not exist (an admin sees all). Every DICOMweb root a job
names must be one the site configured (422 naming the rule, before anything is fetched)."""

from __future__ import annotations

import json
import shutil
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from producer.formats.dicom_outputs import DicomSeg, DownloadName
from producer.formats.sidecar import parse_entry
from producer.gateway.access import owner_filter
from producer.gateway.caller import Reader, Submitter, gateway_of, note, owned, too_many
from producer.gateway.dicomweb import DicomwebError
from producer.gateway.identity import Identity
from producer.gateway.jobs import UNFINISHED, Job, new_job_id
from producer.gateway.limits import LimitExceeded
from producer.gateway.schemas import GUARDED, JOB_ID_PATTERN, Accepted, JobDocument, JobRequest, problems
from producer.gateway.uploads import MEDIA_TYPES, files_part, save_uploads
from worker.contract.study import StudyError

JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="32 hex digits")]


router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _job(request: Request, identity: Identity, job_id: str) -> Job:
    job = owned(request, identity, "job", job_id, gateway_of(request).jobs.get)
    note(
        request,
        study_uid=job.source.get("study"),
        series_uid=job.source.get("series"),
        source=job.source.get("dicomweb", "upload"),
    )
    return job


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _check_prompts(prompts: Any) -> None:
    try:
        parse_entry(prompts, "prompts")
    except StudyError as error:
        raise HTTPException(422, str(error)) from None


def _allowed(request: Request, url: str, what: str) -> str:
    try:
        return gateway_of(request).servers.allowed_root(url)
    except DicomwebError as error:
        raise HTTPException(422, f"{what}: {error}") from None


def _check_store(request: Request, store: str | None, source_root: str | None) -> str | None:
    if store in (None, ""):
        return None
    if store == "source":
        if source_root is None:
            raise HTTPException(422, '"store": "source" needs a DICOMweb source; give a DICOMweb root URL or null')
        note(request, stored_to=source_root)
        return store
    root = _allowed(request, store, "store")
    note(request, stored_to=root)
    return root


async def _json_job(request: Request, identity: Identity) -> Job:
    try:
        body = JobRequest.model_validate(await request.json())
    except ValueError as error:  # JSONDecodeError and pydantic's ValidationError
        detail = (
            error.errors(include_url=False, include_context=False, include_input=False)
            if isinstance(error, ValidationError)
            else f"not valid JSON: {error}"
        )
        raise HTTPException(422, detail) from None
    note(request, study_uid=body.source.study, series_uid=body.source.series)
    root = _allowed(request, body.source.dicomweb, "source")
    note(request, source=root)
    _check_prompts(body.prompts)
    store = _check_store(request, body.store, root)
    source = {"dicomweb": root, "study": body.source.study, "series": body.source.series}
    return gateway_of(request).jobs.create(Job(new_job_id(), "dicomweb", identity.name, body.prompts, store, source))


async def _upload_job(request: Request, identity: Identity) -> Job:
    gateway = gateway_of(request)
    form = await request.form(max_files=100_000, max_fields=20)
    files = [value for value in form.getlist("files") if isinstance(value, UploadFile)]
    if not files:
        raise HTTPException(422, 'multipart upload: give the study as one or more "files" parts')
    note(request, source="upload")
    prompts = None
    raw = form.get("prompts")
    if raw is not None:
        text = (await raw.read()).decode("utf-8", "replace") if isinstance(raw, UploadFile) else str(raw)
        try:
            prompts = json.loads(text)
        except json.JSONDecodeError as error:
            raise HTTPException(422, f'the "prompts" part is not valid JSON ({error})') from None
        _check_prompts(prompts)
    store_field = form.get("store")
    store = _check_store(request, store_field if isinstance(store_field, str) else None, None)
    job = gateway.jobs.create(Job(new_job_id(), "upload", identity.name, prompts, store, {"files": len(files)}))
    try:
        await save_uploads(gateway.jobs.input_dir(job.id), files, gateway.config.max_upload_mb << 20)
    except BaseException:
        shutil.rmtree(gateway.jobs.folder(job.id), ignore_errors=True)
        raise
    return job


UPLOAD_SCHEMA = {
    "type": "object",
    "required": ["files"],
    "properties": {
        "files": files_part("DICOM files of one series, or one NIfTI, or one challenge npz"),
        "prompts": {"$ref": "#/components/schemas/Prompts"},
        "store": {"$ref": "#/components/schemas/UploadStore"},
    },
}


@router.post(
    "",
    status_code=202,
    response_model=Accepted,
    summary="Create a job: a DICOMweb series (JSON) or uploaded files (multipart)",
    responses=problems(*GUARDED, 413, 415),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}},
                "multipart/form-data": {
                    "schema": UPLOAD_SCHEMA,
                    "encoding": {"prompts": {"contentType": "application/json"}},
                },
            },
        }
    },
)
async def create_job(request: Request, identity: Submitter):
    gateway = gateway_of(request)
    note(request, resource="job")
    try:
        gateway.limits.start(identity, "job", len(gateway.jobs.unfinished(identity.name)))
    except LimitExceeded as error:
        raise too_many(error) from None
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        job = await _json_job(request, identity)
    elif content_type.startswith("multipart/form-data"):
        job = await _upload_job(request, identity)
    else:
        raise HTTPException(415, "send application/json (a DICOMweb source) or multipart/form-data (files)")
    note(request, resource_id=job.id, owner=job.owner)
    gateway.accept(job)
    status_url = f"{_base(request)}/v1/jobs/{job.id}"
    return JSONResponse({"id": job.id, "status_url": status_url}, status_code=202, headers={"Location": status_url})


@router.get("", summary="Recent jobs, newest first (the caller's; an admin: everyone's)", responses=problems(*GUARDED))
def list_jobs(request: Request, identity: Reader, limit: int = Query(50, ge=1, le=500)) -> list[JobDocument]:
    note(request, resource="job")
    jobs = gateway_of(request).jobs.recent(limit, owner=owner_filter(identity))
    return [JobDocument.model_validate(job.public(_base(request))) for job in jobs]


@router.get("/{job_id}", summary="A job's state and results", responses=problems(*GUARDED, 404))
def get_job(job_id: JobId, request: Request, identity: Reader) -> JobDocument:
    return JobDocument.model_validate(_job(request, identity, job_id).public(_base(request)))


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Delete a finished job and all its data (the audit trail keeps that it existed)",
    responses=problems(*GUARDED, 404, 409),
)
def delete_job(job_id: JobId, request: Request, identity: Submitter) -> Response:
    job = _job(request, identity, job_id)
    if job.state in UNFINISHED:  # a finished job is never started again, so it cannot come back to life
        raise HTTPException(409, f"job {job_id} is {job.state}: delete it once it has ended")
    gateway_of(request).jobs.delete(job_id)
    return Response(status_code=204)


@router.get(
    "/{job_id}/result",
    summary="A finished job's result",
    responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}}, **problems(*GUARDED, 404, 409)},
)
def get_result(
    job_id: JobId,
    request: Request,
    identity: Reader,
    format: DownloadName = DicomSeg.name,
):
    job = _job(request, identity, job_id)
    if job.state != "ok":
        raise HTTPException(409, f"job {job_id} is {job.state}" + (f": {job.error}" if job.error else ""))
    if format not in job.results:
        raise HTTPException(404, f"job {job_id} has no {format} result (it has: {', '.join(sorted(job.results))})")
    path = gateway_of(request).jobs.result_dir(job_id) / job.results[format]
    return FileResponse(path, media_type=MEDIA_TYPES[format], filename=f"{job.study or job_id}-{path.name}")


@router.get(
    "/{job_id}/thumbnail.png",
    summary="The mask over the study's image",
    responses={200: {"content": {"image/png": {}}}, **problems(*GUARDED, 404, 409)},
)
def get_thumbnail(job_id: JobId, request: Request, identity: Reader):
    job = _job(request, identity, job_id)
    if job.state != "ok":
        raise HTTPException(409, f"job {job_id} is {job.state}: a thumbnail comes with its result")
    path = gateway_of(request).jobs.result_dir(job_id) / "thumbnail.png"
    if not path.is_file():
        raise HTTPException(404, f"job {job_id} has no thumbnail")
    return FileResponse(path, media_type="image/png")
