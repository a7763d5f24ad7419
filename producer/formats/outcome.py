"""What the producer records for each study, however it was run (in-process or by the fleet)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class StudyOutcome:
    name: str
    modality: str = ""
    status: str = "ok"  # "ok" or "error"
    error: str = ""
    labels: np.ndarray | None = field(default=None, repr=False)
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # wall time for this study as the producer saw it
    notes: list[str] = field(default_factory=list)  # what the user should know (grouping, derived UIDs, fallbacks)
    context: Any = field(default=None, repr=False)  # producer.formats.output_context.OutputContext, for the writers
    # the DICOM objects written to the output folder, by output format name (producer.formats.dicom_outputs), as
    # they were written: a sender (the gateway's STOW-RS) hands them on without reading the files back
    written: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def record(self) -> dict[str, Any]:
        """The JSON-able line written to metrics.jsonl (everything but the mask)."""
        return {
            "study": self.name,
            "modality": self.modality,
            "status": self.status,
            "error": self.error,
            "seconds": round(self.seconds, 4),
            "notes": list(self.notes),
            "metrics": self.metrics,
        }
