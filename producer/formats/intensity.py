"""Real-unit image values -> the models' 8-bit input, as the challenge organisers prepared their data.

Rules, in order (the first that applies wins):
1. A window given in the study's sidecar ("window": {"level": L, "width": W}), any modality:
   values are clipped to [L - W/2, L + W/2] and mapped linearly onto 0..255.
2. CT: the same with the challenge's soft-tissue window, level 40 HU, width 400 HU (HU = stored value after
   RescaleSlope/Intercept). The bounds are fixed, not the clipped volume's min/max as the organisers' script took;
   the two agree whenever the volume spans the window, as any body CT does.
3. Grey 2D images stored as 8-bit without a rescale or LUT (most ultrasound, photographs, 8-bit radiographs)
   and colour images stored as 8-bit: passed through unchanged, they already are the models' input range.
4. Everything else (MR, PET, 16-bit radiographs and mammograms, ...): the 0.5 and 99.5 percentiles of the
   non-zero values bound a linear map onto 0..255 (values clipped first); voxels that were 0 stay 0.
   If the non-zero values are all equal they map to 255.
Scaled values are truncated to integers (the organisers' `np.uint8(x)`), so 255 is reached only at the upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.contract.study import StudyError

PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Window:
    level: float
    width: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.level) and np.isfinite(self.width)) or self.width <= 0:
            raise StudyError(f"window level {self.level} / width {self.width}: width must be a positive number")

    @property
    def bounds(self) -> tuple[float, float]:
        return self.level - self.width / 2, self.level + self.width / 2


CT_WINDOW = Window(level=40.0, width=400.0)


def _linear_to_uint8(values: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """float64 arithmetic like the organisers' script (float32 turns the upper bound into 254), a slice at a time."""
    out = np.empty(values.shape, np.uint8)
    for index in range(values.shape[0]):
        clipped = np.clip(values[index].astype(np.float64), lower, upper)
        out[index] = (clipped - lower) / (upper - lower) * 255.0
    return out


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Rule 1/2: clip to the window and stretch it onto 0..255."""
    return _linear_to_uint8(values, *window.bounds)


def scale_percentiles(values: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Rule 4: non-zero percentiles -> 0..255, zeros kept at 0."""
    nonzero = values != 0
    if not nonzero.any():
        return np.zeros(values.shape, np.uint8)
    lower, upper = (float(v) for v in np.percentile(values[nonzero], percentiles))
    if upper <= lower:
        return np.where(nonzero, 255, 0).astype(np.uint8)
    scaled = _linear_to_uint8(values, lower, upper)
    scaled[~nonzero] = 0
    return scaled


def to_uint8(values: np.ndarray, modality: str, window: Window | None, passthrough: bool) -> np.ndarray:
    """Pick the rule for one image (grey (D, H, W) or colour (..., 3)); `passthrough` = rule 3 applies."""
    if window is not None:
        return apply_window(values, window)
    if modality == "CT":
        return apply_window(values, CT_WINDOW)
    if passthrough:
        return np.asarray(values, dtype=np.uint8)
    return scale_percentiles(values)
