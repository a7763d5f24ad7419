"""Prompts with clicks, and interactive sessions: each label's mask on its own, then one label map.

What a label's mask is, decided here once (the batch engine and an interactive session both ask here, so a session's
result equals `Engine.segment` of the session's prompts, voxel for voxel):
- the route's box strategy on the label's box alone (the study's modality picks 2D, propagation or the tri-view
  vote, as for any study); a label without a box starts empty;
- then each of the label's clicks, in the order given, applied by the refiner (worker.engine.refine, its default
  candidate) with the label's earlier clicks as guards: mask_n = refine(mask_n-1, click_n, clicks before n).
  A session applies exactly this step per click, so it never replays earlier clicks.
The label map paints the labels' masks by the routing's overlap rule (worker.engine.overlap), each label ranked by
its box's size (a label without a box: its mask's bounding box). For box-only prompts on 2D images and propagated
volumes this is the box strategies' own label map (their masks are per box, painted by the same rule), so the engine
keeps its box-only path; the tri-view vote paints per view before voting, so a tri-view label map with clicks may
differ from the box-only path where labels overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from worker.contract.prompts import Box, Click, LabelPrompt, Prompts
from worker.contract.routing import RoutingTable
from worker.contract.study import Segmentation, Study
from worker.engine.click_decoder import EngineSliceDecoder
from worker.engine.overlap import box_sizes, priorities
from worker.engine.refine import CANDIDATES, DEFAULT, ClickPrompt, Edit, Refiner


class Engine(Protocol):
    """What labelwise segmentation needs of worker.engine.engine.Engine (which calls it: it cannot be imported)."""

    routing: RoutingTable

    def segment(self, study: Study) -> Segmentation: ...

    def slice_decoder(self, study: Study) -> EngineSliceDecoder: ...


def volume_shape(study: Study) -> tuple[int, int, int]:
    """The (D, H, W) every label mask has (a 2D image: one slice)."""
    image = study.image
    return (int(image.shape[0]), int(image.shape[1]), int(image.shape[2])) if study.is_3d else (1, *image.shape[:2])


def click_prompt(click: Click, volume: bool) -> ClickPrompt:
    """A voxel click (x, y[, z]) as the refiner's (z, y, x) index."""
    point = [int(round(v)) for v in click.point]
    z = point[2] if volume else 0
    return ClickPrompt((z, point[1], point[0]), click.foreground)


class LabelSegmenter:
    """One study's labels, one at a time, on one engine (its embedding cache serves every box and click)."""

    def __init__(self, engine: Engine, study: Study):
        self.engine, self.study = engine, study
        self.shape = volume_shape(study)
        settings = CANDIDATES[DEFAULT]
        assert settings is not None  # the default refines
        self.refiner = Refiner(engine.slice_decoder(study), settings)

    def box_mask(self, box: Box | None) -> np.ndarray:
        """(D, H, W) bool: the route's strategy on this box alone (None: empty)."""
        if box is None:
            return np.zeros(self.shape, dtype=bool)
        alone = Prompts((LabelPrompt(box),), self.study.prompts.dims, self.study.prompts.box_dtype)
        single = Study(self.study.study_id, self.study.modality, self.study.image, alone, self.study.spacing)
        labels = self.engine.segment(single).labels
        return (labels == 1).reshape(self.shape)

    def click(self, mask: np.ndarray, earlier: Sequence[Click], click: Click) -> Edit:
        """The label's mask after one more click (its earlier clicks guard what they fixed)."""
        volume = self.study.is_3d
        return self.refiner.apply(mask, click_prompt(click, volume), [click_prompt(c, volume) for c in earlier])

    def label_mask(self, label: LabelPrompt) -> np.ndarray:
        mask = self.box_mask(label.box)
        for index, click in enumerate(label.clicks):
            mask = self.click(mask, label.clicks[:index], click).mask
        return mask


def label_size(label: LabelPrompt, mask: np.ndarray) -> int:
    """What the overlap rule compares: the box's size, else the mask's bounding box (0 when empty)."""
    if label.box is not None:
        return int(box_sizes(np.asarray([label.box.coords]))[0])
    if not mask.any():
        return 0
    extents = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis))) for axis in (0, 1, 2)]
    return int(np.prod([e[-1] - e[0] + 1 for e in extents]))


def paint(masks: Sequence[np.ndarray], sizes: Sequence[int], rule: str) -> np.ndarray:
    """uint16 (D, H, W) labels, label k + 1 from masks[k], overlaps owned by the higher priority (overlap rule)."""
    shape = masks[0].shape if masks else (0, 0, 0)
    labels = np.zeros(shape, dtype=np.uint16)
    if not masks:
        return labels
    ranks = priorities(np.asarray(sizes, dtype=np.int64), rule)
    for index in np.argsort(ranks, kind="stable"):  # lowest priority first: the higher one paints over it
        labels[masks[index]] = index + 1
    return labels


def segment_labelwise(engine: Engine, study: Study) -> np.ndarray:
    """The study's label map by the labelwise semantics above (2D images: (H, W))."""
    segmenter = LabelSegmenter(engine, study)
    masks = [segmenter.label_mask(label) for label in study.prompts.labels]
    sizes = [label_size(label, mask) for label, mask in zip(study.prompts.labels, masks)]
    labels = paint(masks, sizes, engine.routing.route(study.modality).overlap)
    return labels if study.is_3d else labels[0]
