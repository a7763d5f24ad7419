"""The Celery settings every side of the fleet shares: JSON only, the namespace's key prefix, the publish policy.

Plain data (no Celery import): worker.app builds the workers' app from `client_config` plus what only a worker
needs (late acks, prefetch, leases, events); the producer's light client (producer.sender) uses it as it is.
"""

from __future__ import annotations

from typing import Any

from worker.contract.keys import NAMESPACE_CONF, Keys
from worker.contract.settings import FleetSettings


def client_config(settings: FleetSettings) -> dict[str, Any]:
    """What a process that sends tasks (or talks to the broker at all) must agree on with the workers."""
    return {
        # JSON only: a message is metadata, never a pickle
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # results live in the content-addressed store and the batch ledger, not in a Celery result backend
        "task_ignore_result": True,
        "broker_transport_options": {
            # queues, unacked index and mutex, kombu bindings, pidbox replies, event channels: `<ns>:celery:*`
            "global_keyprefix": Keys(settings.namespace).broker_prefix,
            # a study held by no live worker goes back to the queue after this; live workers renew their leases
            # (worker.lease), and every worker sweeps for abandoned studies every few seconds
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 10)),
            "unacked_restore_throttle": 1,
        },
        # a producer's publish retries for a while through a broker restart
        "task_publish_retry_policy": {
            "max_retries": 30,
            "interval_start": 0.2,
            "interval_step": 1.0,
            "interval_max": 5.0,
        },
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.default_queue,
        "task_create_missing_queues": True,
        NAMESPACE_CONF: settings.namespace,
        # a task-sent event for Flower / `celery events`
        "task_send_sent_event": True,
    }
