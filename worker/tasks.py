"""The Celery task: one study per message, JSON in, a small JSON summary out (the result lives in the store).

A message sent in another namespace (its header, worker.contract.keys.NAMESPACE_HEADER) is not run: it goes back to
its owner's queue or is kept aside (worker.misrouted), before anything touches this namespace's ledger.

Retry policy: only transient faults of Redis (connection lost, timeouts) are retried, with exponential
backoff and jitter. Anything about the study is a final error outcome (worker.job). A hard time limit or a
task that fails for good is still recorded as the study's error outcome (task_failure handler below), so a
waiting producer always gets an answer.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import redis
from celery import Task, shared_task, signals
from celery.exceptions import Reject, TimeLimitExceeded

from worker import misrouted, process
from worker.contract.keys import NAMESPACE_CONF, NAMESPACE_HEADER, Keys
from worker.contract.messages import MessageError, Outcome, TaskMessage
from worker.contract.settings import PART_TASK_NAME, SESSION_TASK_NAME, TASK_NAME, FleetSettings, redis_client
from worker.contract.strategies import STRATEGIES, TRIVIEW
from worker.job import run_study
from worker.job_context import Delivery, WorkerContext
from worker.ledger import BatchLedger

log = logging.getLogger(__name__)
TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class SegmentTask(Task):
    acks_late = True
    reject_on_worker_lost = True
    autoretry_for = TRANSIENT
    retry_backoff = 2
    retry_backoff_max = 120
    retry_jitter = True
    max_retries = 8
    ignore_result = True


@shared_task(bind=True, base=SegmentTask, name=TASK_NAME)
def segment(self, payload: dict) -> dict:
    if not is_own(self):
        return _refuse(self, payload)
    try:
        msg = TaskMessage.from_wire(payload)
    except MessageError as error:
        log.error("malformed task message dropped: %s", error)
        return {"status": "error", "error": f"malformed message: {error}"}
    ctx, delivery = _context_and_delivery(self)
    if ctx.send_part is None:
        ctx.send_part = PartSender(self.app, own_namespace(self))
    outcome = run_study(ctx, msg, delivery)
    return {"name": outcome.name, "status": outcome.status, "error": outcome.error, "result_key": outcome.result_key}


class PartSender:
    """Sends the parts of a split study (worker.fanout) to the study's queue, in this namespace, with time limits
    sized to their work."""

    def __init__(self, app, namespace: str):
        self.app, self.namespace = app, namespace
        self.budget = FleetSettings.from_env().budget

    def __call__(self, part, queue: str) -> None:
        work = len(part.slices) if part.slices else max(1, part.steps // STRATEGIES[TRIVIEW].view_count)
        soft, hard = self.budget.limits(work, len(part.study.get("boxes") or ()), 1)
        self.app.send_task(
            PART_TASK_NAME,
            args=[part.to_wire()],
            queue=queue,
            soft_time_limit=soft,
            time_limit=hard,
            headers={NAMESPACE_HEADER: self.namespace},
        )


@shared_task(bind=True, base=SegmentTask, name=PART_TASK_NAME)
def part(self, payload: dict) -> dict:
    """One part of a split study (worker.parts): a range of slices to encode, or one PET view."""
    from worker.fanout import PartMessage
    from worker.parts import run_part

    if not is_own(self):
        return _refuse(self, payload)
    try:
        message = PartMessage.from_wire(payload)
        TaskMessage.from_wire(message.study)
    except MessageError as error:
        log.error("malformed part message dropped: %s", error)
        return {"state": f"malformed message: {error}"}
    ctx, delivery = _context_and_delivery(self)
    return run_part(ctx, message, delivery)


@shared_task(bind=True, name=SESSION_TASK_NAME, acks_late=False, ignore_result=True)
def session_step(self, payload: dict) -> dict:
    """One interaction of a session (worker.sessions). Acknowledged on receipt: a step whose worker dies is
    re-sent by the gateway (which sees its busy mark lapse), never redelivered here."""
    from worker.contract.sessions import SessionStep
    from worker.sessions import close_watcher, process_cache, serve_step

    if not is_own(self):
        log.error("session step %s of another namespace dropped", self.request.id)
        return {"status": "refused"}
    try:
        step = SessionStep.from_wire(payload)
    except MessageError as error:
        log.error("malformed session step dropped: %s", error)
        return {"status": "error", "error": f"malformed message: {error}"}
    ctx = process.context()
    if ctx is None:
        raise Reject(f"engine unavailable: {process.failure()}", requeue=True)
    reply = serve_step(ctx, process_cache(ctx), step, close_watcher())
    return {"status": "error" if reply.error else "ok", "node": reply.node}


def _context_and_delivery(task: Task) -> tuple[WorkerContext, Delivery]:
    """This process's worker context and the delivery being run. A child that could not build its engine (it is
    shutting the worker down) gives the message back."""
    ctx = process.context()
    if ctx is None:
        raise Reject(f"engine unavailable: {process.failure()}", requeue=True)
    _, soft = task.request.timelimit or (None, None)
    return ctx, Delivery(task.request.id, task.request.retries, soft)


def _refuse(task: Task, payload: dict) -> dict:
    """A message sent in another namespace: hand it back to its owner's queue or keep it aside (worker.misrouted)."""
    ledger = _ledger()
    return misrouted.refuse(
        task.app,
        Keys(own_namespace(task)),
        ledger.client,
        ledger.ttl,
        payload,
        task.request,
        task.request.hostname or "",
    )


def own_namespace(task: Task) -> str:
    return task.app.conf[NAMESPACE_CONF]


def is_own(task: Task) -> bool:
    """The message being run was sent in this worker's namespace."""
    return misrouted.sender_namespace(task.request) == own_namespace(task)


@lru_cache(maxsize=1)
def _ledger() -> BatchLedger:
    """A ledger for the process handling a failure (the pool child, or the parent on a hard time limit)."""
    settings = FleetSettings.from_env()
    return BatchLedger(redis_client(settings.broker_url), Keys(settings.namespace), settings.batch_ttl)


def failure_reason(exception: BaseException) -> str:
    if isinstance(exception, TimeLimitExceeded):
        seconds = exception.args[0] if exception.args else "?"
        return (
            f"time limit: the worker process was killed at the hard limit ({seconds} s); "
            "raise LITEMEDSAM_TIME_PER_SLICE or LITEMEDSAM_TIME_BASE for studies this size"
        )
    return f"failed: {type(exception).__name__}: {exception}"


@signals.task_failure.connect
def on_task_failure(sender=None, task_id=None, exception=None, args=None, **_) -> None:
    if getattr(sender, "name", None) == PART_TASK_NAME and args:
        _part_failed(sender, task_id, exception, args[0])
        return
    if getattr(sender, "name", None) != TASK_NAME or not args:
        return
    sent_in = misrouted.sender_namespace(sender.request)  # None in the parent (hard time limit): no request
    if sent_in is not None and sent_in != own_namespace(sender):
        log.error("task %s of namespace %r failed while being refused; not recorded here", task_id, sent_in)
        return
    try:
        msg = TaskMessage.from_wire(args[0])
        outcome = Outcome(name=msg.name, status="error", modality=msg.modality, error=failure_reason(exception))
        if _ledger().record(msg.batch_id, outcome):
            log.error("%s/%s: %s", msg.batch_id, msg.name, outcome.error)
    except Exception:
        log.exception("could not record the failure of task %s", task_id)


def _part_failed(sender, task_id, exception, payload) -> None:
    """A part that failed for good (its retries spent, its hard time limit) fails its study with the reason."""
    sent_in = misrouted.sender_namespace(sender.request)
    if sent_in is not None and sent_in != own_namespace(sender):
        return
    try:
        from worker.fanout import PartMessage, SplitBoard

        part = PartMessage.from_wire(payload)
        msg = TaskMessage.from_wire(part.study)
        ledger = _ledger()
        error = f"{part.label()} failed: {failure_reason(exception)}"
        if ledger.record(msg.batch_id, Outcome(name=msg.name, status="error", modality=msg.modality, error=error)):
            log.error("%s/%s: %s", msg.batch_id, msg.name, error)
        SplitBoard(ledger.client, ledger.keys, part.run, FleetSettings.from_env().split.blob_ttl).finish()
    except Exception:
        log.exception("could not record the failure of part task %s", task_id)
