"""Where box masks overlap, which box owns the pixel: the overlap rule, decided here and nowhere else.

Rules (the routing setting `overlap`):
- "smaller": the box whose whole mask is smaller wins (its area in 2D, its volume in a 3D view); equal sizes: the
  later box. Nested and touching structures (a vessel inside an organ's box, the costal cartilage box over the
  liver) keep their voxels instead of being painted over by whichever box comes later.
- "later": the later box wins, the challenge baseline's painting order.

A box's size is known only once all of its masks in a view are: in a 3D view the lockstep propagation produces
them slice by slice, from two sweeps that visit some slices at different times. So every mask of a view is kept
(cropped to its own bounding box and bit-packed) until the view is done, and only then are the labels painted,
highest priority last. The result depends on the masks alone, never on the order they were produced in.
"""
from __future__ import annotations

import numpy as np

from worker.routing import OVERLAP_RULES

# Bytes a kept mask costs beyond its packed bits (the Python tuple, the ndarray object and their references).
ENTRY_OVERHEAD_BYTES = 320


def priorities(sizes: np.ndarray, rule: str) -> np.ndarray:
    """Per box, a rank in 1..N (int64); where masks overlap, the box with the higher rank owns the pixel."""
    count = len(sizes)
    if rule not in OVERLAP_RULES:
        raise ValueError(f"unknown overlap rule {rule!r}; choose from {', '.join(OVERLAP_RULES)}")
    ranks = np.empty(count, dtype=np.int64)
    if rule == "later":
        ranks[:] = np.arange(1, count + 1)
        return ranks
    # "smaller": ascending rank from the largest mask to the smallest; among equal sizes, the earlier box first
    order = np.lexsort((np.arange(count), -np.asarray(sizes, dtype=np.int64)))
    ranks[order] = np.arange(1, count + 1)
    return ranks


class ViewMasks:
    """Every box's masks in one view of a study, kept until the view is done, then painted by the overlap rule.

    shape: (D, H, W) of the view ((1, H, W) for a 2D image); masks are added per slice z for some of the boxes.
    """

    def __init__(self, shape: tuple[int, int, int], boxes: int):
        self.shape = tuple(int(s) for s in shape)
        self.sizes = np.zeros(boxes, dtype=np.int64)  # mask pixels per box, over the whole view
        self._kept: list[tuple[int, int, int, int, tuple[int, int], np.ndarray]] = []

    def add(self, z: int, box_ids: np.ndarray, masks: np.ndarray) -> None:
        """Masks (B, H, W) bool of boxes box_ids at slice z."""
        for box_id, mask in zip(box_ids, masks):
            rows = np.flatnonzero(mask.any(axis=1))
            if rows.size == 0:
                continue
            cols = np.flatnonzero(mask.any(axis=0))
            crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            self.sizes[box_id] += int(np.count_nonzero(crop))
            self._kept.append((int(box_id), int(z), int(rows[0]), int(cols[0]), crop.shape, np.packbits(crop)))

    def labels(self, rule: str) -> np.ndarray:
        """uint16 labels (box k -> k + 1) of shape (D, H, W): each pixel owned by its highest-priority mask."""
        ranks = priorities(self.sizes, rule)
        owner = np.zeros(self.shape, dtype=np.uint16)  # the owner's rank while painting, its label afterwards
        for box_id, z, row, col, (height, width), packed in self._kept:
            crop = np.unpackbits(packed, count=height * width).reshape(height, width).view(bool)
            region = owner[z, row:row + height, col:col + width]
            rank = np.uint16(ranks[box_id])
            region[crop & (region < rank)] = rank
        self._kept.clear()
        if rule != "later":  # there rank == label already
            lookup = np.zeros(len(ranks) + 1, dtype=np.uint16)
            lookup[ranks] = np.arange(1, len(ranks) + 1, dtype=np.uint16)
            for z in range(self.shape[0]):  # slice by slice: no second volume-sized array
                owner[z] = lookup[owner[z]]
        return owner


def kept_bytes(mask_slices: int, slice_pixels: int) -> int:
    """The most memory ViewMasks can hold for mask_slices (box, slice) masks on slices of slice_pixels pixels."""
    return mask_slices * (slice_pixels // 8 + 1 + ENTRY_OVERHEAD_BYTES)
