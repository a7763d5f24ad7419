"""Leases on the studies a worker holds, so a dead worker's studies come back in minutes, not hours.

Celery's Redis transport keeps every delivered, unacknowledged message in a sorted set (`unacked_index`,
under the namespace's key prefix: `<ns>:celery:unacked_index`; score = delivery time) and gives it back to
the queue once the score is older than the visibility timeout.
Left alone, the visibility timeout must exceed the longest study, so a study held by a worker that died with
its machine (SIGKILL, power loss) would wait that long. Instead every live worker parent re-stamps the
messages it holds (reserved or running) every `renew_interval` seconds: a held message never looks abandoned,
however long its study runs, and a dead worker's messages are restored after one short visibility timeout
(plus the transport's restore sweep, `unacked_restore_interval`).

The parent does this from the consumer's timer; a hung child still cannot hold a study forever: the task's
hard time limit kills it.
"""

from __future__ import annotations

import logging
import time

from celery import bootsteps
from celery.worker import state

from worker.contract.settings import FleetSettings, redis_client

log = logging.getLogger(__name__)
LEASE_RENEW_CONF = "litemedsam_lease_renew"  # the app's setting: seconds between renewals


def unacked_index_key(transport_options: dict) -> str:
    """The transport's sorted set of unacknowledged deliveries (with its global key prefix, if any)."""
    return transport_options.get("global_keyprefix", "") + transport_options.get("unacked_index_key", "unacked_index")


def held_delivery_tags() -> list[str]:
    """Delivery tags of the messages this worker holds: prefetched (reserved) and running (active)."""
    requests = set(state.reserved_requests) | set(state.active_requests)
    return sorted({r.message.delivery_tag for r in requests if getattr(r, "message", None) is not None})


def renew(client, key: str, tags: list[str], now: float | None = None) -> int:
    """Re-stamp `tags` in the unacked index (only tags still there: an acknowledged one is not revived)."""
    if not tags:
        return 0
    stamp = time.time() if now is None else now
    return int(client.zadd(key, {tag: stamp for tag in tags}, xx=True, ch=True))


class LeaseKeeper(bootsteps.StartStopStep):
    """Consumer bootstep: renews the leases of held messages on the consumer's timer."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        conf = c.app.conf
        self.interval = float(conf.get(LEASE_RENEW_CONF) or FleetSettings().lease_renew_interval)
        self.key = unacked_index_key(conf.broker_transport_options or {})
        self.client = redis_client(conf.broker_url)
        self.tref = None

    def start(self, c):
        self.tref = c.timer.call_repeatedly(self.interval, self.renew_held, priority=10)

    def stop(self, c):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def renew_held(self) -> None:
        try:
            renew(self.client, self.key, held_delivery_tags())
        except Exception as error:  # Redis away: the transport reconnects; the next tick tries again
            log.warning("study leases not renewed: %s", error)
