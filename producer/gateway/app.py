"""The gateway's HTTP API (FastAPI). Routes:

    POST /v1/jobs                      202 {"id", "status_url"}: JSON (DICOMweb source) or multipart (upload)
    GET  /v1/jobs                      recent jobs, newest first (the page reads this)
    GET  /v1/jobs/{id}                 state, error, progress, metrics, stored SEG
    GET  /v1/jobs/{id}/result?format=  seg | nifti | npz bytes
    GET  /v1/jobs/{id}/thumbnail.png   the mask over the study's image
    GET  /v1/health                    no token
    GET  /metrics                      Prometheus
    GET  /  and  /docs                 the jobs page and the API docs, every asset served from here

Every /v1 route but health and /metrics need `Authorization: Bearer <token>`. The page shell, the docs, the
OpenAPI schema and the static assets carry no patient or job data and are served without a token; the page asks
for one (or reads it from the URL fragment `#token=...`, which browsers never send to a server).
"""

from __future__ import annotations

import json
import re
import shutil
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from producer.formats.sidecar import parse_entry
from producer.gateway.config import GatewayConfig, TokenCheck
from producer.gateway.dicomweb import DicomwebError, ServerDirectory, normalise_root
from producer.gateway.jobs import Job, JobStore, new_job_id
from producer.gateway.page import page_html
from producer.gateway.pipeline import JobPipeline
from producer.gateway.queue import JobQueue
from producer.gateway.segmenters import make_segmenter
from producer.gateway.telemetry import GatewayTelemetry
from producer.gateway.viewer import viewer_router
from worker.contract.study import StudyError
from worker.contract.version import PACKAGE_VERSION as __version__

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
MEDIA_TYPES = {"seg": "application/dicom", "nifti": "application/gzip", "npz": "application/octet-stream"}
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class DicomwebSource(BaseModel):
    dicomweb: str = Field(description="DICOMweb root URL (credentials come from the service's configuration)")
    study: str = Field(pattern=UID_PATTERN, max_length=64, description="StudyInstanceUID")
    series: str = Field(pattern=UID_PATTERN, max_length=64, description="SeriesInstanceUID")


class JobRequest(BaseModel):
    source: DicomwebSource
    prompts: dict[str, Any] = Field(
        description="The prompts.json schema of the README: boxes (voxel or mm), labels, optional modality and window"
    )
    store: str | None = Field(
        "source",
        description='"source": STOW-RS the SEG back to the source server; a '
        "DICOMweb root URL: to that server; null: keep it here only",
    )


class Accepted(BaseModel):
    id: str
    status_url: str


def _problem(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def _check_prompts(prompts: Any) -> None:
    try:
        parse_entry(prompts, "prompts")
    except StudyError as error:
        raise _problem(422, str(error)) from None


def _check_store(store: str | None, has_dicomweb_source: bool) -> str | None:
    if store in (None, ""):
        return None
    if store == "source":
        if not has_dicomweb_source:
            raise _problem(422, '"store": "source" needs a DICOMweb source; give a DICOMweb root URL or null')
        return store
    try:
        return normalise_root(store)
    except DicomwebError as error:
        raise _problem(422, f"store: {error}") from None


def _upload_name(index: int, filename: str | None, taken: set[str]) -> str:
    name = SAFE_NAME.sub("_", Path(filename or "").name).lstrip(".")
    if not name or name in taken or name == "prompts.json":
        name = f"upload{index:05d}" + "".join(Path(filename or "").suffixes[-2:]).replace("/", "")
    taken.add(name)
    return name


class Gateway:
    """The service's parts, wired once: job records, the queue, the pipeline, the segmenter."""

    def __init__(self, config: GatewayConfig, segmenter=None):
        self.config = config
        self.jobs = JobStore(config.data_dir)
        self.servers = ServerDirectory(config.credentials, config.dicomweb)
        self.segmenter = segmenter or make_segmenter(
            config.broker, config.engine_settings, config.data_dir, config.fleet_timeout
        )
        self.queue: JobQueue | None = None
        self.telemetry = GatewayTelemetry(lambda: self.queue.pending if self.queue else 0)
        self.telemetry.mode = self.segmenter.mode
        self.pipeline = JobPipeline(self.jobs, self.segmenter, self.servers, self.telemetry)
        self.queue = JobQueue(self.jobs, self.pipeline, config.jobs_at_once)
        self.tokens = TokenCheck(config.tokens)

    def accept(self, job: Job) -> Job:
        self.telemetry.created.inc()
        self.queue.submit(job.id)
        return job


def create_app(config: GatewayConfig, segmenter=None) -> FastAPI:
    gateway = Gateway(config, segmenter)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        gateway.queue.resume()
        yield
        gateway.queue.shutdown()

    app = FastAPI(
        title="litemedsam-fleet gateway",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        description="Box-prompted segmentation of PACS series; DICOM SEG back by "
        "STOW-RS. Every /v1 route but /v1/health needs a bearer token.",
    )
    app.state.gateway = gateway
    bearer = HTTPBearer(auto_error=False)

    def authorised(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if credentials is None or not gateway.tokens.accepts(credentials.credentials):
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorised)]

    def job_or_404(job_id: str) -> Job:
        try:
            return gateway.jobs.get(job_id)
        except KeyError:
            raise _problem(404, f"no job {job_id[:40]!r}") from None

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def accepted(request: Request, job: Job) -> JSONResponse:
        gateway.accept(job)
        status_url = f"{base(request)}/v1/jobs/{job.id}"
        return JSONResponse({"id": job.id, "status_url": status_url}, status_code=202, headers={"Location": status_url})

    async def json_job(request: Request) -> Job:
        try:
            body = JobRequest.model_validate(await request.json())
        except ValueError as error:  # JSONDecodeError and pydantic's ValidationError
            detail = (
                error.errors(include_url=False, include_context=False)
                if isinstance(error, ValidationError)
                else f"not valid JSON: {error}"
            )
            raise HTTPException(422, detail) from None
        try:
            root = normalise_root(body.source.dicomweb)
        except DicomwebError as error:
            raise _problem(422, f"source: {error}") from None
        _check_prompts(body.prompts)
        store = _check_store(body.store, True)
        job = Job(
            new_job_id(),
            "dicomweb",
            body.prompts,
            store,
            source={"dicomweb": root, "study": body.source.study, "series": body.source.series},
        )
        return gateway.jobs.create(job)

    async def upload_job(request: Request) -> Job:
        form = await request.form(max_files=100_000, max_fields=20)
        files = [value for value in form.getlist("files") if isinstance(value, UploadFile)]
        if not files:
            raise _problem(422, 'multipart upload: give the study as one or more "files" parts')
        prompts = None
        raw = form.get("prompts")
        if raw is not None:
            text = (await raw.read()).decode("utf-8", "replace") if isinstance(raw, UploadFile) else str(raw)
            try:
                prompts = json.loads(text)
            except json.JSONDecodeError as error:
                raise _problem(422, f'the "prompts" part is not valid JSON ({error})') from None
            _check_prompts(prompts)
        store_field = form.get("store")
        store = _check_store(str(store_field) if isinstance(store_field, str) else None, False)
        job = gateway.jobs.create(Job(new_job_id(), "upload", prompts, store, source={"files": len(files)}))
        try:
            await _save_uploads(gateway.jobs.input_dir(job.id), files, config.max_upload_mb << 20)
        except HTTPException:
            shutil.rmtree(gateway.jobs.folder(job.id), ignore_errors=True)
            raise
        return job

    @app.post(
        "/v1/jobs",
        status_code=202,
        dependencies=guarded,
        response_model=Accepted,
        tags=["jobs"],
        summary="Create a job: a DICOMweb series (JSON) or uploaded files (multipart)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["files"],
                            "properties": {
                                "files": {
                                    "type": "array",
                                    "items": {"type": "string", "format": "binary"},
                                    "description": "DICOM files of one series, or one NIfTI, or one challenge npz",
                                },
                                "prompts": {"type": "string", "description": "prompts JSON (not for an npz)"},
                                "store": {"type": "string", "description": "a DICOMweb root URL to STOW the SEG to"},
                            },
                        }
                    },
                },
            }
        },
    )
    async def create_job(request: Request):
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            job = await json_job(request)
        elif content_type.startswith("multipart/form-data"):
            job = await upload_job(request)
        else:
            raise _problem(415, "send application/json (a DICOMweb source) or multipart/form-data (files)")
        return accepted(request, job)

    @app.get("/v1/jobs", dependencies=guarded, tags=["jobs"], summary="Recent jobs, newest first")
    def list_jobs(request: Request, limit: int = Query(50, ge=1, le=500)):
        return [job.public(base(request)) for job in gateway.jobs.recent(limit)]

    @app.get("/v1/jobs/{job_id}", dependencies=guarded, tags=["jobs"], summary="A job's state and results")
    def get_job(job_id: str, request: Request):
        return job_or_404(job_id).public(base(request))

    @app.get(
        "/v1/jobs/{job_id}/result",
        dependencies=guarded,
        tags=["jobs"],
        summary="A finished job's result",
        responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}}},
    )
    def get_result(job_id: str, format: Literal["seg", "nifti", "npz"] = "seg"):
        job = job_or_404(job_id)
        if job.state != "ok":
            raise _problem(409, f"job {job_id} is {job.state}" + (f": {job.error}" if job.error else ""))
        if format not in job.results:
            raise _problem(404, f"job {job_id} has no {format} result (it has: {', '.join(sorted(job.results))})")
        path = gateway.jobs.result_dir(job_id) / job.results[format]
        return FileResponse(path, media_type=MEDIA_TYPES[format], filename=f"{job.study or job_id}-{path.name}")

    @app.get(
        "/v1/jobs/{job_id}/thumbnail.png",
        dependencies=guarded,
        tags=["jobs"],
        summary="The mask over the study's image",
        responses={200: {"content": {"image/png": {}}}},
    )
    def get_thumbnail(job_id: str):
        job = job_or_404(job_id)
        path = gateway.jobs.result_dir(job_id) / "thumbnail.png"
        if job.state != "ok" or not path.is_file():
            raise _problem(404, f"job {job_id} has no thumbnail ({job.state})")
        return FileResponse(path, media_type="image/png")

    @app.get("/v1/health", tags=["service"], summary="Liveness (no token)")
    def health():
        return {
            "status": "ok",
            "mode": gateway.segmenter.mode,
            "pending": gateway.queue.pending,
            "version": __version__,
        }

    @app.get(
        "/metrics",
        dependencies=guarded,
        tags=["service"],
        summary="Prometheus metrics",
        responses={200: {"content": {"text/plain": {}}}},
    )
    def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(gateway.telemetry.exposition(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(viewer_router(gateway.servers, guarded))
    _add_pages(app)
    _add_schema(app)
    return app


async def _save_uploads(folder: Path, files: list[UploadFile], limit: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    total = 0
    for index, upload in enumerate(files):
        with (folder / _upload_name(index, upload.filename, taken)).open("wb") as handle:
            while chunk := await upload.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise _problem(413, f"the upload is larger than {limit >> 20} MB (--max-upload-mb)")
                handle.write(chunk)


def _add_pages(app: FastAPI) -> None:
    import swagger_ui_bundle

    app.mount("/static/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")

    @app.get("/", include_in_schema=False)
    def page():
        return HTMLResponse(page_html())

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="litemedsam-fleet gateway: API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon-32x32.png",
        )


def _add_schema(app: FastAPI) -> None:
    """The JSON job body is parsed by hand (the route also takes multipart): put its models in the schema."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            # 3.0.3: the swagger-ui that swagger-ui-bundle ships (4.x) renders 3.0 documents, not 3.1
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                openapi_version="3.0.3",
            )
            models = JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(models.pop("$defs", {}))
            components["JobRequest"] = models
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
