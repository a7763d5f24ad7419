"""Turn a found study source into a Study the engine can run."""
from __future__ import annotations

from producer.discovery import StudySource
from producer.formats.npz import load_npz_study
from worker.protocol import Study

LOADERS = {"npz": load_npz_study}


def load_study(source: StudySource) -> Study:
    return LOADERS[source.kind](source.path)
