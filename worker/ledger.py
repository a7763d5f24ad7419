"""A batch's shared state in Redis: manifest, per-study progress, runs, and outcomes written once.

The producer writes the manifest (meta + one entry per study); workers write progress and outcomes; any
process (the submitting one, `producer status` elsewhere) reads them. Every change is also announced on the
batch's pub/sub channel so a waiting producer wakes up at once instead of polling.
"""

from __future__ import annotations

from collections.abc import Iterable

from worker.contract.keys import Keys
from worker.contract.manifest import BatchMeta, StudyEntry
from worker.contract.messages import Outcome, Progress


class BatchLedger:
    def __init__(self, client, keys: Keys, ttl: int):
        self.client = client
        self.keys = keys
        self.ttl = ttl

    def _refresh(self, pipe, batch_id: str) -> None:
        for key in self.keys.batch_parts(batch_id):
            pipe.expire(key, self.ttl)

    # manifest (worker.contract.manifest: a reader refuses a version it does not know, with a ManifestError) ----
    def write_meta(self, batch_id: str, meta: BatchMeta) -> None:
        with self.client.pipeline() as pipe:
            pipe.set(self.keys.batch_meta(batch_id), meta.to_json(), ex=self.ttl)
            pipe.execute()

    def meta(self, batch_id: str) -> BatchMeta | None:
        raw = self.client.get(self.keys.batch_meta(batch_id))
        return BatchMeta.from_json(raw, f"the manifest of batch {batch_id}") if raw else None

    def add_study(self, batch_id: str, name: str, entry: StudyEntry) -> None:
        with self.client.pipeline() as pipe:
            pipe.hset(self.keys.batch_studies(batch_id), name, entry.to_json())
            pipe.expire(self.keys.batch_studies(batch_id), self.ttl)
            pipe.execute()

    def studies(self, batch_id: str) -> dict[str, StudyEntry]:
        raw = self.client.hgetall(self.keys.batch_studies(batch_id))
        return {
            name.decode(): StudyEntry.from_json(value, f"batch {batch_id}'s entry for {name.decode()!r}")
            for name, value in raw.items()
        }

    # outcomes -------------------------------------------------------------------------------------------
    def record(self, batch_id: str, outcome: Outcome) -> bool:
        """Store a study's outcome unless one is there already (a duplicate delivery); True if stored."""
        with self.client.pipeline() as pipe:
            pipe.hsetnx(self.keys.batch_outcomes(batch_id), outcome.name, outcome.to_json())
            pipe.hdel(self.keys.batch_progress(batch_id), outcome.name)
            self._refresh(pipe, batch_id)
            stored = pipe.execute()[0]
        self.announce(batch_id, "done", outcome.name)
        return bool(stored)

    def outcome(self, batch_id: str, name: str) -> Outcome | None:
        raw = self.client.hget(self.keys.batch_outcomes(batch_id), name)
        return Outcome.from_json(raw) if raw else None

    def has_outcome(self, batch_id: str, name: str) -> bool:
        return bool(self.client.hexists(self.keys.batch_outcomes(batch_id), name))

    def outcomes(self, batch_id: str) -> dict[str, Outcome]:
        raw = self.client.hgetall(self.keys.batch_outcomes(batch_id))
        return {name.decode(): Outcome.from_json(value) for name, value in raw.items()}

    def count_outcomes(self, batch_id: str) -> int:
        return int(self.client.hlen(self.keys.batch_outcomes(batch_id)))

    # progress and runs ----------------------------------------------------------------------------------
    def set_progress(self, batch_id: str, name: str, progress: Progress) -> None:
        self.client.hset(self.keys.batch_progress(batch_id), name, progress.model_dump_json())
        self.announce(batch_id, "progress", name)

    def progress(self, batch_id: str) -> dict[str, Progress]:
        raw = self.client.hgetall(self.keys.batch_progress(batch_id))
        return {name.decode(): Progress.from_json(value) for name, value in raw.items()}

    def count_run(self, batch_id: str, name: str) -> int:
        """One more delivery of this study started; returns how many have started."""
        return int(self.client.hincrby(self.keys.batch_runs(batch_id), name, 1))

    def runs(self, batch_id: str) -> dict[str, int]:
        raw = self.client.hgetall(self.keys.batch_runs(batch_id))
        return {name.decode(): int(value) for name, value in raw.items()}

    def claim_forced_write(self, task_id: str) -> bool:
        """True once per forced task: its recomputed result may replace the stored one exactly once."""
        return bool(self.client.set(self.keys.forced(task_id), 1, nx=True, ex=self.ttl))

    # fleet-wide counters --------------------------------------------------------------------------------
    def count_execution(self, node: str) -> None:
        self.client.hincrby(self.keys.executions(), node, 1)

    def executions(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.client.hgetall(self.keys.executions()).items()}

    # events -----------------------------------------------------------------------------------------------
    def announce(self, batch_id: str, kind: str, name: str) -> None:
        self.client.publish(self.keys.batch_channel(batch_id), f"{kind} {name}")

    def listen(self, batch_id: str):
        """A pub/sub subscription to this batch's events (call .get_message(timeout=...) on it)."""
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.keys.batch_channel(batch_id))
        return pubsub

    def delete(self, batch_ids: Iterable[str]) -> None:
        for batch_id in batch_ids:
            self.client.delete(*self.keys.batch_parts(batch_id))
