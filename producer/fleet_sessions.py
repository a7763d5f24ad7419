"""Interactive sessions computed on the fleet: a session stays with the worker that holds it, and goes on
elsewhere when that worker dies.

- Opening a session puts its image in the blob store (the job's input blob: content-addressed, exact npz, TTL,
  under the namespace); each step touches it again (re-uploaded if it expired).
- A step (worker.contract.sessions.SessionStep) goes to the session's node's own queue (Celery's worker_direct);
  the first step, and a step after its node is gone, picks a live node (worker.presence: a stamp in the last
  `dead_after` seconds), the least recently picked first.
- The timings (FleetTimings) come from the settings table (LITEMEDSAM_SESSION_DEAD_AFTER, _PICKUP, _STEP_LIMIT).
- The gateway waits on the step's reply list. It takes the node as lost, and sends the step to another live node,
  when the node's presence stamp goes stale before the step started, when the step is not picked up within
  `pickup` seconds (the node is busy with a study: the message expires there), or when the step's busy mark
  lapses after it started (the worker process died). No live node left: SessionUnavailable (HTTP 503), the
  session unchanged.
- Closing a session (DELETE, the idle timeout) announces its id (Keys.session_closed): the workers drop its image,
  masks and embeddings within about a second (worker.sessions.CloseWatcher).
- The worker that takes over rebuilds the label from its prompt (re-encoding what it needs), so the answer is the
  mask the first worker would have given, bit for bit.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass

import numpy as np
import redis
from kombu.exceptions import OperationalError

from producer.fleet import FleetClient
from producer.sessions import LabelState, SessionUnavailable
from worker.contract.arrays import StoreError
from worker.contract.identity import image_digest
from worker.contract.keys import Keys
from worker.contract.messages import WireClick
from worker.contract.prompts import Box, Click
from worker.contract.sessions import CLOSED_KEEP, SessionReply, SessionStep
from worker.contract.settings import FleetSettings, SessionSettings
from worker.contract.study import Study, StudyError

REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OperationalError)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetTimings:
    dead_after: float  # seconds without a presence stamp: the node is dead
    pickup: float  # seconds a live node may leave a step waiting (busy with a study) before another gets it
    step: float  # the most a step may run (a box on a long CT volume encodes it: about a minute)
    poll: float = 0.2  # seconds between looks at the node and the step's busy mark while waiting

    @classmethod
    def of(cls, settings: SessionSettings) -> FleetTimings:
        """The timings the settings give (LITEMEDSAM_SESSION_DEAD_AFTER, _PICKUP, _STEP_LIMIT)."""
        return cls(dead_after=settings.dead_after, pickup=settings.pickup, step=settings.step_limit)


class FleetSessions:
    """The fleet as the gateway's SessionEngine: one client (Redis, store, Celery sender) for every session."""

    mode = "fleet"

    def __init__(self, broker: str, timings: FleetTimings | None = None, settings: FleetSettings | None = None):
        self.settings = (settings or FleetSettings.from_env()).with_broker(broker)
        self.timings = timings or FleetTimings.of(self.settings.sessions)
        self.client = FleetClient(self.settings)
        self.keys = Keys(self.settings.namespace)
        self._picked: dict[str, float] = {}  # node -> when it was last picked for a session
        self._lock = threading.Lock()

    def open(self, session_id: str, study: Study) -> FleetWork:
        digest = image_digest(study.image)
        try:
            self.client.upload(digest, study)
        except REDIS_DOWN as error:
            raise SessionUnavailable(f"the fleet's store is unreachable: {error}") from None
        except StoreError as error:
            raise StudyError(str(error)) from None
        return FleetWork(self, session_id, study, digest)

    def session_lock(self) -> threading.Lock:
        return threading.Lock()  # sessions run on many workers: one interaction at a time per session

    # ---------------------------------------------------------------- live nodes
    def live_nodes(self) -> list[str]:
        """Nodes stamped within dead_after seconds, the least recently picked first."""
        since = time.time() - self.timings.dead_after
        nodes = [n.decode() for n in self.client.redis.zrangebyscore(self.keys.session_nodes(), since, "+inf")]
        with self._lock:
            return sorted(nodes, key=lambda node: (self._picked.get(node, 0.0), node))

    def alive(self, node: str) -> bool:
        stamp = self.client.redis.zscore(self.keys.session_nodes(), node)
        return stamp is not None and time.time() - float(stamp) < self.timings.dead_after

    def pick(self, avoid: set[str]) -> str | None:
        for node in self.live_nodes():
            if node not in avoid:
                with self._lock:
                    self._picked[node] = time.time()
                return node
        return None

    # ---------------------------------------------------------------- closing
    def announce_closed(self, session_id: str) -> None:
        """Tell every worker that the session is closed (Keys.session_closed): each process that holds its image,
        masks or embeddings drops them within about a second. Redis away: logged, the workers' caches then drop it
        by eviction."""
        now = time.time()
        try:
            with self.client.redis.pipeline() as pipe:
                pipe.zadd(self.keys.session_closed(), {session_id: now})
                pipe.zremrangebyscore(self.keys.session_closed(), "-inf", now - CLOSED_KEEP)
                pipe.execute()
        except REDIS_DOWN as error:
            log.warning("session %s closed, but the workers could not be told: %s", session_id[:8], error)

    # ---------------------------------------------------------------- one step on one node
    def send(self, step: SessionStep, node: str) -> None:
        self.client.sender.send_session_step(step, node, self.timings.pickup)

    def wait(self, step: SessionStep, node: str) -> SessionReply | None:
        """The step's reply, or None when the node is lost for it (dead, busy past the pickup bound, or its
        process died while running it)."""
        reply_key, busy_key = self.keys.session_reply(step.request_id), self.keys.session_busy(step.request_id)
        redis_client = self.client.redis
        sent = time.monotonic()
        started = False
        while True:
            found = redis_client.blpop([reply_key], timeout=self.timings.poll)
            if found is not None:
                return SessionReply.from_bytes(found[1])
            running = bool(redis_client.exists(busy_key))
            started = started or running
            waited = time.monotonic() - sent
            if waited > self.timings.step:
                raise SessionUnavailable(f"worker {node} did not finish the step within {self.timings.step:g} s")
            if running:
                continue
            if started or waited > self.timings.pickup or not self.alive(node):
                last = redis_client.lpop(reply_key)  # it may have answered between the two looks
                return SessionReply.from_bytes(last) if last is not None else None


class FleetWork:
    """One session's steps on the fleet (producer.sessions.LabelWork)."""

    def __init__(self, fleet: FleetSessions, session_id: str, study: Study, digest: str):
        self.fleet, self.session_id, self.study, self.digest = fleet, session_id, study, digest
        self.node = ""  # the node serving this session ("" until its first step)
        self._overlap = ""
        self.attempts: list[str] = []  # the nodes the last step was sent to, in order

    @property
    def where(self) -> str:
        return self.node

    def overlap(self) -> str:
        if not self._overlap:
            raise StudyError("the session has no computed label yet")
        return self._overlap

    def box(self, label: LabelState, box: Box, version: str) -> np.ndarray:
        return self._run(label, version, box=list(box.coords))

    def click(self, label: LabelState, click: Click, version: str) -> np.ndarray:
        return self._run(label, version, click=WireClick(point=list(click.point), foreground=click.foreground))

    def _step(self, label: LabelState, version: str, box: list | None, click: WireClick | None) -> SessionStep:
        study = self.study
        return SessionStep(
            session_id=self.session_id,
            request_id=secrets.token_hex(16),
            study_id=study.study_id,
            modality=study.modality,
            image_digest=self.digest,
            image_shape=tuple(study.image.shape),
            spacing=tuple(float(v) for v in study.spacing) if study.spacing is not None else None,
            dims=3 if study.is_3d else 2,
            label=label.number,
            prompt=SessionStep.wire_prompt(label.prompt),
            step="box" if box is not None else "click",
            box=box,
            click=click,
            base=label.version,
            version=version,
        )

    def _run(self, label: LabelState, version: str, box: list | None = None, click: WireClick | None = None):
        fleet = self.fleet
        self.attempts = []
        try:
            self._keep_image()
            lost: set[str] = set()
            while True:
                node = self.node if self.node and self.node not in lost and fleet.alive(self.node) else None
                node = node or fleet.pick(lost)
                if node is None:
                    tried = f" ({', '.join(self.attempts)} lost)" if self.attempts else ""
                    raise SessionUnavailable(f"no live fleet worker can take this session's step now{tried}")
                step = self._step(label, version, box, click)
                self.attempts.append(node)
                fleet.send(step, node)
                reply = fleet.wait(step, node)
                if reply is None:
                    lost.add(node)
                    continue
                if reply.version != version:
                    raise SessionUnavailable(f"worker {reply.node} answered another step ({reply.version})")
                self.node = reply.node
                return self._mask(label, reply)
        except REDIS_DOWN as error:
            raise SessionUnavailable(f"the fleet's broker is unreachable: {error}") from None
        except StoreError as error:
            raise SessionUnavailable(f"unreadable answer from the fleet: {error}") from None

    def close(self) -> None:
        self.fleet.announce_closed(self.session_id)

    def _keep_image(self) -> None:
        """Extend the image blob's life; put it back if it expired."""
        self.fleet.client.upload(self.digest, self.study)

    def _mask(self, label: LabelState, reply: SessionReply) -> np.ndarray:
        if reply.error:
            if reply.invalid:
                raise StudyError(reply.error)
            raise SessionUnavailable(f"worker {reply.node} failed the step: {reply.error}")
        shape = label.mask.shape
        if any(z < 0 or z >= shape[0] or plane.shape != shape[1:] for z, plane in reply.slices.items()):
            raise SessionUnavailable(f"worker {reply.node} answered with slices that do not fit {shape}")
        if reply.full:
            if sorted(reply.slices) != list(range(shape[0])):
                raise SessionUnavailable(f"worker {reply.node} answered a full mask without every slice")
            mask = np.stack([reply.slices[z] for z in range(shape[0])])
        else:
            mask = label.mask.copy()
            for z, plane in reply.slices.items():
                mask[z] = plane
        self._overlap = reply.overlap
        return mask
