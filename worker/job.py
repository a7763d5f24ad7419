"""One study, as a fleet worker runs it: fetch the image, segment, store the result once, record the outcome.

No Celery here except the soft time-limit exception: worker.tasks wraps this in the task and its retry
policy. Transient Redis faults propagate (the task retries them); everything about the study itself ends
as a final error outcome, so a bad study never loops.
"""

from __future__ import annotations

import logging
import time

from celery.exceptions import SoftTimeLimitExceeded

from worker.contract.arrays import StoreError
from worker.contract.keys import Keys
from worker.contract.messages import Outcome, Progress, ResultRecord, TaskMessage
from worker.contract.study import StudyError
from worker.coordinator import segment_study
from worker.job_context import (
    MAX_DELIVERIES,
    Delivery,
    ProgressPublisher,
    Superseded,
    WorkerContext,
    error_outcome,
    fetch_study,
    fleet_extra,
    ok_outcome,
    record_outcome,
    store_result,
    stored_result,
)
from worker.memory import LIMIT_ENV, mb

log = logging.getLogger(__name__)


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
        return ctx.ledger.outcome(msg.batch_id, msg.name) or error_outcome(msg, str(overtaken))
    return record_outcome(ctx, msg, delivery, runs, outcome)


def _execute(ctx: WorkerContext, msg: TaskMessage, delivery: Delivery, started: float, runs: int) -> Outcome:
    if runs - delivery.retries > MAX_DELIVERIES:
        return error_outcome(
            msg,
            f"abandoned: delivered {runs} times and the worker process died each time "
            "(out of memory or a crash in the engine?)",
        )
    try:
        prompts = msg.prompts()
    except StudyError as error:  # a box array that is no prompts (a producer that skipped its checks)
        return error_outcome(msg, str(error))
    try:
        key = ctx.identity.result_key(msg.image_digest, prompts, msg.modality)
    except (LookupError, ValueError) as error:
        return error_outcome(msg, f"cannot route {msg.modality}: {error}")
    if not msg.force:
        cached = stored_result(ctx, key)
        if cached is not None:
            return _cached_outcome(ctx, msg, key, cached, started)
    return _compute(ctx, msg, delivery, key, started, runs)


def _compute(ctx: WorkerContext, msg: TaskMessage, delivery: Delivery, key: str, started: float, runs: int) -> Outcome:
    fetch_started = time.perf_counter()
    try:
        study = fetch_study(ctx, msg)
    except (StudyError, StoreError) as error:
        return error_outcome(msg, str(error))
    fetched = time.perf_counter() - fetch_started
    refusal = ctx.memory.refusal(ctx.engine.memory_needed(study))
    if refusal is not None:
        return error_outcome(msg, refusal)
    ctx.ledger.set_progress(msg.batch_id, msg.name, Progress(done=0, total=0, node=ctx.node, updated_at=time.time()))
    ctx.ledger.count_execution(ctx.node)

    def outgrown(rss: int) -> None:  # the watchdog's last act before it ends this process
        record_outcome(
            ctx,
            msg,
            delivery,
            runs,
            error_outcome(
                msg,
                (
                    f"memory guard: the worker process reached {mb(rss)} running this study, above its limit of "
                    f"{mb(ctx.memory.limit)} ({LIMIT_ENV}); the process was replaced, the study not retried"
                ),
            ),
        )

    try:
        with ctx.memory.watch(outgrown):
            result = segment_study(
                ctx, msg, delivery, study, key, ProgressPublisher(ctx.ledger, msg.batch_id, msg.name, ctx.node)
            )
    except StudyError as error:
        return error_outcome(msg, str(error))
    except Superseded:
        raise
    except SoftTimeLimitExceeded:
        return error_outcome(
            msg,
            f"time limit: still running after the soft limit of {delivery.soft_limit or '?'} s "
            "(raise LITEMEDSAM_TIME_PER_SLICE or LITEMEDSAM_TIME_BASE for studies this size)",
        )
    except Exception as error:  # the engine failed on this study's data: a final error, the worker lives on
        log.exception("study %s/%s failed in the engine", msg.batch_id, msg.name)
        return error_outcome(msg, f"engine error: {type(error).__name__}: {error}")
    metrics = result.metrics
    metrics.note(**fleet_extra(ctx, msg, delivery, key, started, runs))
    metrics.transfer().input_download = fetched
    return store_result(ctx, msg, delivery, key, result.labels, metrics)


def _cached_outcome(ctx: WorkerContext, msg: TaskMessage, key: str, record: ResultRecord, started: float) -> Outcome:
    ctx.store.touch(Keys.result_blob(key), ctx.result_ttl)
    metrics = record.metrics
    metrics.note(cached=True, cache_hit_by=ctx.node, queue_wait=max(0.0, started - msg.enqueued_at))
    return ok_outcome(msg, key, metrics)
