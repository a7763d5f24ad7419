"""The model's input contract: image and box pre-processing for SAM-family models (REFERENCE.md, "The models").

It belongs to the model (what its encoder and decoder were trained on, what export's parity fixture checks), so it
lives in models/: the worker's engine (worker/engine/slices.py, strategies.py), the export and the quantization
calibration all import this one module.

Per 2D image or slice: resize the longest side to S with new = int(old * S / max(h, w) + 0.5), min-max
normalise the resized image to [0, 1], zero-pad bottom/right to S x S; a grey slice is repeated to 3 channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}


@dataclass(frozen=True)
class Geometry:
    """How one original slice maps onto the model's S x S input."""

    original: tuple[int, int]  # (h, w)
    resized: tuple[int, int]  # (new_h, new_w)
    size: int  # S

    @property
    def scale(self) -> float:
        return self.size / max(self.original)


def geometry_for(shape_hw: tuple[int, int], size: int) -> Geometry:
    h, w = int(shape_hw[0]), int(shape_hw[1])
    scale = size / max(h, w)
    return Geometry((h, w), (int(h * scale + 0.5), int(w * scale + 0.5)), size)


def to_model_input(image: np.ndarray, size: int, interpolation: str = "linear") -> tuple[np.ndarray, Geometry]:
    """uint8 (H, W) or (H, W, 3) -> float32 (1, 3, S, S) in [0, 1], plus its geometry."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=-1)
    geo = geometry_for(image.shape[:2], size)
    new_h, new_w = geo.resized
    resized = cv2.resize(image, (new_w, new_h), interpolation=INTERPOLATIONS[interpolation]).astype(np.float32)
    low, high = float(resized.min()), float(resized.max())
    resized = (resized - low) / max(high - low, 1e-8)
    padded = np.zeros((size, size, 3), dtype=np.float32)
    padded[:new_h, :new_w] = resized
    return np.ascontiguousarray(padded.transpose(2, 0, 1)[None]), geo


def scale_boxes(boxes_xyxy: np.ndarray, geo: Geometry, rounding: str = "fractional") -> np.ndarray:
    """Original-pixel boxes (N, 4) -> model-input boxes (N, 4) float32.

    rounding "fractional": coord * S / max(h, w) as is; "truncate": int(coord * S / max(h, w)) per coordinate, the
    official baseline's integer model-pixel boxes.
    """
    scaled = np.asarray(boxes_xyxy, dtype=np.float64) * geo.scale
    if rounding == "truncate":
        scaled = np.trunc(scaled)
    elif rounding != "fractional":
        raise ValueError(f"unknown box rounding {rounding!r}")
    return scaled.astype(np.float32)
