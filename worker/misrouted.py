"""A task message of another namespace that reached this worker: never run, handed back to its owner.

Every message carries the producer's namespace in a header (worker.contract.keys.NAMESPACE_HEADER). The queues of
each namespace are separate Redis lists (worker.app's `global_keyprefix`), so a foreign message only arrives
through a fault: a message copied between queues by hand, a producer or tool with hand-made transport options,
a version before namespaced queues. The worker must not run it (the study's image and ledger live in the other
namespace; running it here would end it as someone else's error), and must not lose it for its owner:

- header names another valid namespace: the same message (task id, payload, retries, time limits, header) is
  published to the same queue under that namespace's prefix, where the owner's workers take it. The delivery
  here is then acknowledged. Nothing is written to either namespace's ledger: the owner's workers count it.
- no header, an invalid one, or the publish refused (e.g. this worker's Redis ACL user may not write the owner's
  keys): no owner to give it to. The message is kept, as JSON, in this namespace's `<ns>:misrouted` list (newest
  first, at most MAX_PARKED, expiring with the batch TTL) and logged, for an operator to inspect or re-send.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from worker.contract.keys import NAMESPACE_HEADER, Keys, check_namespace
from worker.contract.settings import TASK_NAME

log = logging.getLogger(__name__)
MAX_PARKED = 10_000
PARKED_VERSION = 1  # of a parked message's JSON


def sender_namespace(request) -> str | None:
    """The namespace the message was sent in (its header), None if it has none."""
    value = request.get(NAMESPACE_HEADER)  # Celery sets every message header as an attribute of the request
    return value if isinstance(value, str) else None


def valid_namespace(namespace: str | None) -> bool:
    try:
        check_namespace(namespace)
    except ValueError:
        return False
    return True


def queue_of(request, payload: Any, default: str) -> str:
    """The queue the message was addressed to (its routing key; else the queue its payload names)."""
    routed = (request.delivery_info or {}).get("routing_key")
    if routed:
        return str(routed)
    named = payload.get("queue") if isinstance(payload, dict) else None
    return str(named) if named else default


def hand_back(app, owner: str, payload: Any, request, queue: str) -> None:
    """Publish the message unchanged to `queue` of namespace `owner` (no task-sent event: this namespace's
    monitors must not list another namespace's study)."""
    hard, soft = request.timelimit or (None, None)
    task_name = getattr(request, "task", None)  # a study, or a part of a split study (worker.fanout)
    task_name = task_name if isinstance(task_name, str) and task_name else TASK_NAME
    message = app.amqp.create_task_message(
        request.id,
        task_name,
        [payload],
        {},
        retries=request.retries or 0,
        time_limit=hard,
        soft_time_limit=soft,
        create_sent_event=False,
        root_id=request.root_id,
        parent_id=request.parent_id,
    )
    options = {"global_keyprefix": Keys(owner).broker_prefix}
    with app.connection_for_write(transport_options=options) as connection:
        producer = app.amqp.Producer(connection, auto_declare=False)
        app.amqp.send_task_message(
            producer,
            task_name,
            message,
            queue=queue,
            headers={NAMESPACE_HEADER: owner},
            retry=True,
            retry_policy=app.conf.task_publish_retry_policy,
        )


class ParkedMessage(BaseModel):
    """A refused message as the misrouted list keeps it (JSON), for an operator to inspect or re-send."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = PARKED_VERSION
    task_id: str
    namespace: str | None  # its header (None: it had none)
    queue: str
    node: str  # the worker that refused it
    refused_at: float
    reason: str
    retries: int
    timelimit: tuple[int | float | None, int | float | None]  # (hard, soft) seconds, as Celery gave them
    payload: Any  # the task's argument, as it came


def park(client, keys: Keys, entry: ParkedMessage, ttl: int) -> None:
    """Keep a refused message in this namespace's misrouted list."""
    with client.pipeline() as pipe:
        pipe.lpush(keys.misrouted(), entry.model_dump_json())
        pipe.ltrim(keys.misrouted(), 0, MAX_PARKED - 1)
        pipe.expire(keys.misrouted(), ttl)
        pipe.execute()


def refuse(app, keys: Keys, client, ttl: int, payload: Any, request, node: str) -> dict[str, Any]:
    """Hand a foreign message back to its owner, else park it; the task's return value says which."""
    owner = sender_namespace(request)
    queue = queue_of(request, payload, app.conf.task_default_queue)
    if valid_namespace(owner) and owner != keys.namespace:
        try:
            hand_back(app, owner, payload, request, queue)
        except Exception as error:  # e.g. NOPERM: this worker may not write the owner's keys
            reason = f"could not hand it back to namespace {owner!r}: {type(error).__name__}: {error}"
        else:
            log.warning(
                "task %s of namespace %r reached namespace %r: handed back to %r, queue %s, not run",
                request.id,
                owner,
                keys.namespace,
                owner,
                queue,
            )
            return {"status": "handed back", "namespace": owner, "queue": queue}
    else:
        reason = f"its namespace header is {owner!r}"
    parked = ParkedMessage(
        task_id=request.id,
        namespace=owner,
        queue=queue,
        node=node,
        refused_at=time.time(),
        reason=reason,
        retries=request.retries or 0,
        timelimit=tuple(request.timelimit or (None, None)),
        payload=payload,
    )
    park(client, keys, parked, ttl)
    log.error(
        "task %s refused by namespace %r (%s): not run, kept in %s",
        request.id,
        keys.namespace,
        reason,
        keys.misrouted(),
    )
    return {"status": "parked", "namespace": owner, "reason": reason}
