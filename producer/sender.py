"""The producer's light Celery client: sends a study's task by name to its queue (and a session's step to a
worker's own queue), and nothing else.

A minimal Celery app (the broker URL, the namespace's key prefix, JSON, the publish retry policy: the settings
worker.contract.broker shares with the workers). It imports no worker module: no signal handlers, no lease
bootstep, no task code; the task is named (worker.contract.settings.TASK_NAME), not imported.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from worker.contract.broker import client_config
from worker.contract.keys import NAMESPACE_HEADER
from worker.contract.messages import TaskMessage
from worker.contract.sessions import SessionStep
from worker.contract.settings import SESSION_TASK_NAME, TASK_NAME, FleetSettings


def sender_app(settings: FleetSettings) -> Celery:
    app = Celery("litemedsam-producer", broker=settings.broker_url, set_as_current=False)
    app.conf.update(client_config(settings))
    return app


class TaskSender:
    def __init__(self, settings: FleetSettings):
        self.settings = settings
        self.app = sender_app(settings)

    def send(self, message: TaskMessage, task_id: str, limits: tuple[int, int]) -> Any:
        """Enqueue one study on its queue with its soft/hard time limits; headed with this namespace, so the
        workers of another refuse it."""
        soft, hard = limits
        return self.app.send_task(
            TASK_NAME,
            args=[message.to_wire()],
            queue=message.queue,
            task_id=task_id,
            soft_time_limit=soft,
            time_limit=hard,
            headers={NAMESPACE_HEADER: self.settings.namespace},
        )

    def send_session_step(self, step: SessionStep, node: str, expires: float) -> Any:
        """Send one session step to a worker's own queue (Celery's worker_direct queue `<node>.dq2`); a worker
        that receives it more than `expires` seconds from now drops it (the gateway has re-sent it elsewhere)."""
        from celery.utils.nodenames import worker_direct

        return self.app.send_task(
            SESSION_TASK_NAME,
            args=[step.to_wire()],
            queue=worker_direct(node),
            task_id=step.request_id,
            expires=expires,
            headers={NAMESPACE_HEADER: self.settings.namespace},
        )
