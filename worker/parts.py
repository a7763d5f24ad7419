"""The parts of a split study, as a worker runs them (the task is worker.tasks.part; the plan, worker.fanout).

- A slice part encodes its range of the needed slices forward, skipping what the coordinator has passed,
  claiming each slice nobody holds, storing each embedding once (worker.embedding_store), and stops when the
  study is done or at the end of its range. A part whose engine would not compute the same embeddings (another
  model, encoder precision or interpolation) encodes nothing: the coordinator does that work.
- A view (PET tri-view): run one view if nobody holds it (claim renewed while it runs), store its labels (uint16,
  TTL) and mark it landed; whoever lands the third view votes (once: a claim), stores the result through the
  job's write-once path and records the study's outcome. The coordinator runs views through the same functions.
- Delivered like studies: acks late, leases, redelivery when the worker process dies (each delivery counted);
  a part that fails for good (its input unreadable, an engine error, abandoned after MAX_DELIVERIES deaths, its
  time limit) fails its study with the reason.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded

from worker.contract.arrays import StoreError
from worker.contract.messages import Outcome, TaskMessage
from worker.contract.metrics import StudyMetrics
from worker.contract.strategies import VIEWS
from worker.contract.study import Study, StudyError
from worker.embedding_store import Claims, EmbeddingBlobs, pack_exact, unpack_exact
from worker.fanout import SLICES, TRIVIEW_VIEWS, PartMessage, PartReport, SplitBoard, all_landed, part_report
from worker.job_context import (
    MAX_DELIVERIES,
    Delivery,
    ProgressPublisher,
    Superseded,
    WorkerContext,
    fetch_study,
    finish_computed,
)

log = logging.getLogger(__name__)
RENEW_EVERY = 1.0  # seconds between renewals of a view's claim while it runs


class PartFailed(Exception):
    """A part cannot do its work for good: its study fails with this reason."""


def board_for(ctx: WorkerContext, run: str) -> SplitBoard:
    return SplitBoard(ctx.ledger.client, ctx.keys, run, ctx.split.blob_ttl)


def run_part(ctx: WorkerContext, part: PartMessage, delivery: Delivery) -> dict[str, Any]:
    """Run one part; returns its report as the study's metrics show it (the record is in the study's split board;
    empty if the board has none for it)."""
    report = _run_part(ctx, part, delivery)
    return report.for_metrics() if report is not None else {}


def _run_part(ctx: WorkerContext, part: PartMessage, delivery: Delivery) -> PartReport | None:
    msg = TaskMessage.from_wire(part.study)
    board = board_for(ctx, part.run)
    started = time.time()
    if ctx.ledger.has_outcome(msg.batch_id, msg.name) or board.finished():
        return _report(board, part, ctx, "late: the study was done", started)
    runs = board.count_part_run(part.index)
    try:
        if runs - delivery.retries > MAX_DELIVERIES:
            raise PartFailed(f"abandoned: delivered {runs} times and the worker process died each time")
        try:
            study = _study_of(ctx, msg)
        except (StudyError, StoreError) as error:
            raise PartFailed(str(error)) from None
        if part.kind == SLICES:
            return _encode_range(ctx, part, msg, study, board, delivery, started, runs)
        return _view_task(ctx, part, msg, study, board, delivery, started, runs)
    except Superseded as done:
        return _report(board, part, ctx, f"late: {done}", started, delivery=runs)
    except PartFailed as failure:
        fail_study(ctx, part, str(failure))
        return _report(board, part, ctx, f"failed: {failure}", started, delivery=runs)
    except SoftTimeLimitExceeded:
        fail_study(ctx, part, "time limit: the part was still running at its soft time limit")
        return _report(board, part, ctx, "failed: time limit", started, delivery=runs)
    except Exception as error:  # the engine failed on this part's data: a final error for the study
        if _transient(error):
            raise
        log.exception("%s of %s/%s failed", part.label(), msg.batch_id, msg.name)
        fail_study(ctx, part, f"engine error: {type(error).__name__}: {error}")
        return _report(board, part, ctx, f"failed: {type(error).__name__}", started, delivery=runs)


_last_study: tuple[str, Study] | None = None  # a worker often runs several parts of one study in a row


def _study_of(ctx: WorkerContext, msg: TaskMessage) -> Study:
    """The part's study: fetched (and checked against its digest) once for consecutive parts of it."""
    global _last_study
    if _last_study is not None and _last_study[0] == f"{msg.batch_id}/{msg.name}/{msg.image_digest}":
        return _last_study[1]
    _last_study = None
    study = fetch_study(ctx, msg)
    _last_study = (f"{msg.batch_id}/{msg.name}/{msg.image_digest}", study)
    return study


def _transient(error: Exception) -> bool:
    import redis

    return isinstance(error, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))


def fail_study(ctx: WorkerContext, part: PartMessage, reason: str) -> None:
    """Record the study's error outcome (unless it has one) and end its split run."""
    msg = TaskMessage.from_wire(part.study)
    error = f"{part.label()} failed on {ctx.node}: {reason}"
    metrics = StudyMetrics()
    metrics.note(node=ctx.node, split={"failed_part": part.index})
    outcome = Outcome(name=msg.name, status="error", modality=msg.modality, error=error, metrics=metrics)
    if ctx.ledger.record(msg.batch_id, outcome):
        log.error("%s/%s: %s", msg.batch_id, msg.name, error)
    board_for(ctx, part.run).finish()


def _report(
    board: SplitBoard, part: PartMessage, ctx: WorkerContext, state: str, started: float, **counts: Any
) -> PartReport:
    report = part_report(part, ctx.node, state, started, **counts)
    previous = board.part_reports().get(part.index)
    if previous is not None:
        if previous.state.startswith("done") and not state.startswith("done"):
            return previous  # a later, redundant delivery does not hide what the part did
        report = report.keeping(previous)
    board.report_part(report)
    return report


# ---------------------------------------------------------------------------------------------- slice parts


def _encode_range(
    ctx: WorkerContext,
    part: PartMessage,
    msg: TaskMessage,
    study: Study,
    board: SplitBoard,
    delivery: Delivery,
    started: float,
    runs: int,
) -> PartReport:
    if ctx.engine.embedding_space(study) != part.space:
        return _report(
            board,
            part,
            ctx,
            "skipped: this worker's engine computes other embeddings",
            started,
            delivery=runs,
            encoded=0,
        )

    seg = ctx.engine.slice_encoder(study)
    volume = study.image.transpose(VIEWS[part.view].axes)
    blobs = EmbeddingBlobs(ctx.store, part.space, ctx.split.blob_ttl)
    claims = Claims(ctx.ledger.client, ctx.split.claim_ttl)
    owner = f"part{part.index}:{ctx.node}:{delivery.task_id}"
    encoded, skipped, passed, encode_seconds, state = 0, 0, 0, 0.0, "done: range finished"
    for position in range(part.start, part.stop):  # forward, as the propagation needs them
        if board.finished() or ctx.ledger.has_outcome(msg.batch_id, msg.name):
            state = "done: the study finished"
            break
        if position <= board.cursor(part.view):  # the coordinator is there or past it: it has that slice
            passed += 1
            continue
        z = part.slices[position - part.start]
        claim = ctx.keys.slice_claim(part.space, part.view, z)
        if blobs.exists(part.view, z) or not claims.claim(claim, owner):
            skipped += 1
            continue
        try:
            begun = time.perf_counter()
            embedding = seg.encode(volume[z])
            encode_seconds += time.perf_counter() - begun
            if not board.finished():
                blobs.put(part.view, z, embedding)
        finally:
            claims.release(claim, owner)
        encoded += 1
        board.report_part(
            part_report(part, ctx.node, "running", started, delivery=runs, encoded=encoded, skipped=skipped)
        )
    return _report(
        board,
        part,
        ctx,
        state,
        started,
        delivery=runs,
        encoded=encoded,
        skipped=skipped,
        passed=passed,
        encode_seconds=round(encode_seconds, 3),
    )


# ---------------------------------------------------------------------------------------------- PET views


class ViewRunner:
    """Runs tri-view views of one split study on this worker and joins them; used by the coordinator and by
    view tasks alike."""

    def __init__(
        self,
        ctx: WorkerContext,
        msg: TaskMessage,
        study: Study,
        run: str,
        result_key: str,
        coordinator_task: str,
        steps: int,
        owner: str,
        publisher: ProgressPublisher,
    ):
        self.ctx, self.msg, self.study, self.run = ctx, msg, study, run
        self.result_key, self.coordinator_task, self.steps = result_key, coordinator_task, steps
        self.owner, self.publisher = owner, publisher
        self.board = board_for(ctx, run)
        self.claims = Claims(ctx.ledger.client, ctx.split.claim_ttl)

    def claim(self, view: str) -> bool:
        """Claim a view to run it; False if someone holds it or it landed meanwhile."""
        key = self.ctx.keys.view_claim(self.run, view)
        if not self.claims.claim(key, self.owner):
            return False
        if view in self.board.landed():
            self.claims.release(key, self.owner)
            return False
        return True

    def held(self, view: str) -> bool:
        return self.claims.holder(self.ctx.keys.view_claim(self.run, view)) is not None

    def run_view(self, view: str, by: str) -> int:
        """Run a view this worker has claimed, store its labels, land it; returns the views landed."""
        key = self.ctx.keys.view_claim(self.run, view)
        started = time.time()
        renewed = [time.monotonic()]

        def tick(done: int, total: int) -> None:
            if time.monotonic() - renewed[0] >= RENEW_EVERY:
                self.claims.renew(key, self.owner)
                renewed[0] = time.monotonic()
            self.publisher(self.board.set_view_progress(view, done), self.steps)

        try:
            result = self.ctx.engine.segment_view(self.study, view, progress=tick)
            stored = pack_exact(result.labels.astype(np.uint16, copy=False))
            self.ctx.store.put_once(self.ctx.keys.view_blob(self.run, view), stored, self.ctx.split.blob_ttl)
            index = TRIVIEW_VIEWS.index(view)
            self.board.report_part(
                PartReport(
                    part=index,
                    kind="view",
                    view=view,
                    node=self.ctx.node,
                    by=by,
                    state="done",
                    started_at=started,
                    seconds=round(time.time() - started, 3),
                    encoded=result.metrics.counts.slices_encoded,
                    metrics=result.metrics.to_dict(),
                )
            )
            return self.board.land(view)  # before the claim goes: nobody starts this view again in between
        finally:
            self.claims.release(key, self.owner)

    def vote(self) -> tuple[np.ndarray, StudyMetrics] | None:
        """If this worker wins the vote claim and the three views are stored: the voted labels and the study's
        metrics; None otherwise (someone else votes, or a view's labels were lost and must run again)."""
        key = self.ctx.keys.vote_claim(self.run)
        if not self.claims.claim(key, self.owner):
            return None
        views = []
        for view in TRIVIEW_VIEWS:
            blob = self.ctx.store.get(self.ctx.keys.view_blob(self.run, view))
            labels = None
            if blob is not None:
                try:
                    labels = unpack_exact(blob, np.uint16, self.study.image.shape)
                except StoreError as error:
                    log.warning("view %s of %s unreadable (%s): it runs again", view, self.msg.name, error)
            if labels is None:
                self.board.unland(view)
                self.claims.release(key, self.owner)
                return None
            views.append(labels)
        reports = self.board.part_reports()
        metrics = combined_metrics(
            [(reports[i].metrics or {}) if i in reports else {} for i in range(len(TRIVIEW_VIEWS))]
        )
        labels = self.ctx.engine.vote(views, metrics)
        split = {
            "mode": "views",
            "run": self.run,
            "voted_by": self.ctx.node,
            "parts": [reports[i].for_metrics(with_metrics=False) for i in sorted(reports)],
        }
        metrics.extra.split = split
        return labels, metrics

    def cleanup(self) -> None:
        for view in TRIVIEW_VIEWS:
            self.ctx.store.delete(self.ctx.keys.view_blob(self.run, view))

    def finish_vote(self, labels: np.ndarray, metrics: StudyMetrics, started: float) -> Outcome:
        """A view task that voted: store the result once and record the outcome, as the coordinator would."""
        delivery = Delivery(self.coordinator_task)
        runs = self.ctx.ledger.runs(self.msg.batch_id).get(self.msg.name, 1)
        outcome = finish_computed(self.ctx, self.msg, delivery, self.result_key, started, runs, labels, metrics)
        self.board.finish()
        self.cleanup()
        return outcome


def combined_metrics(per_view: list[dict[str, Any]]) -> StudyMetrics:
    """The study's metrics from its views' metrics: stage times and counts added up (boxes once)."""
    views = [StudyMetrics.model_validate(m) for m in per_view if m]
    combined = StudyMetrics()
    if not views:
        return combined
    for name in type(combined.times).model_fields:
        setattr(combined.times, name, sum(getattr(v.times, name) for v in views))
    for name in type(combined.counts).model_fields:
        setattr(combined.counts, name, sum(getattr(v.counts, name) for v in views))
    combined.counts.boxes = views[0].counts.boxes
    combined.provenance = views[0].provenance.model_copy()
    combined.note(**{k: v for k, v in views[0].extra.model_dump(exclude_none=True).items() if k != "view"})
    return combined


def _view_task(
    ctx: WorkerContext,
    part: PartMessage,
    msg: TaskMessage,
    study: Study,
    board: SplitBoard,
    delivery: Delivery,
    started: float,
    runs: int,
) -> PartReport | None:
    publisher = ProgressPublisher(ctx.ledger, msg.batch_id, msg.name, ctx.node)
    runner = ViewRunner(
        ctx,
        msg,
        study,
        part.run,
        part.result_key,
        part.coordinator_task,
        part.steps,
        f"view-task:{ctx.node}:{delivery.task_id}",
        publisher,
    )
    if part.view in board.landed():
        return _report(board, part, ctx, "late: the view was done", started, delivery=runs)
    if not runner.claim(part.view):
        return _report(board, part, ctx, "late: another worker runs this view", started, delivery=runs)
    landed = runner.run_view(part.view, by="view task")
    if all_landed(landed):
        voted = runner.vote()
        if voted is not None:
            outcome = runner.finish_vote(*voted, started=msg.enqueued_at or started)
            log.info("%s/%s: voted on %s (%s)", msg.batch_id, msg.name, ctx.node, outcome.status)
    return board.part_reports().get(part.index)
