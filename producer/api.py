"""The Python API for hospital back-ends: submit a folder to the fleet, ask how a batch is doing, get results.

    from producer import api

    batch = api.submit("studies/", broker="redis://:secret@broker:6379/0", out_dir="masks/")   # waits
    batch = api.submit("studies/", broker=..., wait=False)                                       # returns at once
    api.status(batch.batch_id, broker=...)          # -> BatchStatus (counts, per-study state and progress)
    api.results(batch.batch_id, "masks/", broker=...)   # waits, downloads, writes masks + metrics.jsonl
    session = api.open_session(study, broker=...)   # interactive: session.interact("liver", box=[...]), clicks

Outputs are those of the embedded run (producer.outputs.OutputWriter). Without `out_dir`, `submit`/`results`
keep each mask in memory (`StudyOutcome.labels`); with it, masks are written and not kept.
The broker defaults to $LITEMEDSAM_BROKER; every other fleet setting comes from the environment too
(worker.contract.settings), or pass `settings=FleetSettings(...)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from producer.discovery import Skipped, StudySource, discover
from producer.fleet import Enqueued, FleetClient, SubmissionInterrupted, SubmitOptions
from producer.formats.dicom_outputs import DEFAULT_DICOM_OUTPUTS
from producer.formats.outcome import StudyOutcome
from producer.formats.output_context import OutputContext
from producer.outputs import OutputWriter, parse_dicom_formats
from producer.source_codec import source_from_json
from worker.contract.arrays import StoreError
from worker.contract.manifest import BatchMeta, ManifestError, StudyEntry
from worker.contract.messages import Outcome, Progress
from worker.contract.settings import FleetSettings
from worker.contract.study import Study, StudyError

ProgressCallback = Callable[[str, int, int], None]  # (study name, slices done, slices in all)

if TYPE_CHECKING:
    from producer.sessions import Session


class UnknownBatch(LookupError):
    pass


class UnreadableBatch(UnknownBatch):
    """A batch whose manifest this producer does not read (another manifest version: the message says which)."""


@dataclass
class Batch:
    batch_id: str
    names: list[str]
    outcomes: list[StudyOutcome] = field(default_factory=list)  # filled when waited for
    queued: int = 0
    cached: int = 0
    failed_to_submit: int = 0
    out_dir: Path | None = None
    dicom_formats: tuple[str, ...] = DEFAULT_DICOM_OUTPUTS  # what DICOM studies are written as
    skipped: list[Skipped] = field(default_factory=list)  # files discovery left out, with reasons
    unserved_queues: set[str] = field(default_factory=set)  # queues no worker has announced itself on

    @property
    def ok(self) -> int:
        return sum(o.ok for o in self.outcomes)

    @property
    def failed(self) -> int:
        return sum(not o.ok for o in self.outcomes)


@dataclass
class StudyStatus:
    name: str
    state: str  # queued | running | ok | error
    modality: str = ""
    error: str = ""
    done: int = 0  # slices, while running
    total: int = 0
    node: str = ""
    cached: bool = False


@dataclass
class BatchStatus:
    batch_id: str
    created_at: float
    sealed: bool  # False while the submitter is still enqueuing (or if it died doing so)
    total: int
    studies: list[StudyStatus]

    def count(self, state: str) -> int:
        return sum(s.state == state for s in self.studies)

    @property
    def finished(self) -> bool:
        return self.sealed and self.count("ok") + self.count("error") == self.total


def client_for(broker: str | None = None, settings: FleetSettings | None = None) -> FleetClient:
    return FleetClient((settings or FleetSettings.from_env()).with_broker(broker))


def submit(
    study_dir: str | Path,
    broker: str | None = None,
    *,
    out_dir: str | Path | None = None,
    wait: bool = True,
    force: bool = False,
    queue: str | None = None,
    routes: dict[str, str] | None = None,
    timeout: float | None = None,
    progress: bool = False,
    settings: FleetSettings | None = None,
    dicom_formats: str | tuple[str, ...] = DEFAULT_DICOM_OUTPUTS,
    split: bool = True,
) -> Batch:
    """Enqueue every study in `study_dir`; with `wait`, collect the results (and write them to `out_dir`).

    `queue` sends every study there; `routes` ({"PET": "pet"}) sends a modality's studies to its queue; else
    $LITEMEDSAM_QUEUE_ROUTES, else the default queue. `dicom_formats` ("seg", "rtstruct" or both) is what DICOM
    studies are written as, here and by any later `results` of this batch. `split=False`: no study of the batch
    is split across workers (README, "Scaling one study")."""
    found = discover(Path(study_dir))
    sources = found.studies
    if not sources:
        raise FileNotFoundError(f"no studies found in {study_dir} ({len(found.skipped)} file(s) skipped)")
    client = client_for(broker, settings)
    options = SubmitOptions(
        force=force,
        queue=queue,
        routes=dict(routes or {}),
        dicom_formats=parse_dicom_formats(dicom_formats),
        split=split,
    )
    enqueued = client.submit(sources, options, Path(study_dir))
    try:
        batch = _batch(enqueued, out_dir, options.dicom_formats)
        batch.skipped = found.skipped
        if wait:
            _collect(client, batch, set(batch.names), len(batch.names), timeout, progress)
    except KeyboardInterrupt:  # the batch is enqueued and goes on: say which one it is
        raise SubmissionInterrupted(enqueued, complete=True) from None
    return batch


def submit_studies(
    studies: dict[str, Study],
    broker: str | None = None,
    *,
    wait: bool = True,
    force: bool = False,
    queue: str | None = None,
    routes: dict[str, str] | None = None,
    timeout: float | None = None,
    settings: FleetSettings | None = None,
    split: bool = True,
    on_progress: ProgressCallback | None = None,
) -> Batch:
    """Enqueue studies already in memory ({name: worker.contract.study.Study}); with `wait`, collect their masks
    (`outcome.labels`). No files: for back-ends that hold the arrays. Each study is checked by its worker.

    Waiting follows the batch's events (pub/sub, with a full re-read every few seconds in case one was missed), not
    a status poll; `on_progress(name, slices done, slices in all)` is called as the workers report. A batch not
    finished within `timeout` seconds: TimeoutError naming it (the batch goes on)."""
    client = client_for(broker, settings)
    options = SubmitOptions(force=force, queue=queue, routes=dict(routes or {}), split=split)
    batch = _batch(client.submit_studies(studies, options), None)
    if wait:
        _collect(client, batch, set(batch.names), len(batch.names), timeout, False, on_progress=on_progress)
    return batch


def open_session(
    study: Study,
    broker: str | None = None,
    *,
    context: OutputContext | None = None,
    settings: FleetSettings | None = None,
) -> Session:
    """An interactive session on the fleet for an image in memory (its prompts are ignored): `interact(label,
    box=[...])` or `interact(label, point=[x, y(, z)], positive=...)`, `undo`/`redo`, `label_map()`,
    `write_results(folder)`. Each step runs on a fleet worker as the gateway's sessions do
    (producer.fleet_sessions); SessionUnavailable when no worker lives. The session lives in this process."""
    from producer.fleet_sessions import FleetSessions
    from producer.sessions import Session

    fleet_settings = (settings or FleetSettings.from_env()).with_broker(broker)
    return Session(
        study, context or OutputContext("npz"), None, FleetSessions(fleet_settings.broker_url, settings=fleet_settings)
    )


def status(batch_id: str, broker: str | None = None, *, settings: FleetSettings | None = None) -> BatchStatus:
    client = client_for(broker, settings)
    meta = _meta(client, batch_id)
    studies, outcomes = client.ledger.studies(batch_id), client.ledger.outcomes(batch_id)
    running = client.ledger.progress(batch_id)
    rows = [_study_status(name, entry, outcomes.get(name), running.get(name)) for name, entry in studies.items()]
    return BatchStatus(batch_id, meta.created_at, meta.sealed, meta.total, sorted(rows, key=lambda r: r.name))


def results(
    batch_id: str,
    out_dir: str | Path | None = None,
    broker: str | None = None,
    *,
    wait: bool = True,
    timeout: float | None = None,
    progress: bool = False,
    settings: FleetSettings | None = None,
) -> Batch:
    """Download a batch's results (writing them to `out_dir` if given); with `wait`, until every study is done."""
    client = client_for(broker, settings)
    meta = _meta(client, batch_id)
    manifest = _Manifest(client, batch_id)
    batch = Batch(
        batch_id,
        sorted(manifest.entries),
        out_dir=Path(out_dir) if out_dir else None,
        dicom_formats=parse_dicom_formats(meta.dicom_formats or DEFAULT_DICOM_OUTPUTS),
    )
    if wait:  # a batch still being submitted: follow() reads the full list once the submitter has sealed it
        names = set(manifest.entries) if meta.sealed else None
        _collect(client, batch, names, meta.total, timeout, progress, manifest)
        batch.names = sorted(manifest.entries)
    else:
        for outcome in client.ledger.outcomes(batch_id).values():
            batch.outcomes.append(_deliver(client, batch, manifest, outcome))
    return batch


class _Manifest:
    """A batch's study entries, re-read when a study not listed yet finishes (its submitter was still going)."""

    def __init__(self, client: FleetClient, batch_id: str):
        self.client, self.batch_id = client, batch_id
        self.entries = client.ledger.studies(batch_id)

    def entry(self, name: str) -> StudyEntry:
        if name not in self.entries:
            self.entries = self.client.ledger.studies(self.batch_id)
        return self.entries.get(name) or StudyEntry()

    def source(self, name: str) -> StudySource:
        source = self.entry(name).source
        if source is None:
            raise StudyError(f"batch {self.batch_id} has no source recorded for {name} (it was given in memory)")
        return source_from_json(source)

    def context(self, name: str) -> OutputContext | None:
        """What the writers need, stored at submit time (None for a study that could not be loaded)."""
        data = self.entry(name).output_context
        return OutputContext.from_json(data) if data else None


def _meta(client: FleetClient, batch_id: str) -> BatchMeta:
    try:
        meta = client.ledger.meta(batch_id)
    except ManifestError as error:
        raise UnreadableBatch(str(error)) from None
    if meta is None:
        raise UnknownBatch(f"no batch {batch_id!r} on this broker (wrong id or namespace, or expired)")
    return meta


def _batch(enqueued: Enqueued, out_dir, dicom_formats: tuple[str, ...] = DEFAULT_DICOM_OUTPUTS) -> Batch:
    return Batch(
        enqueued.batch_id,
        enqueued.names,
        queued=enqueued.queued,
        cached=enqueued.cached,
        failed_to_submit=enqueued.failed,
        out_dir=Path(out_dir) if out_dir else None,
        dicom_formats=dicom_formats,
        unserved_queues=enqueued.unserved_queues,
    )


def _collect(
    client: FleetClient,
    batch: Batch,
    names: set[str] | None,
    total: int,
    timeout: float | None,
    progress: bool,
    manifest: _Manifest | None = None,
    on_progress: ProgressCallback | None = None,
) -> None:
    from producer.console import BatchProgress

    manifest = manifest or _Manifest(client, batch.batch_id)
    with BatchProgress(total) if progress else nullcontext() as bar:
        for kind, item in client.follow(batch.batch_id, names, timeout):
            if kind == "progress" and item[1].total:
                if bar is not None:
                    bar.slices(item[0], item[1].done, item[1].total)
                if on_progress is not None:
                    on_progress(item[0], item[1].done, item[1].total)
            elif kind == "done":
                outcome = _deliver(client, batch, manifest, item)
                batch.outcomes.append(outcome)
                if bar is not None:
                    bar.finished(outcome)


def _deliver(client: FleetClient, batch: Batch, manifest: _Manifest, outcome: Outcome) -> StudyOutcome:
    """Download one finished study's mask and write it (if the batch has an output folder)."""
    enqueued_at = _enqueued_at(manifest.entry(outcome.name), outcome)
    study = StudyOutcome(
        name=outcome.name,
        modality=outcome.modality,
        status=outcome.status,
        error=outcome.error,
        metrics=outcome.metrics.to_dict(),
        seconds=max(0.0, outcome.finished_at - enqueued_at),
    )
    if outcome.ok:
        _download(client, outcome, study)
        study.context = manifest.context(outcome.name)
        study.notes = list(study.context.notes) if study.context else []
    if batch.out_dir is not None:
        OutputWriter(batch.out_dir, batch.dicom_formats).write(manifest.source(outcome.name), study)
        study.labels = None
    return study


def _download(client: FleetClient, outcome: Outcome, study: StudyOutcome) -> None:
    started = time.perf_counter()
    try:
        record = client.fetch(outcome.result_key)
    except StoreError as error:
        study.status, study.error = "error", f"result {outcome.result_key[:12]} is unreadable: {error}"
        return
    if record is None:
        study.status, study.error = "error", f"result {outcome.result_key[:12]} is no longer in the store (expired)"
        return
    metrics = record.metrics
    if outcome.metrics.extra.cached:  # the stored metrics, plus this batch's cache note
        metrics.note(**outcome.metrics.extra.model_dump(exclude_none=True))
    else:
        metrics = outcome.metrics.model_copy(deep=True)
    metrics.transfer().result_download = time.perf_counter() - started
    study.labels, study.metrics = record.labels, metrics.to_dict()


def state_of(outcome: Outcome | None, progress: Progress | None) -> str:
    if outcome is not None:
        return outcome.status
    return "running" if progress is not None else "queued"


def _enqueued_at(entry: StudyEntry | None, outcome: Outcome) -> float:
    return entry.enqueued_at if entry is not None and entry.enqueued_at is not None else outcome.finished_at


def _study_status(name: str, entry: StudyEntry, outcome: Outcome | None, progress: Progress | None) -> StudyStatus:
    row = StudyStatus(name, state_of(outcome, progress), modality=entry.modality)
    if outcome is not None:
        extra = outcome.metrics.extra
        row.error, row.cached, row.node = outcome.error, bool(extra.cached), extra.node or ""
        row.modality = outcome.modality or row.modality
    elif progress is not None:
        row.done, row.total, row.node = progress.done, progress.total, progress.node
    return row


def report(batch_id: str, broker: str | None = None, *, settings: FleetSettings | None = None):
    """Timing summary of a batch (producer.report.BatchReport) from its outcomes in Redis."""
    from producer.report import summarise

    client = client_for(broker, settings)
    meta = _meta(client, batch_id)
    entries, outcomes = client.ledger.studies(batch_id), client.ledger.outcomes(batch_id)
    records = [_record(outcome, entries.get(name)) for name, outcome in outcomes.items()]
    finished = [outcome.finished_at for outcome in outcomes.values()]
    return summarise(records, max(finished) - meta.created_at if finished else 0.0)


def _record(outcome: Outcome, entry: StudyEntry | None) -> dict:
    enqueued_at = _enqueued_at(entry, outcome)
    return {
        "study": outcome.name,
        "modality": outcome.modality or (entry.modality if entry is not None else ""),
        "status": outcome.status,
        "error": outcome.error,
        "seconds": max(0.0, outcome.finished_at - enqueued_at),
        "metrics": outcome.metrics.to_dict(),
    }
