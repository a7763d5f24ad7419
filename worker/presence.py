"""A worker's presence for interactive sessions: every second the worker parent stamps its node name in the
namespace's sorted set of session nodes (Keys.session_nodes), and removes it when it stops.

Only a worker with one pool process serves sessions (`serves_sessions`): a session's cache (its image, masks and
encoded slices, worker.sessions) lives in the process that ran its steps, while affinity is per node, so with more
processes a step landing on a sibling would rebuild the label (correct, but a box's encoding again). A worker with
`--concurrency` above 1 does not stamp itself and stops consuming its direct queue, and says so in its log: the
gateway picks only stamped nodes, so its sessions go to the single-process workers.

The gateway (producer.fleet_sessions) picks a live node for a session's first step from the fresh stamps, and
takes a stamp older than a few seconds as a dead worker. Each worker also consumes its own direct queue
(Celery's `worker_direct`, `<node>.dq2`, worker.app), which is how a session's steps reach the node that holds it.
"""

from __future__ import annotations

import logging
import time

from celery import bootsteps
from celery.utils.nodenames import worker_direct

from worker.contract.keys import NAMESPACE_CONF, Keys
from worker.contract.settings import redis_client

log = logging.getLogger(__name__)
PRESENCE_INTERVAL = 1.0  # seconds between stamps
FORGET_AFTER = 86400.0  # a node not stamped for this long leaves the set


def serves_sessions(concurrency: int) -> bool:
    """Whether a worker of this many pool processes serves interactive sessions (the one place this is decided)."""
    return concurrency == 1


def sessions_note(concurrency: int) -> str:
    """What a worker's start line says about sessions."""
    if serves_sessions(concurrency):
        return "interactive sessions: served"
    return (
        f"interactive sessions: not served (--concurrency {concurrency}: a session's cache is per process; "
        "run a --concurrency 1 worker for sessions)"
    )


class SessionPresence(bootsteps.StartStopStep):
    """Consumer bootstep: stamps this node as alive on the consumer's timer; a worker that does not serve sessions
    (serves_sessions) stops consuming its direct queue instead."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        self.key = Keys(c.app.conf[NAMESPACE_CONF]).session_nodes()
        # a stamp runs on the consumer's timer: it must not hold it through a Redis outage (the next tick retries)
        self.client = redis_client(c.app.conf.broker_url, reconnect_seconds=PRESENCE_INTERVAL)
        self.node = c.hostname
        self.tref = None
        self.concurrency = int(getattr(c.controller, "concurrency", None) or 1)
        self.serves = serves_sessions(self.concurrency)

    def start(self, c):
        if not self.serves:
            log.warning("%s", sessions_note(self.concurrency))
            c.cancel_task_queue(worker_direct(self.node).name)
            return
        self.stamp()
        self.tref = c.timer.call_repeatedly(PRESENCE_INTERVAL, self.stamp, priority=10)

    def stop(self, c):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        if not self.serves:
            return
        try:
            self.client.zrem(self.key, self.node)
        except Exception as error:
            log.warning("session presence not withdrawn: %s", error)

    def stamp(self) -> None:
        now = time.time()
        try:
            with self.client.pipeline() as pipe:
                pipe.zadd(self.key, {self.node: now})
                pipe.zremrangebyscore(self.key, "-inf", now - FORGET_AFTER)  # nodes long gone
                pipe.execute()
        except Exception as error:  # Redis away: the next tick tries again
            log.warning("session presence not stamped: %s", error)
