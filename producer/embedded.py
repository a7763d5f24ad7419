"""The embedded default: run every study in this process with the same engine the fleet workers run."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from producer.discovery import StudySource
from producer.formats.outcome import StudyOutcome
from producer.loading import load_study_and_context
from worker.contract.study import Study, StudyError

log = logging.getLogger(__name__)
SliceProgress = Callable[[str, int, int], None]


class EmbeddedRunner:
    def __init__(self, engine_settings=None):
        from worker.calibration import choose_profile
        from worker.engine.engine import Engine  # OpenVINO is needed only when studies run in-process

        self.engine = Engine(engine_settings, choose_profile)  # `fast`: this host's calibrated profile

    def run_one(self, source: StudySource, on_slices: SliceProgress | None = None) -> StudyOutcome:
        started = time.perf_counter()
        try:
            study, context = load_study_and_context(source)
        except StudyError as error:
            return StudyOutcome(
                name=source.name, status="error", error=str(error), seconds=time.perf_counter() - started
            )
        except Exception as error:  # one study's failure must not stop the batch
            log.exception("study %s failed", source.name)
            return StudyOutcome(
                name=source.name,
                status="error",
                seconds=time.perf_counter() - started,
                error=f"internal error: {type(error).__name__}: {error}",
            )
        outcome = self.run_study(source.name, study, on_slices)
        outcome.context, outcome.notes = context, list(context.notes)
        outcome.seconds = time.perf_counter() - started
        return outcome

    def run_study(self, name: str, study: Study, on_slices: SliceProgress | None = None) -> StudyOutcome:
        """Segment a study already loaded (the gateway loads it once for the mask, thumbnail and SEG)."""
        started = time.perf_counter()
        outcome = StudyOutcome(name=name, modality=study.modality)
        try:
            report = (lambda done, total: on_slices(name, done, total)) if on_slices else None
            result = self.engine.segment(study, progress=report)
            outcome.labels, outcome.metrics = result.labels, result.metrics.to_dict()
        except StudyError as error:
            outcome.status, outcome.error = "error", str(error)
        except Exception as error:  # one study's failure must not stop the batch
            log.exception("study %s failed", name)
            outcome.status, outcome.error = "error", f"internal error: {type(error).__name__}: {error}"
        outcome.seconds = time.perf_counter() - started
        return outcome
