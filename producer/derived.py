"""Derived evaluation cases: defined in worker.evaluation.derived (worker calibrate uses them too), importable
from here as before."""

from worker.evaluation.derived import (
    MIN_PIXELS_2D,
    MIN_VOXELS_3D,
    SLICE_FRACTIONS,
    DerivedCase,
    boxes_in_window,
    derive_cases,
    from_image,
    from_volume,
    keep_labels,
    write_cases,
)

__all__ = [
    "MIN_PIXELS_2D",
    "MIN_VOXELS_3D",
    "SLICE_FRACTIONS",
    "DerivedCase",
    "boxes_in_window",
    "derive_cases",
    "from_image",
    "from_volume",
    "keep_labels",
    "write_cases",
]
