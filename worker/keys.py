"""Every Redis key and channel the fleet uses, in one place, under one namespace prefix."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    namespace: str = "lms"

    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    # blob names in the store (which puts them under the namespace: `<ns>:blob:<name>` or `<root>/<ns>/<name>`)
    @staticmethod
    def input_blob(image_digest: str) -> str:
        return f"input/{image_digest}"

    @staticmethod
    def result_blob(result_key: str) -> str:
        return f"result/{result_key}"

    def forced(self, task_id: str) -> str:
        """Marks that a forced recomputation already replaced its result (a duplicate delivery must not again)."""
        return self._key("forced", task_id)

    # batches
    def batch_meta(self, batch_id: str) -> str:
        return self._key("batch", batch_id, "meta")

    def batch_studies(self, batch_id: str) -> str:
        return self._key("batch", batch_id, "studies")

    def batch_outcomes(self, batch_id: str) -> str:
        return self._key("batch", batch_id, "outcomes")

    def batch_progress(self, batch_id: str) -> str:
        return self._key("batch", batch_id, "progress")

    def batch_runs(self, batch_id: str) -> str:
        return self._key("batch", batch_id, "runs")

    def batch_channel(self, batch_id: str) -> str:
        return self._key("batch", batch_id, "events")

    def batch_parts(self, batch_id: str) -> tuple[str, ...]:
        return (self.batch_meta(batch_id), self.batch_studies(batch_id), self.batch_outcomes(batch_id),
                self.batch_progress(batch_id), self.batch_runs(batch_id))

    # fleet-wide
    def identities(self, queue: str) -> str:
        return self._key("identities", queue)

    def executions(self) -> str:
        """Hash: worker node name -> number of engine runs (a study actually segmented)."""
        return self._key("executions")
