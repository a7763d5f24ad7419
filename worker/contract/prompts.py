"""A study's prompts: per label, an optional box and ordered clicks, each in voxels or in millimetres.

The one value every layer passes (a format reads it, the producer sends it, the worker's engine runs it) and the
one place that knows a study's dimensionality (`Prompts.is_3d`; study.is_3d asks here).

- Label k + 1 is `labels[k]`: a `LabelPrompt` with an optional `Box` and the `Click`s given for it, in order.
- A box is the challenge's inclusive layout: [x_min, y_min, x_max, y_max] in 2D, [x_min, y_min, z_min, x_max,
  y_max, z_max] in 3D; a click is (x, y) or (x, y, z), foreground or background. x = column, y = row, z = slice.
- Each box and click says its space: "voxel" (array indices) or "mm" (world millimetres: DICOM patient LPS, the
  NIfTI RAS world). Only a format knows an image's geometry, so a format maps mm to voxels
  (producer.formats.boxes); the engine takes voxel boxes and refuses what it cannot run (validation).
- `box_array()` is the engine's and the content key's view: the (N, 4) or (N, 6) voxel boxes with the number
  type they came in (`box_dtype`), so a study's masks and result key are those of its box array, bit for bit.

numpy, pydantic and the standard library only (the contract's rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

from worker.contract.errors import StudyError

Space = Literal["voxel", "mm"]
VOXEL: Space = "voxel"
MM: Space = "mm"
SPACES: tuple[Space, ...] = (VOXEL, MM)
BOX_WIDTH_2D = 4  # [x_min, y_min, x_max, y_max]
BOX_WIDTH_3D = 6  # [x_min, y_min, z_min, x_max, y_max, z_max]
BOX_WIDTH = {2: BOX_WIDTH_2D, 3: BOX_WIDTH_3D}


class PromptError(StudyError):
    """Prompts that cannot be (a box array of the wrong shape or type, mixed dimensionality): what is wrong, for
    that study alone (a StudyError)."""


@dataclass(frozen=True)
class Box:
    """One box: inclusive corners, `dims` (2 or 3) coordinates each, in `space`."""

    coords: tuple[float, ...]  # [x_min, y_min, (z_min,) x_max, y_max, (z_max)]
    space: Space = VOXEL

    @property
    def dims(self) -> int:
        return len(self.coords) // 2


@dataclass(frozen=True)
class Click:
    """One click: a point, foreground (inside the structure) or background (outside it), in `space`."""

    point: tuple[float, ...]  # (x, y) or (x, y, z)
    foreground: bool = True
    space: Space = VOXEL

    @property
    def dims(self) -> int:
        return len(self.point)


@dataclass(frozen=True)
class LabelPrompt:
    """What one label (segment) is prompted with: an optional box, and clicks in the order they were given."""

    box: Box | None = None
    clicks: tuple[Click, ...] = ()

    @property
    def foreground(self) -> tuple[Click, ...]:
        return tuple(click for click in self.clicks if click.foreground)

    @property
    def background(self) -> tuple[Click, ...]:
        return tuple(click for click in self.clicks if not click.foreground)


@dataclass(frozen=True)
class Prompts:
    """Per label (label k + 1 is labels[k]) its box and clicks; `dims` 2 or 3 for every one of them."""

    labels: tuple[LabelPrompt, ...]
    dims: int
    # the number type of the box array they were given as (numpy dtype.str); None: int64 when every coordinate
    # is an integer, else float64 (never a silent truncation)
    box_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.dims not in BOX_WIDTH:
            raise PromptError(f"prompts are 2D or 3D, not {self.dims}D")
        for index, label in enumerate(self.labels):
            shapes = ([label.box.coords] if label.box else []) + [click.point for click in label.clicks]
            widths = ([BOX_WIDTH[self.dims]] if label.box else []) + [self.dims] * len(label.clicks)
            if any(len(shape) != width for shape, width in zip(shapes, widths)):
                raise PromptError(f"label {index + 1}: its box and clicks are not all {self.dims}D")

    @classmethod
    def from_boxes(cls, boxes: Any) -> Prompts:
        """Box-only voxel prompts from the challenge's (N, 4) or (N, 6) box array (PromptError when it is none)."""
        array = np.asarray(boxes) if not isinstance(boxes, np.ndarray) else boxes
        if array.dtype.kind not in "iuf":
            raise PromptError("boxes must be a numeric array")
        if array.ndim != 2 or array.shape[1] not in (BOX_WIDTH_2D, BOX_WIDTH_3D):
            raise PromptError(
                f"boxes have shape {array.shape}, expected (N, {BOX_WIDTH_2D}) for a 2D image "
                f"or (N, {BOX_WIDTH_3D}) for a 3D one"
            )
        rows = array.tolist()
        return cls(tuple(LabelPrompt(Box(tuple(row))) for row in rows), array.shape[1] // 2, array.dtype.str)

    @property
    def is_3d(self) -> bool:
        """The prompts are 3D: (x, y, z) boxes and clicks. The one decision; a study is 3D when its prompts are
        and its image is a volume (worker.contract.study.is_3d; validation refuses a disagreement)."""
        return self.dims == 3

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def boxes_only(self) -> bool:
        """Every label has a voxel box and no clicks: what the box strategies run."""
        return all(label.box is not None and label.box.space == VOXEL and not label.clicks for label in self.labels)

    @property
    def has_clicks(self) -> bool:
        return any(label.clicks for label in self.labels)

    def box_array(self) -> np.ndarray:
        """(N, 4) or (N, 6) voxel boxes, in the number type they were given in (PromptError if a label has no
        voxel box: mm boxes are mapped to voxels by the format that knows the geometry). A fresh copy."""
        return self._box_array.copy()

    @cached_property
    def _box_array(self) -> np.ndarray:
        for index, label in enumerate(self.labels):
            if label.box is None:
                raise PromptError(f"label {index + 1} has no box")
            if label.box.space != VOXEL:
                raise PromptError(f"label {index + 1}: its box is in {label.box.space}, not voxels")
        rows = [label.box.coords for label in self.labels if label.box is not None]
        dtype = self.box_dtype
        if dtype is None:
            integral = all(isinstance(v, (int, np.integer)) for row in rows for v in row)
            dtype = "<i8" if integral else "<f8"
        return np.array(rows, dtype=np.dtype(dtype)).reshape(len(rows), BOX_WIDTH[self.dims])

    def clicks_digest_data(self) -> list[list[list[Any]]]:
        """The clicks as plain data, per label and in order (for content keys): [[x, y(, z)], fg, space]."""
        return [[[list(c.point), c.foreground, c.space] for c in label.clicks] for label in self.labels]
