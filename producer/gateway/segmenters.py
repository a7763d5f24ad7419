"""Who segments a gateway job's study, and who computes its sessions' steps: the engine in this process, or the
fleet (make_segmenter, make_session_engine: the one place each is chosen).

Both take a loaded Study and return a producer.outcome.StudyOutcome (labels + metrics, or an error), reporting
slice progress as they go. Both reuse stored results: the fleet by its content-addressed store (producer.api), the
embedded one by a write-once folder of result records keyed the same way (worker.contract.identity), so running a
job again costs no engine time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from producer.formats.outcome import StudyOutcome
from producer.sessions import LocalSessions, SessionEngine
from worker.contract.files import write_bytes_atomic
from worker.contract.study import Study, StudyError

log = logging.getLogger(__name__)
ProgressFn = Callable[[int, int], None]  # (slices done, slices in all)


class Segmenter(Protocol):
    mode: str

    def segment(self, name: str, study: Study, progress: ProgressFn) -> StudyOutcome: ...


class EmbeddedSegmenter:
    """One engine in this process; the gateway runs one job at a time through it."""

    mode = "embedded"

    def __init__(self, engine_settings, results_dir: Path):
        from producer.embedded import EmbeddedRunner

        self.runner = EmbeddedRunner(engine_settings)
        self.runner.engine.warm_up()
        self.identity = self.runner.engine.identity()
        self.results_dir = Path(results_dir)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one engine: one study at a time, whatever calls it

    def _key(self, study: Study) -> str | None:
        from worker.contract.identity import image_digest

        try:
            return self.identity.result_key(image_digest(study.image), study.prompts, study.modality)
        except (LookupError, ValueError):
            return None  # the engine says what is wrong

    def segment(self, name: str, study: Study, progress: ProgressFn) -> StudyOutcome:
        from worker.contract.messages import ResultRecord
        from worker.contract.metrics import StudyMetrics

        key = self._key(study)
        path = self.results_dir / f"{key}.npz" if key else None
        if path is not None and path.is_file():
            record = ResultRecord.from_bytes(path.read_bytes())
            record.metrics.note(cached=True, result_key=key)
            progress(1, 1)
            return StudyOutcome(name, study.modality, labels=record.labels, metrics=record.metrics.to_dict())
        with self._lock:
            outcome = self.runner.run_study(name, study, lambda _name, done, total: progress(done, total))
        if outcome.ok and path is not None:
            outcome.metrics.setdefault("extra", {}).update(cached=False, result_key=key)
            record = ResultRecord(outcome.labels, StudyMetrics.model_validate(outcome.metrics))
            write_bytes_atomic(path, record.to_bytes())
        return outcome


class FleetSegmenter:
    """The fleet behind a broker, through producer.api: one batch of one study per job, followed by its events
    (producer.api.submit_studies waits on the batch's pub/sub channel, re-reading the whole batch every few seconds
    in case an event was missed), never by polling its status."""

    mode = "fleet"

    def __init__(self, broker: str, timeout: float | None = None):
        self.broker = broker
        self.timeout = timeout

    def segment(self, name: str, study: Study, progress: ProgressFn) -> StudyOutcome:
        from producer import api

        def report(study_name: str, done: int, total: int) -> None:
            if study_name == name:
                progress(done, total)

        try:
            batch = api.submit_studies({name: study}, self.broker, timeout=self.timeout, on_progress=report)
        except TimeoutError as error:
            raise StudyError(
                f"the fleet did not finish the study within {self.timeout:g} s ({error}; is a worker serving its "
                "queue?)"
            ) from None
        outcomes = [o for o in batch.outcomes if o.name == name]
        if not outcomes:
            raise StudyError(f"the fleet batch {batch.batch_id} finished without an outcome for {name}")
        outcome = outcomes[0]
        outcome.metrics.setdefault("extra", {})["batch_id"] = batch.batch_id
        return outcome


def make_segmenter(broker: str | None, engine_settings, data_dir: Path, fleet_timeout: float | None) -> Segmenter:
    if broker:
        return FleetSegmenter(broker, fleet_timeout)
    return EmbeddedSegmenter(engine_settings, Path(data_dir) / "results")


def make_session_engine(broker: str | None, engine_settings) -> SessionEngine:
    """Sessions on the fleet's workers with a broker (producer.fleet_sessions), else on one engine of their own
    in this process (an embedded gateway's jobs keep theirs, so a running job never holds up a click)."""
    if broker:
        from producer.fleet_sessions import FleetSessions

        return FleetSessions(broker)
    return LocalSessions(engine_settings)
