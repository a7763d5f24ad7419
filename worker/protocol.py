"""What crosses the boundary between producer and worker: a study in, a segmentation out.

This module imports only numpy so the producer can use it without OpenVINO.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


class StudyError(ValueError):
    """A problem with one study's input: reported for that study alone, never retried."""


@dataclass(frozen=True)
class Study:
    """One image (2D RGB or 3D grey volume) with its box prompts, in the challenge layout.

    image:  uint8 (H, W, 3) for 2D, (D, H, W) for 3D (axial slices first).
    boxes:  (N, 4) [x_min, y_min, x_max, y_max] or (N, 6) [x_min, y_min, z_min, x_max, y_max, z_max], inclusive.
    spacing: as stored by the source (challenge: x, y, z order), only carried along for metrics.
    """

    study_id: str
    modality: str
    image: np.ndarray
    boxes: np.ndarray
    spacing: tuple[float, ...] | None = None

    @property
    def is_3d(self) -> bool:
        return self.image.ndim == 3 and self.boxes.shape[1] == 6


@dataclass
class StageTimes:
    """Seconds spent per engine stage for one study."""

    load: float = 0.0
    preprocess: float = 0.0
    encode: float = 0.0
    decode: float = 0.0
    postprocess: float = 0.0
    vote: float = 0.0
    write: float = 0.0
    total: float = 0.0


@dataclass
class Counts:
    boxes: int = 0
    slices_encoded: int = 0
    decoder_calls: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_evictions: int = 0


@dataclass
class Provenance:
    model: str = ""
    model_sha256: str = ""
    precision: str = ""  # the profile that ran (never "fast": what it resolved to)
    encoder_precision: str = ""  # what each model part ran at for this study's strategy
    decoder_precision: str = ""
    precision_choice: str = ""  # for `--precision fast`: which profile it chose and why
    strategy: str = ""
    package_version: str = ""
    overlap: str = ""  # the rule that gave overlapping pixels an owner: "smaller" or "later" (worker/engine/overlap.py)
    note: str = ""


@dataclass
class StudyMetrics:
    times: StageTimes = field(default_factory=StageTimes)
    counts: Counts = field(default_factory=Counts)
    provenance: Provenance = field(default_factory=Provenance)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudyMetrics":
        return cls(
            times=StageTimes(**data.get("times", {})),
            counts=Counts(**data.get("counts", {})),
            provenance=Provenance(**data.get("provenance", {})),
            extra=dict(data.get("extra", {})),
        )


@dataclass
class Segmentation:
    """The engine's answer for one study: uint16 labels (box k -> k + 1) and how it was made."""

    study_id: str
    labels: np.ndarray
    metrics: StudyMetrics
