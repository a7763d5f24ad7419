"""A study in, a segmentation out: what the producer hands the engine and what comes back.

A study's prompts are a worker.contract.prompts.Prompts value, which also holds the one decision whether a study
is 3D (`is_3d` here combines it with the image; validation, the engine, the producer's time budget and the
fleet's memory estimate all ask here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.contract.errors import StudyError
from worker.contract.metrics import StudyMetrics
from worker.contract.prompts import Prompts

__all__ = ["Prompts", "Segmentation", "Study", "StudyError", "is_3d"]


def is_3d(image: Any, prompts: Prompts) -> bool:
    """A (D, H, W) volume with 3D prompts; anything else (a 2D image, or malformed input) is not run as 3D."""
    return np.ndim(image) == 3 and prompts.is_3d


@dataclass(frozen=True)
class Study:
    """One image (2D RGB or 3D grey volume) with its prompts, in the challenge layout.

    image:   uint8 (H, W, 3) for 2D, (D, H, W) for 3D (axial slices first).
    prompts: per label its box and clicks (worker.contract.prompts). The challenge's box array, (N, 4)
             [x_min, y_min, x_max, y_max] or (N, 6) [x_min, y_min, z_min, x_max, y_max, z_max] inclusive, is
             accepted too and becomes box-only voxel prompts (Prompts.from_boxes; PromptError if it is none).
    spacing: as stored by the source (challenge: x, y, z order), only carried along for metrics.
    """

    study_id: str
    modality: str
    image: np.ndarray
    prompts: Prompts
    spacing: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompts, Prompts):
            object.__setattr__(self, "prompts", Prompts.from_boxes(self.prompts))

    @property
    def is_3d(self) -> bool:
        return is_3d(self.image, self.prompts)

    @property
    def boxes(self) -> np.ndarray:
        """The prompts' voxel boxes, (N, 4) or (N, 6) (Prompts.box_array)."""
        return self.prompts.box_array()


@dataclass
class Segmentation:
    """The engine's answer for one study: uint16 labels (box k -> k + 1) and how it was made."""

    study_id: str
    labels: np.ndarray
    metrics: StudyMetrics
