"""Refinement from clicks: one label's current mask plus its ordered foreground/background clicks -> a new mask.

LiteMedSAM's decoder was trained with boxes: every SAM point prompt added to the box makes its mask worse (issue 23,
measured in PyTorch). So a click never reaches the decoder as a point. It edits the mask where the click is
unambiguous and edits the box, where the decoder is strong:

- background click inside the mask: a connected component other than the label's largest one is removed whole (in
  3D the 26-connected component, else the slice's 8-connected one); in the main component, the box edge nearest the
  click moves past it and the slice is decoded again (`shrink`);
- foreground click outside the mask: outside the slice's box, the box widens to take it in and the slice is decoded
  again; inside the box (a hole or a missed lobe), a box around the click is decoded;
- 3D: the edited slice's mask becomes the prompt of its neighbours, which are decoded again outward, slice by slice,
  only as far as their masks change (the engine's propagation from that slice, margin as the route's).

Guards (`guarded`): an edit changes only in its own direction (a background click only removes, a foreground click
only adds), only the region connected to the click, never more than `max_removal` of a slice's mask at once, and
never a voxel an earlier click fixed (every click's voxel keeps its meaning after every later edit). Without guards
(`crude`) the decoder's new mask replaces the old one: issue 23's first version, kept as a measured candidate.

Pure: numpy and scipy over a `SliceDecoder` (a slice index and a box in the slice's pixels -> a bool mask), which the
engine backs with its cached slice embeddings (worker.engine.click_decoder). 2D images are volumes of one slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import ndimage

STRUCTURE_2D = np.ones((3, 3), bool)  # 8-connected in a slice
STRUCTURE_3D = np.ones((3, 3, 3), bool)  # 26-connected, as the protocol's error components


@dataclass(frozen=True)
class ClickPrompt:
    zyx: tuple[int, int, int]  # array index into the (D, H, W) volume; a 2D image is one slice (z = 0)
    positive: bool  # foreground


class SliceDecoder(Protocol):
    """The decoder on cached slice embeddings: `decode(z, box)` with box [x0, y0, x1, y1] in slice pixels."""

    @property
    def margin(self) -> float:
        """The propagation margin in slice pixels (the route's margin at model scale)."""
        ...

    def decode(self, z: int, box: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class RefineSettings:
    name: str
    guarded: bool = True
    shrink: bool = True  # a background click in the main component moves the nearest box edge past it
    propagate: bool = True  # 3D: re-decode the neighbours outward while their masks change
    local_fraction: float = 0.25  # half-side of the box around a foreground click, as a fraction of the label's box
    min_local: float = 6.0  # ... at least this many slice pixels
    max_removal: float = 0.5  # guarded: at most this fraction of a slice's mask goes with one background click
    bite: float = 2.0  # guarded: ... and only within this many times the click's depth in the mask around it
    settle: float = 0.01  # propagation stops at a slice whose mask changes by at most this fraction


CANDIDATES = {
    "none": None,  # clicks ignored: the box prediction as it was (the curve every candidate must beat)
    "crude": RefineSettings("crude", guarded=False),
    "guarded": RefineSettings("guarded"),
    "guarded-noshrink": RefineSettings("guarded-noshrink", shrink=False),
    "guarded-slice": RefineSettings("guarded-slice", propagate=False),
}
DEFAULT = "guarded"  # chosen by DSC_AUC on cases derived from the dev cases (ops/bench/RESULTS.md)


@dataclass
class Edit:
    mask: np.ndarray  # the label's new (D, H, W) mask
    slices: list[int]  # slices whose mask changed, sorted
    how: str  # which edit ran (for measurements and logs)


def tight_box(mask2d: np.ndarray) -> np.ndarray | None:
    rows = np.flatnonzero(mask2d.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask2d.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float64)


def component_at(mask: np.ndarray, index: tuple[int, ...], structure: np.ndarray) -> np.ndarray:
    """The connected component of `mask` holding `index` (empty if the index is off)."""
    if not mask[index]:
        return np.zeros_like(mask)
    labelled, _ = ndimage.label(mask, structure)
    return labelled == labelled[index]


def _largest_label(labelled: np.ndarray) -> int:
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return int(np.argmax(sizes))


def _clip_box(box: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    h, w = shape_hw
    return np.clip(box, 0, (w - 1, h - 1, w - 1, h - 1))


def _honour(slice_mask: np.ndarray, clicks: Sequence[ClickPrompt], z: int) -> np.ndarray:
    """Every click on slice z keeps its meaning: foreground voxels on, background voxels off (later clicks win)."""
    for click in clicks:
        if click.zyx[0] == z:
            slice_mask[click.zyx[1], click.zyx[2]] = click.positive
    return slice_mask


def _violates(slice_mask: np.ndarray, clicks: Sequence[ClickPrompt], z: int) -> bool:
    return any(click.zyx[0] == z and slice_mask[click.zyx[1:]] != click.positive for click in clicks)


class Refiner:
    """Applies one click to one label's mask, given the label's earlier clicks."""

    def __init__(self, decoder: SliceDecoder, settings: RefineSettings):
        self.decoder = decoder
        self.settings = settings

    def apply(self, mask: np.ndarray, click: ClickPrompt, earlier: Sequence[ClickPrompt] = ()) -> Edit:
        mask = np.asarray(mask, dtype=bool)
        z, y, x = click.zyx
        if mask[z, y, x] == click.positive:
            return Edit(mask, [], "satisfied")
        clicks = [*earlier, click]
        if not click.positive:
            removed = self._remove_component(mask, click, earlier)
            if removed is not None:
                return removed
        new = mask.copy()
        if click.positive:
            new[z], how = self._foreground(mask[z], click, earlier, self._neighbour_box(mask, z))
        else:
            new[z], how = self._background(mask[z], click, earlier)
        new[z] = _honour(new[z], clicks, z)
        changed = [z] if not np.array_equal(new[z], mask[z]) else []
        if changed and self.settings.propagate and mask.shape[0] > 1:
            changed += self._propagate(mask, new, click, clicks)
        return Edit(new, sorted(changed), how)

    # ---------------------------------------------------------------- background clicks

    def _remove_component(self, mask: np.ndarray, click: ClickPrompt, earlier: Sequence[ClickPrompt]) -> Edit | None:
        """A background click on a component that is not the label's largest removes it whole (3D first)."""
        for structure in (STRUCTURE_3D, None):
            if structure is None:  # the slice's own components
                z = click.zyx[0]
                labelled, count = ndimage.label(mask[z], STRUCTURE_2D)
                at = labelled[click.zyx[1:]]
                if count < 2 or at == _largest_label(labelled):
                    return None
                region = np.zeros_like(mask)
                region[z] = labelled == at
            else:
                labelled, count = ndimage.label(mask, structure)
                at = labelled[click.zyx]
                if count < 2 or at == _largest_label(labelled):
                    continue
                region = labelled == at
            if self.settings.guarded and any(c.positive and region[c.zyx] for c in earlier):
                continue  # an earlier foreground click fixed a voxel of it
            new = mask & ~region
            return Edit(new, sorted(set(np.flatnonzero(region.any(axis=(1, 2))).tolist())), "remove-component")
        return None

    def _background(
        self, slice_mask: np.ndarray, click: ClickPrompt, earlier: Sequence[ClickPrompt]
    ) -> tuple[np.ndarray, str]:
        z, y, x = click.zyx
        box = tight_box(slice_mask)
        if not self.settings.shrink or box is None:
            return slice_mask, "click-only"
        # move the edge nearest to the click just past it
        distances = np.array([x - box[0], y - box[1], box[2] - x, box[3] - y])
        edge = int(np.argmin(distances))
        shrunk = box.copy()
        shrunk[edge] = (x + 1, y + 1, x - 1, y - 1)[edge]
        if shrunk[0] > shrunk[2] or shrunk[1] > shrunk[3]:
            return slice_mask, "click-only"
        proposal = self.decoder.decode(z, _clip_box(shrunk, slice_mask.shape))
        if not self.settings.guarded:
            return proposal, "shrink"
        if proposal[y, x]:
            return slice_mask, "click-only"  # the decoder kept it: nothing unambiguous to remove
        removal = component_at(slice_mask & ~proposal, (y, x), STRUCTURE_2D)
        removal &= self._bite(slice_mask, y, x)
        too_much = removal.sum() > self.settings.max_removal * slice_mask.sum()
        if too_much or _violates(slice_mask & ~removal, earlier, z):
            return slice_mask, "click-only"
        return slice_mask & ~removal, "shrink"

    def _bite(self, region: np.ndarray, y: int, x: int) -> np.ndarray:
        """Guarded: where an edit at (y, x) may change a slice. The protocol (and a person) clicks at the centre of
        a wrong region, so the click's depth in `region` (its distance to the nearest voxel outside: the mask for a
        background click, the background for a foreground one) is about that region's radius; an edit reaching
        much farther takes organ (or background) that was right."""
        if not np.isfinite(self.settings.bite):
            return np.ones_like(region, dtype=bool)
        depth = float(ndimage.distance_transform_edt(np.pad(region, 1))[y + 1, x + 1])
        rows, cols = np.ogrid[: region.shape[0], : region.shape[1]]
        return np.asarray((rows - y) ** 2 + (cols - x) ** 2 <= (self.settings.bite * depth) ** 2)

    # ---------------------------------------------------------------- foreground clicks

    def _local_box(self, slice_mask: np.ndarray, click: ClickPrompt, reference: np.ndarray | None) -> np.ndarray:
        _, y, x = click.zyx
        side = 0.0 if reference is None else float(max(reference[2] - reference[0], reference[3] - reference[1]))
        half = max(self.settings.min_local, self.settings.local_fraction * side)
        return _clip_box(np.array([x - half, y - half, x + half, y + half]), slice_mask.shape)

    @staticmethod
    def _neighbour_box(mask: np.ndarray, z: int) -> np.ndarray | None:
        """The tight box of the label on the nearest slice that holds it (None: slice z holds it, or none does)."""
        if mask[z].any():
            return None
        holding = np.flatnonzero(mask.any(axis=(1, 2)))
        if holding.size == 0:
            return None
        return tight_box(mask[int(holding[np.argmin(np.abs(holding - z))])])

    def _foreground(
        self,
        slice_mask: np.ndarray,
        click: ClickPrompt,
        earlier: Sequence[ClickPrompt],
        neighbour: np.ndarray | None = None,
    ) -> tuple[np.ndarray, str]:
        z, y, x = click.zyx
        margin = self.decoder.margin
        if neighbour is not None:
            # the label is missing on this slice: prompt with its box on the nearest slice that has it (what the
            # propagation would have done), grown to take the click in
            grown = np.array(
                [
                    min(neighbour[0] - margin, x - margin),
                    min(neighbour[1] - margin, y - margin),
                    max(neighbour[2] + margin, x + margin),
                    max(neighbour[3] + margin, y + margin),
                ]
            )
            proposal = self.decoder.decode(z, _clip_box(grown, slice_mask.shape))
            if proposal[y, x]:
                added = component_at(proposal, (y, x), STRUCTURE_2D) if self.settings.guarded else proposal
                return slice_mask | added, "neighbour-box"
        box = tight_box(slice_mask)
        outside = box is None or not (
            box[0] - margin <= x <= box[2] + margin and box[1] - margin <= y <= box[3] + margin
        )
        if box is not None and outside:
            grown = np.array(
                [min(box[0], x - margin), min(box[1], y - margin), max(box[2], x + margin), max(box[3], y + margin)]
            )
            proposal = self.decoder.decode(z, _clip_box(grown, slice_mask.shape))
            if not self.settings.guarded:
                return proposal, "widen"
            if proposal[y, x]:
                added = component_at(proposal & ~slice_mask | _click_voxel(slice_mask, y, x), (y, x), STRUCTURE_2D)
                return slice_mask | (added & self._bite(~slice_mask, y, x)), "widen"
        proposal = self.decoder.decode(z, self._local_box(slice_mask, click, box))
        if not proposal[y, x]:
            return slice_mask, "click-only"
        added = component_at(proposal, (y, x), STRUCTURE_2D)
        if self.settings.guarded:
            added &= self._bite(~slice_mask, y, x) & ~_click_mask(slice_mask.shape, earlier, z, positive=False)
        return slice_mask | added, "local-box"

    # ---------------------------------------------------------------- 3D

    def _propagate(self, old: np.ndarray, new: np.ndarray, click: ClickPrompt, clicks: list[ClickPrompt]) -> list[int]:
        """From the edited slice outward: decode each neighbour with the box of the slice before it, keep the result
        (guarded: only in the click's direction), stop where a mask no longer changes or the label ends."""
        z0 = click.zyx[0]
        depth = old.shape[0]
        extent = np.flatnonzero(old.any(axis=(1, 2)))
        changed: list[int] = []
        for step in (1, -1):
            z = z0 + step
            while 0 <= z < depth:
                previous = new[z - step]
                box = tight_box(previous)
                if box is None or (not old[z].any() and not self._in_gap(z, z0, extent)):
                    break
                margin = self.decoder.margin
                proposal = self.decoder.decode(z, _clip_box(box + (-margin, -margin, margin, margin), old.shape[1:]))
                if self.settings.guarded:
                    proposal = self._continue_change(old[z], proposal, old[z - step] ^ new[z - step], click.positive)
                proposal = _honour(proposal, clicks, z)
                difference = np.count_nonzero(proposal ^ old[z])
                union = max(1, np.count_nonzero(proposal | old[z]))
                if difference == 0:
                    break
                new[z] = proposal
                changed.append(z)
                if difference <= self.settings.settle * union:
                    break
                z += step
        return changed

    def _continue_change(
        self, old: np.ndarray, proposal: np.ndarray, previous_change: np.ndarray, positive: bool
    ) -> np.ndarray:
        """Guarded propagation: a neighbour changes only in the click's direction, only where its change continues
        the change of the slice before (components touching it, at most `margin` px farther out per slice), so
        one edit cannot cascade into an unrelated part of the label; and a removal never larger than the slice
        before's, an addition at most a pixel's rim larger)."""
        change = (proposal & ~old) if positive else (old & ~proposal)
        reach = ndimage.binary_dilation(
            previous_change, STRUCTURE_2D, iterations=max(1, int(np.ceil(self.decoder.margin)))
        )
        labelled, _ = ndimage.label(change, STRUCTURE_2D)
        touching = np.unique(labelled[reach & change])
        change = np.isin(labelled, touching[touching > 0]) & reach
        # an over-segmentation ends: a removal only fades away from the click; a missed structure may widen from
        # slice to slice: an addition may outgrow the one before by a pixel's rim. More is the chain running off.
        limit = ndimage.binary_dilation(previous_change, STRUCTURE_2D) if positive else previous_change
        if np.count_nonzero(change) > np.count_nonzero(limit):
            return old
        return (old | change) if positive else (old & ~change)

    @staticmethod
    def _in_gap(z: int, z0: int, extent: np.ndarray) -> bool:
        """Slice z lacks the label but lies inside its z-range, or between a click beyond the range and the label:
        a foreground click there fills it in."""
        if extent.size == 0:
            return False
        return bool(extent[0] < z < extent[-1] or z0 < z < extent[0] or extent[-1] < z < z0)


def _click_voxel(shape_like: np.ndarray, y: int, x: int) -> np.ndarray:
    voxel = np.zeros_like(shape_like, dtype=bool)
    voxel[y, x] = True
    return voxel


def _click_mask(shape: tuple[int, ...], clicks: Sequence[ClickPrompt], z: int, positive: bool) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for click in clicks:
        if click.zyx[0] == z and click.positive == positive:
            mask[click.zyx[1], click.zyx[2]] = True
    return mask


def refine_labels(
    labels: np.ndarray,
    clicks: dict[int, list[ClickPrompt]],
    decoder: SliceDecoder,
    settings: RefineSettings | None,
) -> tuple[np.ndarray, dict[int, Edit]]:
    """Apply each label's newest click (its earlier ones as guards) to a (D, H, W) label map; labels in key order,
    a label's additions take voxels from others. `settings` None: the labels as they are (the `none` candidate)."""
    out = labels.copy()
    edits: dict[int, Edit] = {}
    if settings is None:
        return out, edits
    refiner = Refiner(decoder, settings)
    for label, label_clicks in sorted(clicks.items()):
        if not label_clicks:
            continue
        edit = refiner.apply(out == label, label_clicks[-1], label_clicks[:-1])
        if edit.slices:
            region = out[edit.slices]
            mask = edit.mask[edit.slices]
            region[(region == label) & ~mask] = 0
            if settings.guarded:  # a label grows into background only: another label's voxels are its own to give
                mask &= region == 0
            region[mask] = label
            out[edit.slices] = region
        edits[label] = edit
    return out, edits
