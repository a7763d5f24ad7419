"""The Celery application of the fleet: `celery -A worker.app worker|inspect|flower` uses `app` below.

The broker and every fleet setting come from the environment (worker.contract.settings); `make_app(settings)` builds
an app with the same configuration for a producer that talks to another broker. Everything Celery keeps in
Redis lives under the namespace (`global_keyprefix`, worker.contract.keys), so fleets of two namespaces on one Redis
never see each other's queues, unacknowledged messages, control replies or events.
"""
from __future__ import annotations

from typing import Any

from celery import Celery

from worker import lifecycle  # noqa: F401  (connects the worker's signal handlers)
from worker.contract.keys import NAMESPACE_CONF, Keys
from worker.lease import LEASE_RENEW_CONF, LeaseKeeper
from worker.contract.settings import FleetSettings


def celery_config(settings: FleetSettings) -> dict[str, Any]:
    return {
        # JSON only: a message is metadata, never a pickle
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # results live in the content-addressed store and the batch ledger, not in a Celery result backend
        "task_ignore_result": True,
        # a study is acknowledged when it is done; a dead child's study goes back to the queue
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # a study held by no live worker goes back to the queue after this; live workers renew their leases
        # (worker.lease), and every worker sweeps for abandoned studies every few seconds
        "broker_transport_options": {
            # queues, unacked index and mutex, kombu bindings, pidbox replies, event channels: `<ns>:celery:*`
            "global_keyprefix": Keys(settings.namespace).broker_prefix,
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 10)),
            "unacked_restore_throttle": 1,
        },
        # a worker waits for a restarted broker for ever; a producer's publish retries for a while
        "broker_connection_max_retries": None,
        "task_publish_retry_policy": {"max_retries": 30, "interval_start": 0.2, "interval_step": 1.0,
                                      "interval_max": 5.0},
        # a connection blip must not cancel an hour-long study: a duplicate delivery is harmless (write-once)
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.default_queue,
        "task_create_missing_queues": True,
        "worker_pool": "prefork",
        LEASE_RENEW_CONF: settings.lease_renew_interval,
        NAMESPACE_CONF: settings.namespace,
        # events for Flower / `celery events`
        "worker_send_task_events": True,
        "task_send_sent_event": True,
    }


def make_app(settings: FleetSettings | None = None) -> Celery:
    settings = settings or FleetSettings.from_env()
    app = Celery("litemedsam", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(celery_config(settings))
    app.steps["consumer"].add(LeaseKeeper)
    return app


app = make_app()
