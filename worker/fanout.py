"""Fan-out of one big study across the fleet: whether to split it, into which parts, and the parts' bookkeeping.

Why this design (issue 12). The encoder is most of a 3D study's time and each slice's embedding can be
computed anywhere; the propagation itself is sequential (each slice's prompt comes from the previous mask) and
stays on one worker, the coordinator (the worker that took the study task). So:

- 3D propagation (CT, MR): cooperative slice encoding with claims. Parts are tasks on the study's queue, each a
  range of the needed slices in the order the propagation needs them (up sweep, then down sweep), sent in that
  order. A part walks its range forward, skipping what the coordinator has passed, claiming each slice nobody
  holds (worker.embedding_store.Claims), encoding it and storing its exact float32 embedding. The coordinator
  walks forward too and takes each slice from its cache, the store, or encodes it itself; when a part holds the
  slice it needs, it encodes the next free slice ahead meanwhile (worker.cooperative), so it decodes what the
  parts have ready and fills the gaps, and neither idles. (Parts walking backwards from the far end, the first
  design, left the coordinator decoding the far half alone after they met: 52 s against 39 s ideal on
  3DBox_CT_tsup with two 1-thread workers.) Each slice is encoded once; a dead or slow part never blocks the
  study (its claim lapses and the coordinator encodes that slice). A group/chord was not used: a chord's join
  would make the study wait for its slowest part, and a part that never runs (busy fleet) would stall it.
- PET tri-view: the three views are independent until the vote. The coordinator sends two view tasks and runs
  views itself, claim per view: it runs any view nobody holds, so with one worker of concurrency 1 it runs all
  three (the view tasks, queued behind it, then find the study done): no deadlock. Whoever lands the last
  view votes, stores the result once and records the outcome (worker.parts).
- Split only when it helps and never starves a busy queue: enough slices to encode (LITEMEDSAM_SPLIT_MIN_SLICES),
  no message waiting on the study's queue when the coordinator starts (a busy fleet keeps one study per worker),
  the batch did not say `--split off`, the worker's LITEMEDSAM_SPLIT is on. Parts that arrive after their study
  is done, or find every slice of their range done or claimed, finish at once.

This module holds the pure decisions (unit-tested without Redis or a model), the part message, the part report,
and the run's shared state in Redis (SplitBoard).

Part reports (PartReport) are typed records with a version, JSON in the run's board: what each part did (node,
state, seconds, slices encoded; a view's metrics), for the study's metrics (`split.parts`, the same fields as when
they were plain dicts, without the version). A stored report that does not parse (another version, a field that
does not fit) is refused with a one-line reason in the log and treated as missing: the study's metrics say that
part was "not started when the study ended", and the coordinator goes on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker.contract.errors import validation_message
from worker.contract.keys import Keys
from worker.contract.messages import MessageError
from worker.contract.metrics import StudyMetrics
from worker.contract.settings import SplitSettings
from worker.contract.strategies import AXIAL, STRATEGIES, TRIVIEW, VIEWS

log = logging.getLogger(__name__)
PART_MESSAGE_VERSION = 1
PART_REPORT_VERSION = 1  # of a part report's JSON in the split board
NOT_STARTED = "not started when the study ended"  # the state the study's metrics give a part without a report
SLICES, VIEWS_MODE, NONE = "slices", "views", "none"
TRIVIEW_VIEWS = STRATEGIES[TRIVIEW].views
COORDINATOR_VIEW = TRIVIEW_VIEWS[0]  # the view the coordinator starts with (axial); view tasks go for the others


@dataclass(frozen=True)
class SplitDecision:
    mode: str  # NONE, SLICES or VIEWS_MODE
    reason: str
    orders: dict[str, list[int]] = field(default_factory=dict)  # view -> needed slices in need order
    ranges: list[tuple[int, int]] = field(default_factory=list)  # SLICES: [start, stop) positions per part
    steps: int = 0  # slice steps of the whole study (progress total)

    @property
    def split(self) -> bool:
        return self.mode != NONE

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "needed_slices": sum(len(order) for order in self.orders.values()),
        }


def study_views(strategy: str) -> tuple[str, ...]:
    return STRATEGIES[strategy].views if strategy in STRATEGIES else (AXIAL,)


def study_orders(strategy: str, shape: tuple[int, ...], boxes: np.ndarray) -> tuple[dict[str, list[int]], int]:
    """Per view the needed slices in need order, and the study's slice steps (what its progress counts)."""
    from worker.engine.strategies import view_plan

    orders, steps = {}, 0
    for view in study_views(strategy):
        orders[view], view_steps = view_plan(shape, boxes, view)
        steps += view_steps
    return orders, steps


def part_ranges(needed: int, max_parts: int, part_slices: int) -> list[tuple[int, int]]:
    """[start, stop) positions of min(max_parts, needed // part_slices) contiguous parts covering the order."""
    count = min(max_parts, needed // max(1, part_slices))
    if count < 1:
        return []
    bounds = [round(i * needed / count) for i in range(count + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(count)]


def decide(
    strategy: str, shape: tuple[int, ...], boxes: np.ndarray, settings: SplitSettings, requested: bool, waiting: int
) -> SplitDecision:
    """Whether and how to split a study, when its coordinator starts (`waiting`: messages on its queue)."""
    if strategy not in STRATEGIES or not STRATEGIES[strategy].splittable:
        return SplitDecision(NONE, f"{strategy}: one image, nothing to split")
    orders, steps = study_orders(strategy, shape, boxes)
    needed = sum(len(order) for order in orders.values())
    if not settings.enabled:
        return SplitDecision(NONE, "split off on this worker (LITEMEDSAM_SPLIT=off)", orders, steps=steps)
    if not requested:
        return SplitDecision(NONE, "split off for this batch (--split off)", orders, steps=steps)
    if needed < settings.min_slices:
        return SplitDecision(
            NONE,
            f"{needed} slices to encode, below LITEMEDSAM_SPLIT_MIN_SLICES={settings.min_slices}",
            orders,
            steps=steps,
        )
    if waiting > 0:
        return SplitDecision(
            NONE, f"queue busy: {waiting} message(s) waiting, one study per worker", orders, steps=steps
        )
    views = STRATEGIES[strategy].views
    if len(views) > 1:
        return SplitDecision(
            VIEWS_MODE, f"{needed} slices in {len(views)} views: views run as tasks", orders, steps=steps
        )
    ranges = part_ranges(len(orders[AXIAL]), settings.max_parts, settings.part_slices)
    if len(ranges) < 1:
        return SplitDecision(
            NONE,
            f"{needed} slices make no part of LITEMEDSAM_SPLIT_PART_SLICES={settings.part_slices}",
            orders,
            steps=steps,
        )
    return SplitDecision(SLICES, f"{needed} slices in {len(ranges)} part(s)", orders, ranges, steps)


def run_id(batch_id: str, name: str, task_id: str) -> str:
    """One coordinator delivery's split run (its parts, claims on views, progress)."""
    return hashlib.blake2b(f"{batch_id}\0{name}\0{task_id}".encode(), digest_size=12).hexdigest()


class PartMessage(BaseModel):
    """The JSON argument of a part task (worker.tasks.part): a typed message like the study's TaskMessage."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["slices", "views"]  # SLICES: encode a range of slices; VIEWS_MODE: run one tri-view view
    run: str
    index: int  # the part's number in its study, 0-based
    parts: int
    view: str
    study: dict[str, Any]  # the study's TaskMessage (worker.contract.messages), as sent
    result_key: str
    coordinator: str  # node of the coordinator
    coordinator_task: str  # its task id (a forced study's one write)
    space: str = ""  # SLICES: the embedding space (Engine.embedding_space)
    start: int = 0  # SLICES: positions [start, stop) of the view's order
    stop: int = 0
    slices: list[int] = Field(default_factory=list)  # SLICES: the view's slice indices at those positions
    steps: int = 0  # the whole study's slice steps (views: the progress total)
    enqueued_at: float = 0.0
    version: int = PART_MESSAGE_VERSION

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_wire(cls, data: Any) -> PartMessage:
        """A part message as received; MessageError if it is not one this worker reads."""
        if not isinstance(data, dict) or data.get("version") != PART_MESSAGE_VERSION:
            raise MessageError(
                f"part message version {data.get('version') if isinstance(data, dict) else None!r}, "
                f"this worker reads {PART_MESSAGE_VERSION}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise MessageError(f"part message: {validation_message(error)}") from None

    def label(self) -> str:
        if self.kind == VIEWS_MODE:
            return f"view {self.view} (part {self.index + 1} of {self.parts})"
        first, last = (self.slices[0], self.slices[-1]) if self.slices else ("-", "-")
        return f"part {self.index + 1} of {self.parts} (slices {first}..{last} of view {self.view})"


class SplitBoard:
    """The shared state of one split run in Redis: the coordinator's position, done flag, the parts' reports and
    deliveries, the views landed, and per-view progress. Every key expires with the blobs' TTL."""

    def __init__(self, client, keys: Keys, run: str, ttl: int):
        self.client, self.keys, self.run, self.ttl = client, keys, run, int(ttl)

    def _hset(self, field_name: str, value) -> None:
        with self.client.pipeline() as pipe:
            pipe.hset(self.keys.split_state(self.run), field_name, value)
            pipe.expire(self.keys.split_state(self.run), self.ttl)
            pipe.execute()

    def set_cursor(self, view: str, position: int) -> None:
        self._hset(f"cursor:{view}", int(position))

    def cursor(self, view: str) -> int:
        value = self.client.hget(self.keys.split_state(self.run), f"cursor:{view}")
        return int(value) if value is not None else -1

    def finish(self) -> None:
        self._hset("finished", 1)

    def finished(self) -> bool:
        return bool(self.client.hexists(self.keys.split_state(self.run), "finished"))

    def report_part(self, report: PartReport) -> None:
        with self.client.pipeline() as pipe:
            pipe.hset(self.keys.split_parts(self.run), str(report.part), report.model_dump_json(exclude_none=True))
            pipe.expire(self.keys.split_parts(self.run), self.ttl)
            pipe.execute()

    def part_reports(self) -> dict[int, PartReport]:
        """The parts' reports by index; one that does not parse is left out (logged with the reason)."""
        raw = self.client.hgetall(self.keys.split_parts(self.run))
        reports = {}
        for field_name, value in raw.items():
            try:
                report = PartReport.from_stored(value)
                name = field_name.decode(errors="replace") if isinstance(field_name, bytes) else str(field_name)
                if name != str(report.part):
                    raise PartReportError(f"stored as part {name[:16]!r} but names part {report.part}")
            except PartReportError as error:
                log.warning("split run %s: a part report refused, treated as missing: %s", self.run, error)
                continue
            reports[report.part] = report
        return reports

    def count_part_run(self, index: int) -> int:
        with self.client.pipeline() as pipe:
            pipe.hincrby(self.keys.split_part_runs(self.run), str(index), 1)
            pipe.expire(self.keys.split_part_runs(self.run), self.ttl)
            return int(pipe.execute()[0])

    def set_view_progress(self, view: str, done: int) -> int:
        """Record a view's slice steps done; returns the steps done over all views."""
        with self.client.pipeline() as pipe:
            pipe.hset(self.keys.split_state(self.run), f"progress:{view}", int(done))
            pipe.expire(self.keys.split_state(self.run), self.ttl)
            pipe.hgetall(self.keys.split_state(self.run))
            state = pipe.execute()[2]
        return sum(int(v) for k, v in state.items() if k.decode().startswith("progress:"))

    def land(self, view: str) -> int:
        """Mark a view's labels stored; returns how many views are landed now (atomically with this one)."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.sadd(self.keys.views_landed(self.run), view)
            pipe.scard(self.keys.views_landed(self.run))
            pipe.expire(self.keys.views_landed(self.run), self.ttl)
            return int(pipe.execute()[1])

    def unland(self, view: str) -> None:
        self.client.srem(self.keys.views_landed(self.run), view)

    def landed(self) -> set[str]:
        return {v.decode() for v in self.client.smembers(self.keys.views_landed(self.run))}


def all_landed(landed: set[str] | int) -> bool:
    """The vote trigger: the three views' labels are stored."""
    count = landed if isinstance(landed, int) else len(set(landed) & set(TRIVIEW_VIEWS))
    return count >= len(TRIVIEW_VIEWS)


class PartReportError(ValueError):
    """A stored part report this worker does not read (the message names why)."""


class PartReport(BaseModel):
    """What one part did, as its study's split board keeps it (JSON) and its metrics show it (`split.parts`).

    The fields' order is the order of the JSON's keys; a field that is None is left out (a view's report has no
    host or pid, a slice part's no `by` or metrics)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = PART_REPORT_VERSION
    part: int = Field(ge=0)  # the part's index in its study
    kind: Literal["slices", "views", "view"]  # the part message's kind; "view": a view's finished run (ViewRunner)
    view: str
    node: str  # the worker that ran it
    host: str | None = None
    pid: int | None = None
    by: str | None = None  # a view: "coordinator" or "view task"
    state: str = Field(pattern=r"^(running|done|late|failed|skipped)\b")
    started_at: float  # epoch seconds
    seconds: float
    delivery: int | None = None  # how many times the part was delivered
    encoded: int | None = Field(None, ge=0)  # slices encoded
    skipped: int | None = Field(None, ge=0)  # slices stored or claimed by another
    passed: int | None = Field(None, ge=0)  # slices the coordinator had passed
    encode_seconds: float | None = None
    metrics: dict[str, Any] | None = None  # a view's StudyMetrics (to_dict), combined at the vote

    @field_validator("version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version != PART_REPORT_VERSION:
            raise ValueError(f"part report version {version}, this worker reads {PART_REPORT_VERSION}")
        return version

    @field_validator("view")
    @classmethod
    def _known_view(cls, view: str) -> str:
        if view not in VIEWS:
            raise ValueError(f"{view[:32]!r} is not a view ({', '.join(VIEWS)})")
        return view

    @field_validator("metrics")
    @classmethod
    def _study_metrics(cls, metrics: dict[str, Any] | None) -> dict[str, Any] | None:
        """A view's metrics must read as StudyMetrics (the vote combines them); kept as they were written."""
        if metrics is not None:
            StudyMetrics.model_validate(metrics)
        return metrics

    @classmethod
    def from_stored(cls, raw: bytes | str) -> PartReport:
        """A report as the board keeps it; PartReportError naming what does not fit."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as error:
            raise PartReportError(validation_message(error, whole="part report")) from None

    def for_metrics(self, with_metrics: bool = True) -> dict[str, Any]:
        """The study's metrics' entry for this part: every field that is set, without the version (and without
        the view's own metrics when `with_metrics` is false)."""
        leave_out = {"version"} | (set() if with_metrics else {"metrics"})
        return self.model_dump(exclude=leave_out, exclude_none=True)  # None inside a view's metrics stays

    def keeping(self, previous: PartReport) -> PartReport:
        """This report with the slices encoded and metrics of an earlier report of the same part where it has none
        (a later delivery's report does not lose what an earlier one did)."""
        kept = {name: getattr(previous, name) for name in ("encoded", "metrics") if getattr(self, name) is None}
        return self.model_copy(update={name: value for name, value in kept.items() if value is not None})


def not_started(index: int) -> dict[str, Any]:
    """The study's metrics' entry for a part without a (readable) report."""
    return {"part": index, "state": NOT_STARTED}


def part_report(message: PartMessage, node: str, state: str, started: float, **counts: Any) -> PartReport:
    """What a part tells its study's metrics."""
    import os
    import socket

    return PartReport(
        part=message.index,
        kind=message.kind,
        view=message.view,
        node=node,
        host=socket.gethostname(),
        pid=os.getpid(),
        state=state,
        started_at=started,
        seconds=round(time.time() - started, 3),
        **counts,
    )
