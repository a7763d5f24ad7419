"""One study, as a fleet worker runs it: fetch the image, segment, store the result once, record the outcome.

No Celery here except the soft time-limit exception: worker.tasks wraps this in the task and its retry
policy. Transient Redis faults propagate (the task retries them); everything about the study itself ends
as a final error outcome, so a bad study never loops.
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
from celery.exceptions import SoftTimeLimitExceeded

from worker.contract.arrays import StoreError
from worker.contract.identity import EngineIdentity, image_digest
from worker.contract.keys import Keys
from worker.contract.messages import Outcome, Progress, ResultRecord, TaskMessage, unpack_image
from worker.contract.metrics import MetricsExtra, StudyMetrics, Transfer
from worker.contract.settings import SplitSettings
from worker.contract.study import Study, StudyError
from worker.ledger import BatchLedger
from worker.memory import LIMIT_ENV, MemoryGuard, mb
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


def run_study(ctx: WorkerContext, msg: TaskMessage, delivery: Delivery) -> Outcome:
    started = time.time()
    finished = ctx.ledger.outcome(msg.batch_id, msg.name)
    if finished is not None:
        log.info("%s/%s already has an outcome: duplicate delivery ignored", msg.batch_id, msg.name)
        return finished
    runs = ctx.ledger.count_run(msg.batch_id, msg.name)
    try:
        outcome = _execute(ctx, msg, delivery, started, runs)
    except Superseded as overtaken:  # the recorded outcome stands; this run adds nothing to it
        log.info("%s", overtaken)
        return ctx.ledger.outcome(msg.batch_id, msg.name) or _error(msg, str(overtaken))
    return _finish(ctx, msg, delivery, runs, outcome)


def _finish(ctx: WorkerContext, msg: TaskMessage, delivery: Delivery, runs: int, outcome: Outcome) -> Outcome:
    if not outcome.ok:  # say which worker judged the study, for whoever reads the error
        outcome.metrics = StudyMetrics(
            extra=MetricsExtra(
                node=ctx.node, host=socket.gethostname(), pid=os.getpid(), task_id=delivery.task_id, delivery=runs
            )
        )
    ctx.telemetry.observe(outcome)  # before the outcome is visible: whoever sees it sees it counted
    ctx.ledger.record(msg.batch_id, outcome)
    return outcome


def _execute(ctx: WorkerContext, msg: TaskMessage, delivery: Delivery, started: float, runs: int) -> Outcome:
    if runs - delivery.retries > MAX_DELIVERIES:
        return _error(
            msg,
            f"abandoned: delivered {runs} times and the worker process died each time "
            "(out of memory or a crash in the engine?)",
        )
    try:
        key = ctx.identity.result_key(msg.image_digest, msg.boxes_array(), msg.modality)
    except (LookupError, ValueError) as error:
        return _error(msg, f"cannot route {msg.modality}: {error}")
    if not msg.force:
        cached = _stored(ctx, key)
        if cached is not None:
            return _cached_outcome(ctx, msg, key, cached, started)
    return _compute(ctx, msg, delivery, key, started, runs)


def _compute(ctx: WorkerContext, msg: TaskMessage, delivery: Delivery, key: str, started: float, runs: int) -> Outcome:
    fetch_started = time.perf_counter()
    try:
        study = _fetch_study(ctx, msg)
    except (StudyError, StoreError) as error:
        return _error(msg, str(error))
    fetched = time.perf_counter() - fetch_started
    refusal = ctx.memory.refusal(ctx.engine.memory_needed(study))
    if refusal is not None:
        return _error(msg, refusal)
    ctx.ledger.set_progress(msg.batch_id, msg.name, Progress(done=0, total=0, node=ctx.node, updated_at=time.time()))
    ctx.ledger.count_execution(ctx.node)

    def outgrown(rss: int) -> None:  # the watchdog's last act before it ends this process
        _finish(
            ctx,
            msg,
            delivery,
            runs,
            _error(
                msg,
                (
                    f"memory guard: the worker process reached {mb(rss)} running this study, above its limit of "
                    f"{mb(ctx.memory.limit)} ({LIMIT_ENV}); the process was replaced, the study not retried"
                ),
            ),
        )

    from worker.coordinator import segment_study  # (it imports this module)

    try:
        with ctx.memory.watch(outgrown):
            result = segment_study(
                ctx, msg, delivery, study, key, ProgressPublisher(ctx.ledger, msg.batch_id, msg.name, ctx.node)
            )
    except StudyError as error:
        return _error(msg, str(error))
    except Superseded:
        raise
    except SoftTimeLimitExceeded:
        return _error(
            msg,
            f"time limit: still running after the soft limit of {delivery.soft_limit or '?'} s "
            "(raise LITEMEDSAM_TIME_PER_SLICE or LITEMEDSAM_TIME_BASE for studies this size)",
        )
    except Exception as error:  # the engine failed on this study's data: a final error, the worker lives on
        log.exception("study %s/%s failed in the engine", msg.batch_id, msg.name)
        return _error(msg, f"engine error: {type(error).__name__}: {error}")
    metrics = result.metrics
    metrics.note(**_fleet_extra(ctx, msg, delivery, key, started, runs))
    metrics.transfer().input_download = fetched
    return _store_result(ctx, msg, delivery, key, result.labels, metrics)


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
    metrics.note(**_fleet_extra(ctx, msg, delivery, key, started, runs))
    return _finish(ctx, msg, delivery, runs, _store_result(ctx, msg, delivery, key, labels, metrics))


def _store_result(
    ctx: WorkerContext, msg: TaskMessage, delivery: Delivery, key: str, labels: np.ndarray, metrics: StudyMetrics
) -> Outcome:
    upload_started = time.perf_counter()
    blob_key = Keys.result_blob(key)
    record = ResultRecord(labels, metrics).to_bytes()
    if msg.force and ctx.ledger.claim_forced_write(delivery.task_id):
        ctx.store.put(blob_key, record, ctx.result_ttl)
    elif not ctx.store.put_once(blob_key, record, ctx.result_ttl):
        existing = _stored(ctx, key)  # another delivery stored first: report what is stored, never a second result
        if existing is not None:
            existing.metrics.extra.duplicate_of_stored = True
            return _ok(msg, key, existing.metrics)
    metrics.transfer().result_upload = time.perf_counter() - upload_started
    return _ok(msg, key, metrics)


def fetch_study(ctx: WorkerContext, msg: TaskMessage) -> Study:
    """The study's image from the store (checked against its digest) with its boxes."""
    return _fetch_study(ctx, msg)


def _fetch_study(ctx: WorkerContext, msg: TaskMessage) -> Study:
    blob = ctx.store.get(Keys.input_blob(msg.image_digest))
    if blob is None:
        raise StoreError(f"input image {msg.image_digest[:12]} is no longer in the store (expired?): resubmit")
    image = unpack_image(blob)
    if image_digest(image) != msg.image_digest:
        raise StoreError(f"input image {msg.image_digest[:12]} is corrupt in the store (digest mismatch)")
    return Study(
        study_id=msg.study_id, modality=msg.modality, image=image, boxes=msg.boxes_array(), spacing=msg.spacing
    )


def _stored(ctx: WorkerContext, key: str) -> ResultRecord | None:
    blob = ctx.store.get(Keys.result_blob(key))
    if blob is None:
        return None
    try:
        return ResultRecord.from_bytes(blob)
    except StoreError as error:  # drop it, so the recomputed result can take its place
        log.warning("stored result %s is unreadable (%s): recomputing", key[:12], error)
        ctx.store.delete(Keys.result_blob(key))
        return None


def _cached_outcome(ctx: WorkerContext, msg: TaskMessage, key: str, record: ResultRecord, started: float) -> Outcome:
    ctx.store.touch(Keys.result_blob(key), ctx.result_ttl)
    metrics = record.metrics
    metrics.note(cached=True, cache_hit_by=ctx.node, queue_wait=max(0.0, started - msg.enqueued_at))
    return _ok(msg, key, metrics)


def _fleet_extra(
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


def _ok(msg: TaskMessage, key: str, metrics: StudyMetrics) -> Outcome:
    return Outcome(name=msg.name, status="ok", modality=msg.modality, result_key=key, metrics=metrics)


def _error(msg: TaskMessage, reason: str) -> Outcome:
    return Outcome(name=msg.name, status="error", modality=msg.modality, error=reason)
