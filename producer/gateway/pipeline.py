"""One gateway job, from its source to the SEG stored back: the same path as `producer submit` on a folder.

1. input: a DICOMweb job retrieves its series (WADO-RS, as stored) into the job's `input/`; an upload is there
   already. The input folder holds the job's images only: its prompts stay in memory.
2. discovery and loading (producer.discovery, producer.loading): exactly one study, else the job's error; the
   study is built with the job's prompts as the HTTP request gave them (a sidecar in the input is never read; an
   npz carries its own boxes).
3. masks: the segmenter (embedded engine or fleet; stored results reused).
4. outputs: producer.outputs.OutputWriter writes the SEG / label map exactly as the folder run does, then the
   study's format adds its downloads (a DICOM source: its SEG and a NIfTI on the series' grid), plus labels.npz
   and the thumbnail (producer.gateway.results).
5. store: only once the SEG file is complete, one STOW-RS of that one instance (nothing if the PACS holds it): the
   SEG object as the writer made it, kept in memory (not read back from its file).
Any failure is this job's error with its reason; the service and the other jobs go on.
Each step that reaches outside the service is an audit line (producer.gateway.audit): started, series fetched
(from which root), SEG stored (to which root, which SOP Instance UID), finished (state, reason).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from producer.discovery import StudySource, discover
from producer.formats.dicom_outputs import DicomSeg
from producer.formats.npz import write_segs
from producer.formats.outcome import StudyOutcome
from producer.formats.registry import format_of
from producer.formats.sidecar import SidecarPrompts, parse_entry
from producer.gateway import results
from producer.gateway.audit import AuditLog
from producer.gateway.dicomweb import DicomwebError, ServerDirectory, redact
from producer.gateway.jobs import Job, JobStore
from producer.loading import load_study_and_context
from producer.outputs import OutputWriter
from worker.contract.study import StudyError

log = logging.getLogger(__name__)
FORMAT_FILES = {"npz": "labels.npz", "thumbnail": "thumbnail.png"}  # every job's; its format adds the others


class JobFailed(Exception):
    """A job's error; the message is what the job record shows."""


class JobPipeline:
    def __init__(self, jobs: JobStore, segmenter, servers: ServerDirectory, audit: AuditLog, telemetry=None):
        self.jobs, self.segmenter, self.servers, self.audit, self.telemetry = jobs, segmenter, servers, audit, telemetry

    def _audit(self, job: Job, action: str, outcome: str, **fields: Any) -> None:
        self.audit.write(
            actor=job.owner or "service",
            action=action,
            outcome=outcome,
            resource="job",
            resource_id=job.id,
            owner=job.owner,
            study_uid=job.source.get("study", ""),
            series_uid=job.source.get("series", ""),
            source=job.source.get("dicomweb", "upload"),
            **fields,
        )

    def run(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        job = self.jobs.update(
            job_id,
            state="running",
            started_at=time.time(),
            finished_at=None,
            error="",
            runs=job.runs + 1,
            progress={"done": 0, "total": 0},
            stored=None,
            timings={},
        )
        self._audit(job, "job.started", "ok", detail=f"run {job.runs}")
        started = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            changes = self._run(job, timings)
            state, error = "ok", ""
        except (JobFailed, StudyError, DicomwebError) as failure:
            changes, state, error = {}, "error", str(failure)
        except Exception as failure:  # a bug must cost this job only
            log.exception("job %s failed", job_id)
            changes, state, error = {}, "error", f"internal error: {type(failure).__name__}: {failure}"
        finally:
            if job.kind == "dicomweb":
                self.jobs.drop_input(job_id)  # the PACS holds the series; uploads stay until the job is deleted
        timings["total"] = time.perf_counter() - started
        job = self.jobs.update(job_id, state=state, error=error, finished_at=time.time(), timings=timings, **changes)
        stored = job.stored or {}
        self._audit(
            job,
            "job.finished",
            state,
            stored_to=stored.get("dicomweb", ""),
            stored_uid=stored.get("sop_uid", ""),
            detail=error,
        )
        if self.telemetry is not None:
            self.telemetry.finished(job)
        return job

    # ------------------------------------------------------------------------------------------------ steps
    def _run(self, job: Job, timings: dict[str, float]) -> dict[str, Any]:
        folder = self.jobs.input_dir(job.id)
        mark = time.perf_counter()
        if job.kind == "dicomweb":
            try:
                with self.servers.open(job.source["dicomweb"]) as server:
                    server.fetch_series(job.source["study"], job.source["series"], folder)
            except DicomwebError as error:
                self._audit(job, "job.fetch", "error", detail=str(error))
                raise
            self._audit(job, "job.fetch", "ok")
        timings["fetch"] = time.perf_counter() - mark
        prompts = self._prompts(job)
        source = self._find_study(folder, prompts)
        if job.store and not format_of(source).gives_seg:
            raise JobFailed(
                f"only a DICOM series gives a SEG to store; this upload is {format_of(source).title}: send it "
                'with no "store" and download the result instead'
            )

        mark = time.perf_counter()
        study, context = load_study_and_context(source, prompts)
        timings["load"] = time.perf_counter() - mark
        total = int(study.image.shape[0]) if study.is_3d else 1
        self.jobs.update(job.id, study=source.name, modality=study.modality, progress={"done": 0, "total": total})

        mark = time.perf_counter()
        outcome = self.segmenter.segment(job.id, study, lambda done, all_: self._progress(job.id, done, all_))
        timings["segment"] = time.perf_counter() - mark
        if not outcome.ok:
            self.jobs.update(job.id, metrics=outcome.metrics)
            raise JobFailed(outcome.error)

        outcome.context, outcome.notes = context, [*context.notes, *outcome.notes]
        mark = time.perf_counter()
        files = self._write(job, source, study, outcome)
        timings["write"] = time.perf_counter() - mark
        done_total = self.jobs.get(job.id).progress.get("total") or total
        changes: dict[str, Any] = {
            "metrics": outcome.metrics,
            "results": files,
            "progress": {"done": done_total, "total": done_total},
        }
        if job.store:
            seg = outcome.written.get(DicomSeg.name)
            if DicomSeg.name not in files or seg is None:
                raise JobFailed("no DICOM SEG could be built to store: " + "; ".join(outcome.notes))
            mark = time.perf_counter()
            changes["stored"] = self._store(job, seg)
            timings["store"] = time.perf_counter() - mark
        return changes

    def _progress(self, job_id: str, done: int, total: int) -> None:
        self.jobs.update(job_id, progress={"done": int(done), "total": int(total)})

    @staticmethod
    def _prompts(job: Job) -> SidecarPrompts | None:
        """The job's prompts, from its record (checked when the job was created; a StudyError if not, now)."""
        return parse_entry(job.prompts, "prompts") if job.prompts is not None else None

    @staticmethod
    def _find_study(folder: Path, prompts: SidecarPrompts | None) -> StudySource:
        if not folder.is_dir() or not any(folder.iterdir()):
            raise JobFailed("the job has no input files")
        found = discover(folder)
        if len(found.studies) != 1:
            notes = "; ".join(f"{note.path.name}: {note.reason}" for note in found.skipped[:5])
            names = ", ".join(s.name for s in found.studies)
            raise JobFailed(
                f"the input holds {len(found.studies)} studies{f' ({names})' if names else ''}, a job "
                f"takes exactly one series or image{f'; left out: {notes}' if notes else ''}"
            )
        source = found.studies[0]
        fmt = format_of(source)
        if not fmt.boxes_in_sidecar and prompts is not None:
            raise JobFailed(f"an {fmt.title} upload carries its own boxes: send it without prompts")
        if fmt.boxes_in_sidecar and prompts is None:
            raise JobFailed(f"prompts are required for {fmt.title} studies")
        return source

    def _write(self, job: Job, source: StudySource, study, outcome: StudyOutcome) -> dict[str, str]:
        out = self.jobs.result_dir(job.id)
        writer = OutputWriter(out, keep_written=True)  # the SEG object, for the store step
        writer.write(source, outcome)  # the SEG / label map, as `producer submit` writes it
        if not outcome.ok:
            raise JobFailed(outcome.error)
        files = {"npz": FORMAT_FILES["npz"], **format_of(source).downloads(writer.folder, source, outcome)}
        write_segs(out / files["npz"], outcome.labels)
        names = outcome.context.segment_labels if outcome.context else ()
        (out / FORMAT_FILES["thumbnail"]).write_bytes(results.thumbnail_png(study.image, outcome.labels, names))
        return files

    def _store(self, job: Job, dataset) -> dict[str, Any]:
        root = job.source.get("dicomweb") if job.store == "source" else job.store
        if not root:
            raise JobFailed('"store": "source" needs a DICOMweb source')
        try:
            with self.servers.open(root) as server:
                stored = server.store_instance(dataset)
        except DicomwebError as error:
            self._audit(job, "job.store", "error", stored_to=redact(root), detail=str(error))
            raise
        self._audit(
            job,
            "job.store",
            "already present" if stored.already_present else "ok",
            stored_to=server.root,
            stored_uid=stored.sop_uid,
        )
        return {
            "dicomweb": server.root,
            "study_uid": stored.study_uid,
            "series_uid": stored.series_uid,
            "sop_uid": stored.sop_uid,
            "already_present": stored.already_present,
        }
