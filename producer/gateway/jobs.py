"""Job records: one folder per job under `<data dir>/jobs/<id>/`, its state in `job.json`.

The record is rewritten atomically (temp file + rename) at every change, so it survives a restart of the service:
on start, jobs left `queued` or `running` are queued again (producer.gateway.queue). Running a job again is safe:
results are content-addressed (the fleet's store, or the embedded result store) and SEG UIDs are deterministic,
so the PACS ends up holding one SEG whatever happened.

A job's folder also holds its input (`input/`: the retrieved or uploaded files; a retrieved series is removed once
the job ends) and its outputs (`result/`: the SEG or label map the producer writes, `labels.npz`, `thumbnail.png`).
Each job belongs to the identity that created it (`owner`). Folders are 0700 and records 0600; a job's folder goes
with `DELETE /v1/jobs/{id}` or when retention purges it (producer.gateway.retention).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import TypeAdapter, ValidationError

from worker.contract.errors import validation_message
from worker.contract.files import write_text_atomic

log = logging.getLogger(__name__)
RECORD_VERSION = 1  # of job.json

JobState = Literal["queued", "running", "ok", "error"]
JobKind = Literal["dicomweb", "upload"]
STATES: tuple[str, ...] = get_args(JobState)
UNFINISHED = ("queued", "running")


@dataclass
class Job:
    id: str
    kind: JobKind
    owner: str  # the name of the identity that created it (producer.gateway.identity)
    prompts: dict[str, Any] | None  # the prompts.json schema (None: an npz upload carries its own boxes)
    store: str | None  # "source", another DICOMweb root, or None (kept in the service only)
    source: dict[str, Any] = field(default_factory=dict)  # dicomweb: {"dicomweb", "study", "series"}; upload: files
    state: JobState = "queued"
    error: str = ""
    progress: dict[str, int] = field(default_factory=lambda: {"done": 0, "total": 0})
    metrics: dict[str, Any] = field(default_factory=dict)
    stored: dict[str, Any] | None = None  # {"series_uid", "sop_uid", "study_uid", "dicomweb", "already_present"}
    study: str = ""  # the study name discovery gave it
    modality: str = ""
    results: dict[str, str] = field(default_factory=dict)  # format ("seg", "nifti", "npz") -> file in result/
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    runs: int = 0  # how many times the job was started (more than 1 only after a service restart)
    timings: dict[str, float] = field(default_factory=dict)  # fetch, load, segment, write, store, total seconds
    version: int = RECORD_VERSION  # the record's shape; one of another version is refused (JobStore.get)

    def public(self, base_url: str = "") -> dict[str, Any]:
        """What GET /v1/jobs/{id} answers."""
        data = asdict(self)
        del data["version"]  # the record's, not the document's
        data["status_url"] = f"{base_url}/v1/jobs/{self.id}"
        data["result_urls"] = {fmt: f"{base_url}/v1/jobs/{self.id}/result?format={fmt}" for fmt in self.results}
        return data


RECORD = TypeAdapter(Job)  # job.json <-> Job, checked field by field


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    """Job records on disk; one lock serialises writes from the request handlers and the job threads."""

    def __init__(self, data_dir: Path):
        self.root = Path(data_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()

    def folder(self, job_id: str) -> Path:
        if not job_id or not all(c in "0123456789abcdef" for c in job_id) or len(job_id) != 32:
            raise KeyError(job_id)
        return self.root / job_id

    def input_dir(self, job_id: str) -> Path:
        return self.folder(job_id) / "input"

    def result_dir(self, job_id: str) -> Path:
        return self.folder(job_id) / "result"

    def create(self, job: Job) -> Job:
        with self._lock:
            self.folder(job.id).mkdir(mode=0o700, exist_ok=False)
            self._write(job)
        return job

    def get(self, job_id: str) -> Job:
        """The job's record; a KeyError if there is none, or it cannot be read (the log says why)."""
        try:
            path = self.folder(job_id) / "job.json"
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise KeyError(job_id) from error
        if not isinstance(data, dict):
            log.warning("job %s: its record is not a JSON object: left out", job_id)
            raise KeyError(job_id)
        data.setdefault("owner", "")  # a record from before owners: only admins see it
        data.setdefault("version", RECORD_VERSION)  # a record from before versions has this shape
        if data["version"] != RECORD_VERSION:
            log.warning(
                "job %s: its record is version %r, this gateway reads version %d: left out",
                job_id,
                data["version"],
                RECORD_VERSION,
            )
            raise KeyError(job_id)
        try:
            return RECORD.validate_python(data)
        except ValidationError as error:
            log.warning("job %s: its record does not fit (%s): left out", job_id, validation_message(error, "record"))
            raise KeyError(job_id) from None

    def update(self, job_id: str, **changes: Any) -> Job:
        with self._lock:
            job = self.get(job_id)
            for key, value in changes.items():
                setattr(job, key, value)
            self._write(job)
            return job

    def recent(self, limit: int = 50, owner: str | None = None) -> list[Job]:
        """The newest jobs, of one owner (or everyone's: None)."""
        jobs = []
        for folder in self.root.iterdir():
            try:
                job = self.get(folder.name)
            except KeyError:
                continue
            if owner is None or job.owner == owner:
                jobs.append(job)
        return sorted(jobs, key=lambda j: j.created_at, reverse=True)[:limit]

    def unfinished(self, owner: str | None = None) -> list[Job]:
        everything = self.recent(limit=10**9, owner=owner)
        return sorted((j for j in everything if j.state in UNFINISHED), key=lambda j: j.created_at)

    def delete(self, job_id: str) -> None:
        """The job's folder and everything in it (its record last: a half-deleted job still says what it was)."""
        with self._lock:
            folder = self.folder(job_id)
            for part in ("input", "result"):
                shutil.rmtree(folder / part, ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)

    def drop_input(self, job_id: str) -> None:
        shutil.rmtree(self.input_dir(job_id), ignore_errors=True)

    def _write(self, job: Job) -> None:
        path = self.folder(job.id) / "job.json"
        write_text_atomic(path, json.dumps(asdict(job)), mode=0o600)
