"""The API's request and response bodies, with every constraint the service enforces, so the OpenAPI document
(producer.gateway.openapi) tells generated clients what will be accepted."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from producer.formats.dicom_outputs import DownloadName
from producer.gateway.jobs import JobKind, JobState

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
ROOT_PATTERN = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"
# at least one character that is not whitespace as Python's str.strip() sees it, spelled out so that JSON Schema's
# ECMAScript patterns and Python's re agree (their \s differ)
NONBLANK = r"[^\t\n\x0b\x0c\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"

# The prompts entry of the README (producer.formats.sidecar.SidecarEntry) as JSON schema: boxes in voxel indices
# ([x0, y0, x1, y1] or [x0, y0, z0, x1, y1, z1]) or two world corners in mm, exactly one of the two per box.
_NUMBER3 = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}
_LABEL = {"type": "string", "nullable": True, "pattern": NONBLANK}
_VOXEL = {
    "description": "[x0, y0, x1, y1] (2D) or [x0, y0, z0, x1, y1, z1], inclusive indices",
    "oneOf": [
        {"type": "array", "items": {"type": "integer"}, "minItems": count, "maxItems": count} for count in (4, 6)
    ],
}
_MM = {"type": "array", "items": _NUMBER3, "minItems": 2, "maxItems": 2, "description": "two opposite world corners"}
_CLICK = {
    "description": 'one click: "voxel" [x, y] (2D) or [x, y, z], or "mm" [x, y, z]; positive (default) or not',
    "oneOf": [
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["voxel"],
            "properties": {
                "voxel": {
                    "oneOf": [
                        {"type": "array", "items": {"type": "integer"}, "minItems": n, "maxItems": n} for n in (2, 3)
                    ]
                },
                "positive": {"type": "boolean"},
                "comment": {},
            },
        },
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["mm"],
            "properties": {"mm": _NUMBER3, "positive": {"type": "boolean"}, "comment": {}},
        },
    ],
}
_CLICKS = {"type": "array", "items": _CLICK, "description": "refining clicks, in order"}
BOX_SCHEMA: dict[str, Any] = {
    "description": 'one label: a box ("voxel" or "mm", not both) and optional clicks, or clicks alone',
    "oneOf": [
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["voxel"],
            "properties": {"label": _LABEL, "voxel": _VOXEL, "clicks": _CLICKS, "comment": {}},
        },
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["mm"],
            "properties": {"label": _LABEL, "mm": _MM, "clicks": _CLICKS, "comment": {}},
        },
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["clicks"],
            "properties": {"label": _LABEL, "clicks": {**_CLICKS, "minItems": 1}, "comment": {}},
        },
    ],
}
PROMPTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["boxes"],
    "description": "The prompts.json entry of the README: boxes (voxel or mm), labels, optional modality and window",
    "properties": {
        "boxes": {"type": "array", "minItems": 1, "items": BOX_SCHEMA},
        "modality": {"type": "string", "nullable": True, "pattern": NONBLANK},
        "window": {
            "type": "object",
            "additionalProperties": False,
            "required": ["level", "width"],
            "properties": {
                "level": {"type": "number"},
                "width": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
                "comment": {},
            },
        },
        "comment": {},
    },
}


class DicomwebSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dicomweb: str = Field(
        min_length=8,
        max_length=2048,
        pattern=ROOT_PATTERN,
        description="A DICOMweb root the site configured (the OpenAPI document lists them); credentials come from "
        "the service's configuration",
    )
    study: str = Field(pattern=UID_PATTERN, min_length=1, max_length=64, description="StudyInstanceUID")
    series: str = Field(pattern=UID_PATTERN, min_length=1, max_length=64, description="SeriesInstanceUID")


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: DicomwebSource
    prompts: dict[str, Any] = Field(description="PROMPTS_SCHEMA (the OpenAPI document's Prompts)")
    store: str | None = Field(
        "source",
        description='"source": STOW-RS the SEG back to the source server; a configured DICOMweb root: to that '
        "server; null: keep it here only",
    )


class Accepted(BaseModel):
    id: str
    status_url: str


class JobProgress(BaseModel):
    done: int = Field(ge=0, description="slices segmented (1 of 1 for a 2D image)")
    total: int = Field(ge=0, description="slices in all (0 until the study is loaded)")


class StoredSeg(BaseModel):
    dicomweb: str = Field(description="the DICOMweb root the SEG was stored to (no credentials)")
    study_uid: str
    series_uid: str
    sop_uid: str
    already_present: bool = Field(description="the server held it before: nothing new was stored")


class JobDocument(BaseModel):
    """A job as GET /v1/jobs/{id} answers it: its record (producer.gateway.jobs.Job) and where to fetch it and
    its results."""

    id: str = Field(pattern=JOB_ID_PATTERN)
    kind: JobKind
    owner: str = Field(description="the identity that created it")
    prompts: dict[str, Any] | None = Field(description="as the request gave them (null: an npz carries its boxes)")
    store: str | None = Field(description='"source", a DICOMweb root, or null (kept here only)')
    source: dict[str, Any] = Field(description="dicomweb: {dicomweb, study, series}; upload: {files}")
    state: JobState
    error: str = Field(description="why the job failed (empty unless state is error)")
    progress: JobProgress
    metrics: dict[str, Any] = Field(description="the study's metrics (README, metrics.jsonl)")
    stored: StoredSeg | None = Field(description="where the SEG was stored (null: not stored)")
    study: str = Field(description="the study's name, as discovery gave it")
    modality: str
    results: dict[DownloadName, str] = Field(description="result format -> file name")
    created_at: float
    started_at: float | None
    finished_at: float | None
    runs: int = Field(ge=0, description="times the job was started (more than 1 only after a service restart)")
    timings: dict[str, float] = Field(description="seconds per step: fetch, load, segment, write, store, total")
    status_url: str
    result_urls: dict[DownloadName, str] = Field(description="result format -> URL of GET .../result?format=")


class Problem(BaseModel):
    detail: str | list[dict[str, Any]] = Field(description="what is wrong (a list: one entry per invalid field)")


class Health(BaseModel):
    status: str
    mode: str
    pending: int
    version: str


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI: the error statuses a route answers, each with the Problem body."""
    reasons = {
        400: "the body could not be parsed at all (not JSON)",
        401: "no valid bearer credential",
        403: "the identity lacks the route's scope",
        404: "no such resource (or not the caller's)",
        409: "the resource is not in a state for this",
        413: "the upload is larger than --max-upload-mb",
        415: "neither application/json nor multipart/form-data",
        422: "the request is malformed, or names a DICOMweb root the site did not configure",
        429: "over the identity's request rate or unfinished resources, or the client address is over its rate of "
        "requests without a valid credential (Retry-After says when to ask again)",
        502: "the DICOMweb server refused or failed the request",
        503: "no fleet worker can take this now (Retry-After says when to ask again); nothing was changed",
    }
    return {status: {"model": Problem, "description": reasons[status]} for status in statuses}


GUARDED = (401, 403, 422, 429)  # every route behind a credential may answer these
