"""How much memory one study needs while the engine runs it, from its shape alone (before any work).

Counted per voxel: the image as decoded from the store and the array made from it, a uint16 label volume per
view, and for tri-view the majority vote's temporaries (two uint16 minima, three boolean comparisons, the
uint16 result and the nested np.where's). Per slice: each box's boolean mask at full size, the float32 logits
being resized, and a fixed allowance for the model's input and embedding tensors. Per view: the masks the overlap
rule keeps until the view is done (worker/engine/overlap.py; at most one bit per pixel of each (box, slice) a box's
range covers, one view at a time). The model itself and the
embedding cache are the process's, not the study's (the engine adds the cache's headroom).
tests/test_memory.py checks the estimate against numpy's measured peak for each strategy.
"""

from __future__ import annotations

import math

import numpy as np

from worker.engine.overlap import kept_bytes

PER_VIEW_LABEL_BYTES = 2  # uint16
VOTE_BYTES = 2 + 2 + 3 + 2 + 2  # minimum, minimum, three == masks, inner where, outer where
SLICE_FLOAT_COPIES = 4 * 3  # float32 logits and its two resized copies
MODEL_TENSORS = 64 << 20  # a 1024x1024x3 float32 input (12 MiB), embeddings, decoder outputs, with margin
# per view of a (z, y, x) volume: the columns of a 3D box's range along the view's slice axis, and that axis
VIEW_RANGES = (((2, 5), 0), ((1, 4), 1), ((0, 3), 2))  # axial: z, coronal: y, sagittal: x


def slice_pixels(shape: tuple[int, ...], views: int) -> int:
    """The largest slice of a (z, y, x) volume the strategy handles: the axial face, or every face for tri-view."""
    depth, height, width = shape[:3]
    faces = [height * width] + ([depth * width, depth * height] if views == 3 else [])
    return max(faces)


def kept_masks_bytes(shape: tuple[int, ...], boxes: np.ndarray, is_3d: bool, views: int) -> int:
    """The most memory the kept masks of any one view take: each box's slice range times the view's face."""
    if not is_3d:
        return kept_bytes(len(boxes), math.prod(shape[:2]))
    worst = 0
    for (lo, hi), axis in VIEW_RANGES[:views]:
        depth = int(shape[axis])
        slices = len(boxes) * depth  # every box on every slice: the bound for boxes validation will refuse
        try:
            ranges = np.clip(np.asarray(boxes, dtype=np.float64)[:, [lo, hi]], 0, depth - 1)
            if np.all(np.isfinite(ranges)):
                slices = int(np.clip(np.diff(ranges.astype(np.int64), axis=1) + 1, 0, depth).sum())
        except (TypeError, ValueError):
            pass
        worst = max(worst, kept_bytes(slices, math.prod(shape) // max(depth, 1)))
    return worst


def study_bytes(shape: tuple[int, ...], itemsize: int, boxes: np.ndarray, is_3d: bool, views: int) -> int:
    """Bytes of numpy arrays a study of this shape allocates at its peak (views: 1, or 3 for tri-view)."""
    voxels = math.prod(shape)
    image = 2 * voxels * itemsize  # the decoded blob and the study's array
    if is_3d:
        volume = voxels * (PER_VIEW_LABEL_BYTES * views + (VOTE_BYTES if views == 3 else 0))
        pixels = slice_pixels(shape, views)
    else:
        pixels = math.prod(shape[:2])  # any shape: a malformed study is refused later by the engine, not here
        volume = pixels * PER_VIEW_LABEL_BYTES
    per_slice = pixels * (max(1, len(boxes)) + SLICE_FLOAT_COPIES)
    return image + volume + per_slice + kept_masks_bytes(shape, boxes, is_3d, views) + MODEL_TENSORS
