"""The paper's strategies: 2D box prompts, slice-to-slice box propagation (CT/MR), tri-view voting (PET).

Labels: box k -> k + 1, uint16. Where boxes' masks overlap, the routing's overlap rule decides
(worker/engine/overlap.py: the smaller mask, or the later box), once every mask of the image or view is known, so
the result does not depend on processing order. All boxes of a volume advance in lockstep, slice by slice, so one
cached embedding serves every box there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.preprocess import Geometry, geometry_for, scale_boxes
from worker.contract.strategies import PROPAGATE, STRATEGIES, TRIVIEW, VIEWS
from worker.engine.overlap import ViewMasks, box_sizes
from worker.engine.slices import ProgressFn, SliceSegmenter

VIEW_2D = "2d"  # the embedding cache's view name of a 2D image (one slice, index 0)


def segment_2d(
    image: np.ndarray, boxes: np.ndarray, seg: SliceSegmenter, overlap: str, progress: ProgressFn | None
) -> np.ndarray:
    """Encode once, decode every box, label by the overlap rule."""
    geo = geometry_for(image.shape[:2], seg.size)
    embedding = seg.embedding(VIEW_2D, 0, image)
    masks = seg.masks(embedding, geo, scale_boxes(boxes[:, :4], geo, seg.settings.box_rounding))
    with seg.clock.stage("postprocess"):
        view = ViewMasks((1, *image.shape[:2]), box_sizes(boxes[:, :4]))
        view.add(0, np.arange(len(boxes)), masks)
        del masks
        labels = view.labels(overlap)[0]
    if progress:
        progress(1, 1)
    return labels


@dataclass
class Sweep:
    """One direction of the propagation: which boxes are active at each slice, and their current prompts."""

    slices: range
    first: np.ndarray  # per box: the slice where it starts in this sweep
    last: np.ndarray  # per box: the slice where it ends (inclusive)


def prompt_from_mask(mask: np.ndarray, geo: Geometry, margin: float) -> np.ndarray | None:
    """Tight box of a mask, in model-input pixels, grown by margin; None if the mask is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    new_h, new_w = geo.resized
    box = np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float64) * geo.scale
    box += (-margin, -margin, margin, margin)
    return np.clip(box, 0, (new_w, new_h, new_w, new_h)).astype(np.float32)


def sweeps(z_lo: np.ndarray, z_hi: np.ndarray) -> tuple[Sweep, Sweep]:
    """Up from each box's middle slice to z_max, then down from middle - 1 to z_min (both inclusive)."""
    mid = (z_lo + z_hi) // 2
    up = Sweep(range(int(mid.min()), int(z_hi.max()) + 1), mid, z_hi)
    down = Sweep(range(int(mid.max()) - 1, int(z_lo.min()) - 1, -1), mid - 1, z_lo)
    return up, down


def sweep_steps(sweep: Sweep) -> int:
    return sum(1 for z in sweep.slices if _active(sweep, z).size)


def z_ranges(boxes: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Per box (in a view's box order): its first and last slice, clipped to the volume."""
    return (np.clip(boxes[:, 2].astype(np.int64), 0, depth - 1), np.clip(boxes[:, 5].astype(np.int64), 0, depth - 1))


def slice_order(z_lo: np.ndarray, z_hi: np.ndarray) -> list[int]:
    """The slices a propagation encodes, in the order it first needs them: the up sweep, then the down sweep's
    new ones (each once: the embedding cache serves the down sweep's repeats)."""
    order: list[int] = []
    seen: set[int] = set()
    for sweep in sweeps(z_lo, z_hi):
        for z in sweep.slices:
            if z not in seen and _active(sweep, z).size:
                seen.add(z)
                order.append(z)
    return order


def view_plan(shape: tuple[int, ...], boxes: np.ndarray, view: str) -> tuple[list[int], int]:
    """(the view's slices in the order its propagation needs them, its slice steps) for a (z, y, x) volume of
    `shape` and 3D boxes in the challenge layout."""
    axes, box_order = VIEWS[view].axes, VIEWS[view].box_order
    z_lo, z_hi = z_ranges(np.asarray(boxes)[:, box_order], int(shape[axes[0]]))
    up, down = sweeps(z_lo, z_hi)
    return slice_order(z_lo, z_hi), sweep_steps(up) + sweep_steps(down)


def _active(sweep: Sweep, z: int) -> np.ndarray:
    step = sweep.slices.step
    started = (sweep.first - z) * step <= 0  # z is at or past the box's first slice in this direction
    not_done = (z - sweep.last) * step <= 0
    return np.flatnonzero(started & not_done)


class Propagation:
    """Box propagation through one view of a volume, all boxes in lockstep."""

    def __init__(
        self, volume: np.ndarray, boxes: np.ndarray, seg: SliceSegmenter, view: str, margin: float, overlap: str
    ):
        self.volume = volume
        self.seg = seg
        self.view = view
        self.margin = margin
        self.overlap = overlap
        self.geo = geometry_for(volume.shape[1:], seg.size)
        self.original = scale_boxes(boxes[:, [0, 1, 3, 4]], self.geo, seg.settings.box_rounding)
        self.z_lo, self.z_hi = z_ranges(boxes, volume.shape[0])
        self.up, self.down = sweeps(self.z_lo, self.z_hi)
        self.sizes = box_sizes(boxes)  # the same volume in every view (its axes are only permuted)

    @property
    def total_steps(self) -> int:
        return sweep_steps(self.up) + sweep_steps(self.down)

    def run(self, tick) -> np.ndarray:
        """This view's labels, by the overlap rule over all of its masks."""
        kept = ViewMasks(self.volume.shape, self.sizes)
        prompts = self.original.copy()
        after_middle = self._run_sweep(self.up, prompts, kept, tick, keep_middle=True)
        self._run_sweep(self.down, after_middle, kept, tick, keep_middle=False)
        with self.seg.clock.stage("postprocess"):
            return kept.labels(self.overlap)

    def _run_sweep(self, sweep: Sweep, prompts: np.ndarray, kept: ViewMasks, tick, keep_middle: bool) -> np.ndarray:
        prompts = prompts.copy()
        after_middle = prompts.copy()
        for z in sweep.slices:
            active = _active(sweep, z)
            if active.size == 0:
                continue
            starting = active[sweep.first[active] == z]
            if keep_middle:
                prompts[starting] = self.original[starting]
            embedding = self.seg.embedding(self.view, z, self.volume[z])
            masks = self.seg.masks(embedding, self.geo, prompts[active])
            with self.seg.clock.stage("postprocess"):
                kept.add(z, active, masks)
                for box_id, mask in zip(active, masks):
                    nxt = prompt_from_mask(mask, self.geo, self.margin)
                    prompts[box_id] = self.original[box_id] if nxt is None else nxt
                if keep_middle:
                    after_middle[starting] = prompts[starting]
            tick()
        return after_middle


class ProgressTicker:
    """Counts slice steps across views and reports them."""

    def __init__(self, total: int, report: ProgressFn | None):
        self.total, self.done, self.report = total, 0, report

    def __call__(self) -> None:
        self.done += 1
        if self.report:
            self.report(self.done, self.total)


def propagate_views(
    volume: np.ndarray,
    boxes: np.ndarray,
    seg: SliceSegmenter,
    views: tuple[str, ...],
    margin: float,
    overlap: str,
    progress: ProgressFn | None,
) -> list[np.ndarray]:
    """Run the propagation in each view; return each view's labels (overlaps resolved per view) in (z, y, x) order."""
    runs = []
    for view in views:
        axes, box_order = VIEWS[view].axes, VIEWS[view].box_order
        runs.append((axes, Propagation(volume.transpose(axes), boxes[:, box_order], seg, view, margin, overlap)))
    tick = ProgressTicker(sum(run.total_steps for _, run in runs), progress)
    return [run.run(tick).transpose(np.argsort(axes)) for axes, run in runs]


def segment_propagate(volume, boxes, seg, margin, overlap, progress) -> np.ndarray:
    return propagate_views(volume, boxes, seg, STRATEGIES[PROPAGATE].views, margin, overlap, progress)[0]


def majority_vote(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Per voxel: the label at least two views agree on, else the smallest of the three."""
    smallest = np.minimum(np.minimum(a, b), c)
    return np.where((a == b) | (a == c), a, np.where(b == c, b, smallest))


def segment_triview(volume, boxes, seg, margin, overlap, progress) -> np.ndarray:
    axial, coronal, sagittal = propagate_views(volume, boxes, seg, STRATEGIES[TRIVIEW].views, margin, overlap, progress)
    with seg.clock.stage("vote"):
        return majority_vote(axial, coronal, sagittal)


# the implementation of each 3D strategy of the table (worker.contract.strategies.STRATEGIES_3D)
IMPLEMENTATIONS_3D = {PROPAGATE: segment_propagate, TRIVIEW: segment_triview}
