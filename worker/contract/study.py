"""A study in, a segmentation out: what the producer hands the engine and what comes back.

Also the one place that decides whether a study is 3D (`is_3d`): validation, the engine, the producer's time budget
and the fleet's memory estimate all ask here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.contract.metrics import StudyMetrics

BOX_WIDTH_2D = 4  # [x_min, y_min, x_max, y_max]
BOX_WIDTH_3D = 6  # [x_min, y_min, z_min, x_max, y_max, z_max]


class StudyError(ValueError):
    """A problem with one study's input: reported for that study alone, never retried."""


def has_3d_boxes(boxes: Any) -> bool:
    """The boxes are (N, 6): a 3D study's, whatever the image (validation says when the two disagree)."""
    shape = np.shape(boxes)
    return len(shape) == 2 and shape[1] == BOX_WIDTH_3D


def is_3d(image: Any, boxes: Any) -> bool:
    """A (D, H, W) volume with (N, 6) boxes; anything else (a 2D image, or malformed input) is not run as 3D."""
    return np.ndim(image) == 3 and has_3d_boxes(boxes)


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
        return is_3d(self.image, self.boxes)


@dataclass
class Segmentation:
    """The engine's answer for one study: uint16 labels (box k -> k + 1) and how it was made."""

    study_id: str
    labels: np.ndarray
    metrics: StudyMetrics
