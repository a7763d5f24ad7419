"""Where box masks overlap, which box owns the pixel: the overlap rule, decided here and nowhere else.

Rules (the routing setting `overlap`):
- "smaller": the mask of the box with the smaller prompt box wins (the box's area in 2D, its volume in 3D, in
  inclusive pixels, so the same in every tri-view view); equal sizes: the later box. Nested and touching
  structures (a vessel inside an organ's box, the costal cartilage box over the liver) keep their voxels instead of
  being painted over by whichever box comes later. Sizing by the box, not by the mask, is what the issue measured
  (3DBox_CT_tssm 0.528 -> 0.575): a sprawling box whose mask leaks into its neighbour is the case to stop, and
  its mask need not be the larger one (sizing by mask volume left tssm at 0.527; ops/bench/RESULTS.md).
- "later": the later box wins, the challenge baseline's painting order.

Every mask of a view is kept (cropped to its own bounding box and bit-packed) until the view is done, and only
then are the labels painted, highest priority last, so the result depends on the masks and boxes alone, never on
the order the lockstep propagation's two sweeps produced them in.
"""

from __future__ import annotations

import numpy as np

from worker.contract.routing import OVERLAP_RULES

# Bytes a kept mask costs beyond its packed bits (the Python tuple, the ndarray object and their references).
ENTRY_OVERHEAD_BYTES = 320


def box_sizes(boxes: np.ndarray) -> np.ndarray:
    """Inclusive area of (N, 4) [x0, y0, x1, y1] boxes or volume of (N, 6) [x0, y0, z0, x1, y1, z1] boxes (int64)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    half = boxes.shape[1] // 2
    extents = np.floor(boxes[:, half:]) - np.floor(boxes[:, :half]) + 1
    return np.prod(np.maximum(extents, 1), axis=1).astype(np.int64)


def priorities(sizes: np.ndarray, rule: str) -> np.ndarray:
    """Per box, a rank in 1..N (int64); where masks overlap, the box with the higher rank owns the pixel."""
    count = len(sizes)
    if rule not in OVERLAP_RULES:
        raise ValueError(f"unknown overlap rule {rule!r}; choose from {', '.join(OVERLAP_RULES)}")
    ranks = np.empty(count, dtype=np.int64)
    if rule == "later":
        ranks[:] = np.arange(1, count + 1)
        return ranks
    # "smaller": ascending rank from the largest box to the smallest; among equal sizes, the earlier box first
    order = np.lexsort((np.arange(count), -np.asarray(sizes, dtype=np.int64)))
    ranks[order] = np.arange(1, count + 1)
    return ranks


class ViewMasks:
    """Every box's masks in one view of a study, kept until the view is done, then painted by the overlap rule.

    shape: (D, H, W) of the view ((1, H, W) for a 2D image); masks are added per slice z for some of the boxes.
    """

    def __init__(self, shape: tuple[int, int, int], sizes: np.ndarray):
        self.shape = tuple(int(s) for s in shape)
        self.sizes = np.asarray(sizes, dtype=np.int64)  # per box, what the "smaller" rule compares (box_sizes)
        self._kept: list[tuple[int, int, int, int, tuple[int, int], np.ndarray]] = []

    def add(self, z: int, box_ids: np.ndarray, masks: np.ndarray) -> None:
        """Masks (B, H, W) bool of boxes box_ids at slice z."""
        for box_id, mask in zip(box_ids, masks):
            rows = np.flatnonzero(mask.any(axis=1))
            if rows.size == 0:
                continue
            cols = np.flatnonzero(mask.any(axis=0))
            crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            self._kept.append((int(box_id), int(z), int(rows[0]), int(cols[0]), crop.shape, np.packbits(crop)))

    def labels(self, rule: str) -> np.ndarray:
        """uint16 labels (box k -> k + 1) of shape (D, H, W): each pixel owned by its highest-priority mask."""
        ranks = priorities(self.sizes, rule)
        owner = np.zeros(self.shape, dtype=np.uint16)  # the owner's rank while painting, its label afterwards
        for box_id, z, row, col, (height, width), packed in self._kept:
            crop = np.unpackbits(packed, count=height * width).reshape(height, width).view(bool)
            region = owner[z, row : row + height, col : col + width]
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
