"""The coordinator of a study: the worker that took the study task decides whether to split it (worker.fanout)
and, if so, sends its parts and runs the study with them.

- Not split (2D, small, busy queue, `--split off`, no part sender): the engine runs it exactly as before; the
  metrics say why in `extra.split`.
- Split by slices (3D propagation): the parts go to the study's queue (the range needed last first), and the
  engine runs the propagation here with a CooperativeSource (worker.cooperative) in place of local encoding.
  At the end the run is marked finished (late parts stop at once), its stored embeddings are deleted, and the
  parts' reports go into the study's metrics.
- Split by views (PET tri-view): two view tasks go out; the coordinator runs every view nobody holds (so a lone
  worker runs all three), then waits only for views another worker is running while their claims live; whoever
  lands the last view votes (worker.parts.ViewRunner).
"""

from __future__ import annotations

import logging
import time

from worker.contract.messages import TaskMessage
from worker.contract.strategies import AXIAL, VIEWS
from worker.contract.study import Segmentation, Study
from worker.cooperative import CooperativeSource
from worker.embedding_store import Claims, EmbeddingBlobs
from worker.fanout import (
    COORDINATOR_VIEW,
    SLICES,
    TRIVIEW_VIEWS,
    VIEWS_MODE,
    PartMessage,
    SplitDecision,
    all_landed,
    decide,
    not_started,
    run_id,
)
from worker.job_context import Delivery, ProgressPublisher, Superseded, WorkerContext
from worker.parts import ViewRunner

log = logging.getLogger(__name__)
WAIT_POLL = 0.2


def segment_study(
    ctx: WorkerContext, msg: TaskMessage, delivery: Delivery, study: Study, key: str, progress: ProgressPublisher
) -> Segmentation:
    decision = _decision(ctx, msg, study)
    if decision is None or not decision.split:
        result = ctx.engine.segment(study, progress=progress)
        if decision is not None:
            result.metrics.extra.split = decision.describe()
        return result
    run = run_id(msg.batch_id, msg.name, delivery.task_id)
    log.info("%s/%s: split (%s), run %s", msg.batch_id, msg.name, decision.reason, run)
    if decision.mode == SLICES:
        return _by_slices(ctx, msg, delivery, study, key, progress, decision, run)
    return _by_views(ctx, msg, delivery, study, key, progress, decision, run)


def _decision(ctx: WorkerContext, msg: TaskMessage, study: Study) -> SplitDecision | None:
    """None where splitting cannot apply at all (no part sender: an embedded-like context, or an engine
    without routing; or prompts that are not box-only)."""
    routing = getattr(ctx.engine, "routing", None)
    if ctx.send_part is None or routing is None or not study.prompts.boxes_only:
        return None  # (prompts with clicks run labelwise, in one process: worker.engine.labelwise)
    from worker.contract.validation import check_study

    check_study(study, ctx.engine.settings.max_voxels)  # a malformed study is refused before any planning
    strategy = routing.route(study.modality).strategy(study.is_3d)
    waiting = int(ctx.ledger.client.llen(ctx.keys.queue(msg.queue))) if msg.queue else 0
    return decide(strategy, tuple(study.image.shape), study.prompts.box_array(), ctx.split, msg.split, waiting)


def _send(ctx: WorkerContext, msg: TaskMessage, parts: list[PartMessage]) -> None:
    for part in parts:
        ctx.send_part(part, msg.queue)


def _by_slices(ctx, msg, delivery, study, key, progress, decision, run) -> Segmentation:
    from worker.fanout import SplitBoard

    space = ctx.engine.embedding_space(study)
    order = decision.orders[AXIAL]
    parts = [
        PartMessage(
            kind=SLICES,
            run=run,
            index=index,
            parts=len(decision.ranges),
            view=AXIAL,
            study=msg.to_wire(),
            result_key=key,
            coordinator=ctx.node,
            coordinator_task=delivery.task_id,
            space=space,
            start=start,
            stop=stop,
            slices=order[start:stop],
            steps=decision.steps,
            enqueued_at=time.time(),
        )
        for index, (start, stop) in enumerate(decision.ranges)
    ]
    board = SplitBoard(ctx.ledger.client, ctx.keys, run, ctx.split.blob_ttl)
    blobs = EmbeddingBlobs(ctx.store, space, ctx.split.blob_ttl)
    ahead = ctx.engine.slice_encoder(study)  # the same model and settings as the engine's own run
    axial = study.image.transpose(VIEWS[AXIAL].axes)  # as parts see it
    source = CooperativeSource(
        blobs,
        Claims(ctx.ledger.client, ctx.split.claim_ttl),
        ctx.keys,
        board,
        decision.orders,
        f"coordinator:{ctx.node}:{delivery.task_id}",
        ctx.split.prefetch,
        wait_max=2 * ctx.split.claim_ttl,
        encode_slice=lambda view, z: ahead.encode(axial[z]),
    )
    _send(ctx, msg, parts)  # in the order the propagation needs their slices
    try:
        result = ctx.engine.segment(study, progress=progress, source=source)
    finally:
        source.close()
        _end_run(board, blobs, order)
    # slices encoded ahead ran on their own segmenter: count them with the engine's
    result.metrics.counts.slices_encoded += source.stats.encoded_ahead
    result.metrics.times.encode += source.stats.ahead_seconds
    try:
        reports = board.part_reports()
    except Exception as error:  # the masks are done: metrics without the parts' reports rather than no result
        log.warning("%s/%s: parts' reports unavailable (%s)", msg.batch_id, msg.name, error)
        reports = {}
    result.metrics.extra.split = {
        **decision.describe(),
        "run": run,
        "coordinator": {"node": ctx.node, **source.stats.as_dict()},
        "parts": [reports[p.index].for_metrics() if p.index in reports else not_started(p.index) for p in parts],
    }
    return result


def _end_run(board, blobs: EmbeddingBlobs, order: list[int]) -> None:
    """Late parts stop at once; the run's embeddings leave the store (else their TTL ends them)."""
    try:
        board.finish()
        blobs.delete(AXIAL, order)
    except Exception as error:
        log.warning("split run %s not cleaned up (%s): its keys expire by themselves", board.run, error)


def _by_views(ctx, msg, delivery, study, key, progress, decision, run) -> Segmentation:
    others = [view for view in TRIVIEW_VIEWS if view != COORDINATOR_VIEW]
    parts = [
        PartMessage(
            kind=VIEWS_MODE,
            run=run,
            index=TRIVIEW_VIEWS.index(view),
            parts=len(TRIVIEW_VIEWS),
            view=view,
            study=msg.to_wire(),
            result_key=key,
            coordinator=ctx.node,
            coordinator_task=delivery.task_id,
            steps=decision.steps,
            enqueued_at=time.time(),
        )
        for view in others
    ]
    runner = ViewRunner(
        ctx,
        msg,
        study,
        run,
        key,
        delivery.task_id,
        decision.steps,
        f"coordinator:{ctx.node}:{delivery.task_id}",
        progress,
    )
    _send(ctx, msg, parts)
    try:
        voted = _run_views(ctx, msg, runner)
    except BaseException:
        runner.board.finish()
        raise
    labels, metrics = voted
    runner.board.finish()
    runner.cleanup()
    metrics.extra.split = {**decision.describe(), **(metrics.extra.split or {})}
    return Segmentation(study.study_id, labels, metrics)


def _run_views(ctx: WorkerContext, msg: TaskMessage, runner) -> tuple:
    """Run every view nobody holds; wait for those others hold while their claims live; vote if this worker lands
    last (or the last lander's vote never came). Superseded if another worker recorded the outcome."""
    while True:
        if ctx.ledger.has_outcome(msg.batch_id, msg.name):
            raise Superseded(f"{msg.batch_id}/{msg.name}: another worker voted and recorded the outcome")
        landed = runner.board.landed()
        if all_landed(landed):
            voted = runner.vote()
            if voted is not None:
                return voted
        else:
            ran = False
            for view in TRIVIEW_VIEWS:
                if view not in landed and runner.claim(view):
                    runner.run_view(view, by="coordinator")
                    ran = True
            if ran:
                continue
        time.sleep(WAIT_POLL)
