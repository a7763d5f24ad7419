"""StudyOutcome, what the producer records for each study: defined in producer.formats.outcome (the format
writers take it, and they sit below the producer), importable from here as before."""

from producer.formats.outcome import StudyOutcome

__all__ = ["StudyOutcome"]
