"""The Celery application of the fleet: `celery -A worker.app worker|inspect|flower` uses `app` below.

The broker and every fleet setting come from the environment (worker.contract.settings); `make_app(settings)` builds
an app with the same configuration for another broker (tests, `worker ping`). The producer sends tasks with its own
light client (producer.sender), which shares worker.contract.broker's settings but none of this module's signal
handlers or lease bootstep. Everything Celery keeps in
Redis lives under the namespace (`global_keyprefix`, worker.contract.keys), so fleets of two namespaces on one Redis
never see each other's queues, unacknowledged messages, control replies or events.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from worker import lifecycle  # noqa: F401  (connects the worker's signal handlers)
from worker.contract.broker import client_config
from worker.contract.settings import FleetSettings
from worker.lease import LEASE_RENEW_CONF, LeaseKeeper
from worker.presence import SessionPresence


def celery_config(settings: FleetSettings) -> dict[str, Any]:
    """The shared client settings (worker.contract.broker) plus what only a worker needs."""
    return {
        **client_config(settings),
        # a study is acknowledged when it is done; a dead child's study goes back to the queue
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # a worker waits for a restarted broker for ever
        "broker_connection_max_retries": None,
        # a connection blip must not cancel an hour-long study: a duplicate delivery is harmless (write-once)
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_pool": "prefork",
        LEASE_RENEW_CONF: settings.lease_renew_interval,
        # events for Flower / `celery events`
        "worker_send_task_events": True,
        # each worker also consumes its own queue `<node>.dq2`: a session's steps go to the node that holds it
        "worker_direct": True,
    }


def make_app(settings: FleetSettings | None = None) -> Celery:
    settings = settings or FleetSettings.from_env()
    app = Celery("litemedsam", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(celery_config(settings))
    app.steps["consumer"].add(LeaseKeeper)
    app.steps["consumer"].add(SessionPresence)
    return app


app = make_app()
