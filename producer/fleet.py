"""The producer's broker client: upload studies, find stored results, enqueue tasks, follow a batch.

The producer has no models. It reads the engine identity the workers of a queue published, computes each
study's content-addressed result key, and skips studies whose result is already stored (unless forced).
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producer.discovery import StudySource
from producer.formats.dicom_outputs import DEFAULT_DICOM_OUTPUTS
from producer.loading import load_study_and_context
from producer.outputs import check_study_name
from producer.sender import TaskSender
from producer.source_codec import source_to_json
from worker.contract.arrays import StoreError
from worker.contract.budget import study_work
from worker.contract.identity import EngineIdentity, image_digest
from worker.contract.keys import Keys
from worker.contract.manifest import BatchMeta, StudyEntry
from worker.contract.messages import MessageError, Outcome, Progress, ResultRecord, TaskMessage, pack_image
from worker.contract.metrics import MetricsExtra, StudyMetrics, Transfer
from worker.contract.routing import Route
from worker.contract.settings import FleetSettings, redis_client
from worker.contract.study import Study, StudyError
from worker.contract.validation import check_runnable
from worker.directory import IdentityDirectory
from worker.ledger import BatchLedger
from worker.store import open_store

log = logging.getLogger(__name__)
RESYNC_SECONDS = 5.0  # a full re-read of a batch's outcomes, in case a pub/sub message was missed


@dataclass(frozen=True)
class SubmitOptions:
    force: bool = False
    queue: str | None = None  # every study to this queue; else by modality route, else the default queue
    routes: dict[str, str] = field(default_factory=dict)  # modality -> queue, over LITEMEDSAM_QUEUE_ROUTES
    dicom_formats: tuple[str, ...] = (
        DEFAULT_DICOM_OUTPUTS  # what `results` writes for DICOM studies (stored in the batch meta)
    )
    split: bool = True  # False: no study of the batch is split across workers (worker.fanout)

    def explicit_queue(self, modality: str) -> str | None:
        return self.queue or {m.lower(): q for m, q in self.routes.items()}.get(modality.lower())


@dataclass
class Enqueued:
    """What submitting a batch did."""

    batch_id: str
    names: list[str] = field(default_factory=list)
    queued: int = 0
    cached: int = 0
    failed: int = 0
    unserved_queues: set[str] = field(default_factory=set)  # no worker ever announced itself on these


class SubmissionInterrupted(KeyboardInterrupt):
    """Ctrl-C while submitting: the batch was sealed with the studies enqueued so far."""

    def __init__(self, batch: Enqueued, complete: bool = False):
        super().__init__(f"batch {batch.batch_id}: interrupted after enqueuing {len(batch.names)} studies")
        self.batch = batch
        self.complete = complete  # every study had been enqueued


def new_batch_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Staged:
    """A study ready to send: its task message, the result key the queue's published engine gives it ("" if no
    worker has published one), and its (soft, hard) time limits."""

    message: TaskMessage
    result_key: str
    limits: tuple[int, int]


def known_route(identity: EngineIdentity | None, modality: str) -> Route | None:
    """The route a queue's published engine gives this modality; None if unknown (no engine, broken routing)."""
    if identity is None:
        return None
    try:
        return identity.route(modality)
    except (LookupError, ValueError):
        return None


class FleetClient:
    def __init__(self, settings: FleetSettings):
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.redis = redis_client(settings.broker_url)
        self.store = open_store(
            settings.store, settings.namespace, self.redis if settings.store == settings.broker_url else None
        )
        self.ledger = BatchLedger(self.redis, self.keys, settings.batch_ttl)
        self.directory = IdentityDirectory(self.redis, self.keys)
        self._sender: TaskSender | None = None
        self._identities: dict[str, EngineIdentity | None] = {}

    @property
    def sender(self) -> TaskSender:
        if self._sender is None:
            self._sender = TaskSender(self.settings)
        return self._sender

    @property
    def app(self):
        """The light Celery client's app (producer.sender)."""
        return self.sender.app

    def identity(self, queue: str) -> EngineIdentity | None:
        if queue not in self._identities:
            self._identities[queue] = self.directory.latest(queue)
        return self._identities[queue]

    # submitting -------------------------------------------------------------------------------------------
    def submit(self, sources: list[StudySource], options: SubmitOptions, study_dir: Path | None = None) -> Enqueued:
        """A batch of the studies found on disk (each loaded here; one that cannot be is an error outcome)."""
        items = [(source.name, lambda batch_id, s=source: self._submit_one(batch_id, s, options)) for source in sources]
        return self._submit_batch(items, options, str(study_dir or ""))

    def submit_studies(self, studies: dict[str, Study], options: SubmitOptions) -> Enqueued:
        """A batch of studies already in memory (a hospital back-end's arrays), by name (a plain file name)."""
        for name in studies:
            check_study_name(name)
        items = [
            (name, lambda batch_id, n=name, s=study: self.submit_study(batch_id, n, s, options))
            for name, study in studies.items()
        ]
        return self._submit_batch(items, options, "")

    def _submit_batch(
        self, items: list[tuple[str, Callable[[str], str]]], options: SubmitOptions, study_dir: str
    ) -> Enqueued:
        batch = Enqueued(new_batch_id())
        meta = BatchMeta(
            batch_id=batch.batch_id,
            created_at=time.time(),
            study_dir=study_dir,
            total=len(items),
            force=options.force,
            queue=options.queue or "",
            producer=socket.gethostname(),
            dicom_formats=tuple(options.dicom_formats),
            split=options.split,
        )
        self.ledger.write_meta(batch.batch_id, meta)
        try:
            for name, submit_one in items:
                state = submit_one(batch.batch_id)
                batch.names.append(name)
                setattr(batch, state, getattr(batch, state) + 1)
            sealed = meta.model_copy(update={"sealed": True, "submitted_at": time.time()})
            self.ledger.write_meta(batch.batch_id, sealed)
        except KeyboardInterrupt:
            self._seal_interrupted(batch, meta)
            raise SubmissionInterrupted(batch, complete=len(batch.names) == len(items)) from None
        batch.unserved_queues = {queue for queue, identity in self._identities.items() if identity is None}
        return batch

    def _seal_interrupted(self, batch: Enqueued, meta: BatchMeta) -> None:
        """Seal what was enqueued, so `producer results` can still finish the batch; a study caught half-way
        gets an error outcome (resubmitting the folder reuses every stored result)."""
        for name in set(self.ledger.studies(batch.batch_id)) - set(batch.names):
            self.ledger.record(
                batch.batch_id,
                Outcome(
                    name=name,
                    status="error",
                    error="submission interrupted while this study was being enqueued: submit it again",
                ),
            )
            batch.names.append(name)
        sealed = {"sealed": True, "interrupted": True, "total": len(batch.names), "submitted_at": time.time()}
        self.ledger.write_meta(batch.batch_id, meta.model_copy(update=sealed))

    def _submit_one(self, batch_id: str, source: StudySource, options: SubmitOptions) -> str:
        entry = StudyEntry(source=source_to_json(source), enqueued_at=time.time())
        try:
            study, context = load_study_and_context(source)
            # the writers' needs: results from anywhere (JSON)
            entry = entry.model_copy(update={"output_context": context.to_json()})
        except StudyError as error:
            return self._fail(batch_id, source.name, entry, str(error))
        except Exception as error:  # one unreadable study must not stop the batch
            log.exception("cannot submit %s", source.name)
            return self._fail(batch_id, source.name, entry, f"cannot load: {type(error).__name__}: {error}")
        return self.submit_study(batch_id, source.name, study, options, entry)

    def submit_study(
        self, batch_id: str, name: str, study: Study, options: SubmitOptions, entry: StudyEntry | None = None
    ) -> str:
        """Enqueue one loaded study into a batch (or record its stored result); "queued", "cached" or "failed".
        The study is checked by the worker that runs it, not here."""
        entry = entry or StudyEntry(enqueued_at=time.time())
        try:
            staged = self.stage(batch_id, name, study, options)
            message = staged.message
            cached = self._is_stored(staged, options)
            if not cached:
                message = message.model_copy(update={"upload_seconds": self.upload(message.image_digest, study)})
        except (StudyError, StoreError, MessageError) as error:
            return self._fail(batch_id, name, entry, str(error))
        except Exception as error:  # one study that cannot even be staged must not stop the batch
            log.exception("cannot enqueue %s", name)
            return self._fail(batch_id, name, entry, f"cannot enqueue: {type(error).__name__}: {error}")
        sent = {
            "modality": message.modality,
            "image_digest": message.image_digest,
            "queue": message.queue,
            "result_key": staged.result_key,
            "enqueued_at": message.enqueued_at,
        }
        if cached:
            self.ledger.add_study(batch_id, name, entry.model_copy(update=sent))
            self.ledger.record(batch_id, cached_outcome(message, staged.result_key))
            return "cached"
        entry = entry.model_copy(update={**sent, "task_id": str(uuid.uuid4())})
        self.ledger.add_study(batch_id, name, entry)
        self.sender.send(message, entry.task_id, staged.limits)
        return "queued"

    def _is_stored(self, staged: Staged, options: SubmitOptions) -> bool:
        if not staged.result_key or options.force:
            return False
        return self.store.touch(Keys.result_blob(staged.result_key), self.settings.result_ttl)

    def _fail(self, batch_id: str, name: str, entry: StudyEntry, reason: str) -> str:
        self.ledger.add_study(batch_id, name, entry)
        self.ledger.record(batch_id, Outcome(name=name, status="error", error=reason))
        return "failed"

    def stage(self, batch_id: str, name: str, study: Study, options: SubmitOptions) -> Staged:
        """The task message of a study (its content digest), its expected result key and its time limits."""
        queue = self.settings.queue_for(study.modality, options.explicit_queue(study.modality))
        identity = self.identity(queue)
        digest = image_digest(study.image)
        key = ""
        if identity is not None:
            try:
                key = identity.result_key(digest, study.prompts, study.modality)
            except (LookupError, ValueError) as error:
                log.info("%s: no result key (%s); the worker will say what is wrong", name, error)
        check_runnable(study.prompts)  # task messages carry voxel prompts: others refused by name
        message = TaskMessage.create(
            batch_id=batch_id,
            name=name,
            study_id=study.study_id,
            modality=study.modality,
            image_digest=digest,
            image_shape=tuple(study.image.shape),
            **TaskMessage.prompt_fields(study.prompts),
            spacing=study.spacing,
            force=options.force,
            queue=queue,
            enqueued_at=time.time(),
            split=options.split,
        )
        return Staged(
            message, key, self.settings.budget.limits(*study_work(study, known_route(identity, study.modality)))
        )

    def upload(self, digest: str, study: Study) -> float:
        """Put the image in the store unless it is there already; seconds spent."""
        started = time.perf_counter()
        blob_key = Keys.input_blob(digest)
        if not self.store.touch(blob_key, self.settings.input_ttl):
            self.store.put(blob_key, pack_image(study.image), self.settings.input_ttl)
        return time.perf_counter() - started

    # following a batch ------------------------------------------------------------------------------------
    def follow(
        self,
        batch_id: str,
        names: set[str] | None = None,
        timeout: float | None = None,
    ) -> Iterator[tuple[str, Outcome | Progress]]:
        """Yield ("done", Outcome) once per finished study and ("progress", Progress-with-name) as studies run,
        until every study of the batch has an outcome (or `timeout` seconds pass: TimeoutError)."""
        deadline = time.monotonic() + timeout if timeout else None
        pubsub = self.ledger.listen(batch_id)  # subscribe before the first read: no event falls in between
        try:
            yield from self._follow(batch_id, names, pubsub, deadline)
        finally:
            pubsub.close()

    def _follow(self, batch_id, names, pubsub, deadline) -> Iterator[tuple[str, Any]]:
        seen: set[str] = set()
        expected, resync_at = names, 0.0
        while True:
            if time.monotonic() >= resync_at:
                yield from self._resync(batch_id, seen)
                meta = self.ledger.meta(batch_id) if expected is None else None
                if meta is not None and meta.sealed:
                    expected = set(self.ledger.studies(batch_id))  # the submitter has enqueued every study
                resync_at = time.monotonic() + RESYNC_SECONDS
            if expected is not None and expected <= seen:
                return
            if deadline is not None and time.monotonic() > deadline:
                waiting = len(expected - seen) if expected is not None else "some"
                raise TimeoutError(f"batch {batch_id}: {waiting} studies not finished")
            yield from self._events(batch_id, pubsub, seen)

    def _resync(self, batch_id: str, seen: set[str]) -> Iterator[tuple[str, Any]]:
        for name, outcome in self.ledger.outcomes(batch_id).items():
            if name not in seen:
                seen.add(name)
                yield "done", outcome
        for name, progress in self.ledger.progress(batch_id).items():
            if name not in seen:
                yield "progress", (name, progress)

    def _events(self, batch_id: str, pubsub, seen: set[str]) -> Iterator[tuple[str, Any]]:
        message = pubsub.get_message(timeout=0.5)
        while message is not None:
            kind, _, name = message["data"].decode().partition(" ")
            if name not in seen:
                if kind == "done":
                    outcome = self.ledger.outcome(batch_id, name)
                    if outcome is not None:
                        seen.add(name)
                        yield "done", outcome
                elif kind == "progress":
                    progress = self.ledger.progress(batch_id).get(name)
                    if progress is not None:
                        yield "progress", (name, progress)
            message = pubsub.get_message(timeout=0.0)

    def fetch(self, result_key: str) -> ResultRecord | None:
        blob = self.store.get(Keys.result_blob(result_key))
        return ResultRecord.from_bytes(blob) if blob is not None else None


def cached_outcome(message: TaskMessage, result_key: str) -> Outcome:
    """The producer found the result stored: no task; the full metrics come with the result blob."""
    extra = MetricsExtra(
        cached=True,
        cache_hit_by="producer",
        result_key=result_key,
        queue_wait=0.0,
        transfer=Transfer(upload=message.upload_seconds),
    )
    return Outcome(
        name=message.name,
        status="ok",
        modality=message.modality,
        result_key=result_key,
        metrics=StudyMetrics(extra=extra),
    )
