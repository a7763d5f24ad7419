"""What a fleet worker's study run and the parts of a split study share: the worker process's context, one
delivery, progress publishing, and the steps both end with (fetch the study, store its result once, record the
outcome). worker.job runs a whole study with them, worker.coordinator and worker.parts a split one; none of those
imports another to reach these.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from worker.contract.arrays import StoreError
from worker.contract.identity import EngineIdentity, image_digest
from worker.contract.keys import Keys
from worker.contract.messages import Outcome, Progress, ResultRecord, TaskMessage, unpack_image
from worker.contract.metrics import MetricsExtra, StudyMetrics, Transfer
from worker.contract.settings import SplitSettings
from worker.contract.study import Study
from worker.ledger import BatchLedger
from worker.memory import MemoryGuard
from worker.store import BlobStore

log = logging.getLogger(__name__)
MAX_DELIVERIES = 3  # a study whose worker process died this many times is not started again
PROGRESS_INTERVAL = 0.25  # seconds between progress writes


class Segmenter(Protocol):
    def segment(self, study: Study, progress=None): ...

    def memory_needed(self, study: Study) -> int: ...


class Telemetry(Protocol):
    def observe(self, outcome: Outcome) -> None: ...


class NoTelemetry:
    def observe(self, outcome: Outcome) -> None:
        return None


@dataclass
class WorkerContext:
    """What one worker process holds for its whole life."""

    engine: Segmenter
    identity: EngineIdentity
    store: BlobStore
    ledger: BatchLedger
    result_ttl: int
    node: str
    telemetry: Telemetry = field(default_factory=NoTelemetry)
    keys: Keys = field(default_factory=Keys)
    memory: MemoryGuard = field(default_factory=lambda: MemoryGuard(0))
    split: SplitSettings = field(default_factory=SplitSettings)
    # sends a part of a split study (worker.fanout.PartMessage, queue) as a task; None: studies are never split
    send_part: Callable[[Any, str], None] | None = None


@dataclass(frozen=True)
class Delivery:
    """The Celery side of one execution."""

    task_id: str
    retries: int = 0
    soft_limit: float | None = None


class Superseded(Exception):
    """Another delivery of this study recorded its outcome while this one ran: this run stops, stores nothing."""


class ProgressPublisher:
    """The engine's progress callback: slices done/total to Redis, at most every PROGRESS_INTERVAL seconds.

    Each time, it first looks whether the study has an outcome already. One appears while this run goes on
    when another delivery of the same study finished first: this worker lost its lease (a network partition
    that kept it from renewing, a pause longer than the visibility timeout) and the study ran elsewhere. Then
    the engine is stopped (Superseded) instead of spending the rest of the study on work that is done."""

    def __init__(self, ledger: BatchLedger, batch_id: str, name: str, node: str):
        self.ledger, self.batch_id, self.name, self.node = ledger, batch_id, name, node
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.time()
        if done < total and now - self._last < PROGRESS_INTERVAL:
            return
        self._last = now
        try:
            finished = self.ledger.has_outcome(self.batch_id, self.name)
            if not finished:
                self.ledger.set_progress(
                    self.batch_id, self.name, Progress(done=done, total=total, node=self.node, updated_at=now)
                )
        except Exception as error:  # progress is best effort: never fail a study over it
            log.warning("progress for %s not published: %s", self.name, error)
            return
        if finished:
            raise Superseded(
                f"another delivery recorded the outcome of {self.batch_id}/{self.name}; this run "
                f"stopped after {done} of {total} slice steps"
            )


def record_outcome(ctx: WorkerContext, msg: TaskMessage, delivery: Delivery, runs: int, outcome: Outcome) -> Outcome:
    if not outcome.ok:  # say which worker judged the study, for whoever reads the error
        outcome.metrics = StudyMetrics(
            extra=MetricsExtra(
                node=ctx.node, host=socket.gethostname(), pid=os.getpid(), task_id=delivery.task_id, delivery=runs
            )
        )
    ctx.telemetry.observe(outcome)  # before the outcome is visible: whoever sees it sees it counted
    ctx.ledger.record(msg.batch_id, outcome)
    return outcome


def finish_computed(
    ctx: WorkerContext,
    msg: TaskMessage,
    delivery: Delivery,
    key: str,
    started: float,
    runs: int,
    labels: np.ndarray,
    metrics: StudyMetrics,
) -> Outcome:
    """Store a result computed outside this study's own task (the vote of a split PET study, worker.parts) once
    and record the study's outcome, as the study's task does."""
    metrics.note(**fleet_extra(ctx, msg, delivery, key, started, runs))
    return record_outcome(ctx, msg, delivery, runs, store_result(ctx, msg, delivery, key, labels, metrics))


def store_result(
    ctx: WorkerContext, msg: TaskMessage, delivery: Delivery, key: str, labels: np.ndarray, metrics: StudyMetrics
) -> Outcome:
    upload_started = time.perf_counter()
    blob_key = Keys.result_blob(key)
    record = ResultRecord(labels, metrics).to_bytes()
    if msg.force and ctx.ledger.claim_forced_write(delivery.task_id):
        ctx.store.put(blob_key, record, ctx.result_ttl)
    elif not ctx.store.put_once(blob_key, record, ctx.result_ttl):
        # another delivery stored first: report what is stored, never a second result
        existing = stored_result(ctx, key)
        if existing is not None:
            existing.metrics.extra.duplicate_of_stored = True
            return ok_outcome(msg, key, existing.metrics)
    metrics.transfer().result_upload = time.perf_counter() - upload_started
    return ok_outcome(msg, key, metrics)


def fetch_study(ctx: WorkerContext, msg: TaskMessage) -> Study:
    """The study's image from the store (checked against its digest) with its boxes."""
    blob = ctx.store.get(Keys.input_blob(msg.image_digest))
    if blob is None:
        raise StoreError(f"input image {msg.image_digest[:12]} is no longer in the store (expired?): resubmit")
    image = unpack_image(blob)
    if image_digest(image) != msg.image_digest:
        raise StoreError(f"input image {msg.image_digest[:12]} is corrupt in the store (digest mismatch)")
    return Study(study_id=msg.study_id, modality=msg.modality, image=image, prompts=msg.prompts(), spacing=msg.spacing)


def stored_result(ctx: WorkerContext, key: str) -> ResultRecord | None:
    blob = ctx.store.get(Keys.result_blob(key))
    if blob is None:
        return None
    try:
        return ResultRecord.from_bytes(blob)
    except StoreError as error:  # drop it, so the recomputed result can take its place
        log.warning("stored result %s is unreadable (%s): recomputing", key[:12], error)
        ctx.store.delete(Keys.result_blob(key))
        return None


def fleet_extra(
    ctx: WorkerContext, msg: TaskMessage, delivery: Delivery, key: str, started: float, runs: int
) -> dict[str, Any]:
    return {
        "cached": False,
        "result_key": key,
        "batch_id": msg.batch_id,
        "task_id": delivery.task_id,
        "queue": msg.queue,
        "node": ctx.node,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "delivery": runs,
        "enqueued_at": msg.enqueued_at,
        "started_at": started,
        "queue_wait": max(0.0, started - msg.enqueued_at),
        "transfer": Transfer(upload=msg.upload_seconds),
    }


def ok_outcome(msg: TaskMessage, key: str, metrics: StudyMetrics) -> Outcome:
    return Outcome(name=msg.name, status="ok", modality=msg.modality, result_key=key, metrics=metrics)


def error_outcome(msg: TaskMessage, reason: str) -> Outcome:
    return Outcome(name=msg.name, status="error", modality=msg.modality, error=reason)
