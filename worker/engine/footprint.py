"""How much memory one study needs while the engine runs it, from its shape alone (before any work).

Counted per voxel: the image as decoded from the store and the array made from it, a uint16 label volume per
view, and for tri-view the majority vote's temporaries (two uint16 minima, three boolean comparisons, the
uint16 result and the nested np.where's). Per slice: each box's boolean mask at full size, the float32 logits
being resized, and a fixed allowance for the model's input and embedding tensors. The model itself and the
embedding cache are the process's, not the study's (the engine adds the cache's headroom).
tests/test_memory.py checks the estimate against numpy's measured peak for each strategy.
"""
from __future__ import annotations

import math

PER_VIEW_LABEL_BYTES = 2  # uint16
VOTE_BYTES = 2 + 2 + 3 + 2 + 2  # minimum, minimum, three == masks, inner where, outer where
SLICE_FLOAT_COPIES = 4 * 3  # float32 logits and its two resized copies
MODEL_TENSORS = 64 << 20  # a 1024x1024x3 float32 input (12 MiB), embeddings, decoder outputs, with margin


def slice_pixels(shape: tuple[int, ...], views: int) -> int:
    """The largest slice of a (z, y, x) volume the strategy handles: the axial face, or every face for tri-view."""
    depth, height, width = shape[:3]
    faces = [height * width] + ([depth * width, depth * height] if views == 3 else [])
    return max(faces)


def study_bytes(shape: tuple[int, ...], itemsize: int, boxes: int, is_3d: bool, views: int) -> int:
    """Bytes of numpy arrays a study of this shape allocates at its peak (views: 1, or 3 for tri-view)."""
    voxels = math.prod(shape)
    image = 2 * voxels * itemsize  # the decoded blob and the study's array
    if is_3d:
        volume = voxels * (PER_VIEW_LABEL_BYTES * views + (VOTE_BYTES if views == 3 else 0))
        pixels = slice_pixels(shape, views)
    else:
        pixels = math.prod(shape[:2])  # any shape: a malformed study is refused later by the engine, not here
        volume = pixels * PER_VIEW_LABEL_BYTES
    per_slice = pixels * (max(1, boxes) + SLICE_FLOAT_COPIES)
    return image + volume + per_slice + MODEL_TENSORS
