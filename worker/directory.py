"""Which engine identities serve which queue: workers publish theirs at start-up, the producer reads them.

One Redis hash per queue: identity fingerprint -> {identity, node, published_at}. The producer uses the most
recently published identity of a queue to compute result keys; the worker that runs a study always uses its
own identity, so a stale or mixed entry can only cost a cache miss, never a wrong result.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, field_validator

from worker.contract.identity import EngineIdentity
from worker.contract.keys import Keys


class Published(BaseModel):
    identity: EngineIdentity
    node: str
    published_at: float

    @field_validator("identity", mode="before")
    @classmethod
    def _identity_as_text(cls, value: Any) -> Any:
        """Entries published before this was a model hold the identity as a JSON string."""
        return json.loads(value) if isinstance(value, (str, bytes)) else value


class IdentityDirectory:
    def __init__(self, client, keys: Keys):
        self.client = client
        self.keys = keys

    def publish(self, queues: list[str], identity: EngineIdentity, node: str) -> None:
        entry = Published(identity=identity, node=node, published_at=time.time()).model_dump_json()
        with self.client.pipeline() as pipe:
            for queue in queues:
                pipe.hset(self.keys.identities(queue), identity.fingerprint(), entry)
            pipe.execute()

    def published(self, queue: str) -> list[Published]:
        """Newest first."""
        entries = []
        for raw in self.client.hvals(self.keys.identities(queue)):
            entries.append(Published.model_validate_json(raw))
        return sorted(entries, key=lambda p: p.published_at, reverse=True)

    def latest(self, queue: str) -> EngineIdentity | None:
        found = self.published(queue)
        return found[0].identity if found else None
