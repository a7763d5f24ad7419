"""The engine's side of refinement: decode one slice of a study with a box, on the engine's cached embedding.

The cache keys are those `Engine.segment` uses (view "2d" for a 2D image, "axial" and the slice index for a volume),
so a study segmented with boxes and then refined with clicks encodes each slice once; a slice the box pass never
reached is encoded on first use.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from models.preprocess import geometry_for, scale_boxes
from worker.contract.strategies import AXIAL
from worker.contract.study import Study
from worker.engine.refine import ClickPrompt, Edit, RefineSettings, refine_labels
from worker.engine.slices import SliceSegmenter
from worker.engine.strategies import VIEW_2D


class SlicesOfStudies(Protocol):
    """What a decoder needs of the engine (worker.engine.engine.Engine.slice_decoder builds one)."""

    def slice_decoder(self, study: Study) -> EngineSliceDecoder: ...


class EngineSliceDecoder:
    """A `worker.engine.refine.SliceDecoder` over one study's slices and the engine's embedding cache."""

    def __init__(self, seg: SliceSegmenter, study: Study, margin: float):
        """`seg`: the study's slice segmenter (Engine.slice_encoder); `margin`: the route's, at model scale."""
        self.study = study
        self.seg = seg
        self.volume = study.is_3d
        slice_shape = study.image.shape[1:] if self.volume else study.image.shape[:2]
        self.geo = geometry_for(slice_shape, self.seg.size)
        self._margin = float(margin) / self.geo.scale

    @property
    def margin(self) -> float:
        return self._margin

    @property
    def shape(self) -> tuple[int, int, int]:
        """The (D, H, W) the refiner works in (a 2D image: one slice)."""
        h, w = self.geo.original
        return (self.study.image.shape[0] if self.volume else 1, h, w)

    def decode(self, z: int, box: np.ndarray) -> np.ndarray:
        if self.volume:
            embedding = self.seg.embedding(AXIAL, z, self.study.image[z])
        else:
            embedding = self.seg.embedding(VIEW_2D, 0, self.study.image)
        prompt = scale_boxes(np.asarray(box, dtype=np.float64)[None], self.geo, self.seg.settings.box_rounding)
        return self.seg.masks(embedding, self.geo, prompt)[0]


def refine_study(
    engine: SlicesOfStudies,
    study: Study,
    labels: np.ndarray,
    clicks: dict[int, list[ClickPrompt]],
    settings: RefineSettings | None,
) -> tuple[np.ndarray, dict[int, Edit]]:
    """A study's labels after each label's newest click ((z, y, x) clicks; a 2D image's are (0, y, x))."""
    decoder = engine.slice_decoder(study)
    volume = labels if decoder.volume else labels[None]
    refined, edits = refine_labels(volume, clicks, decoder, settings)
    return (refined if decoder.volume else refined[0]), edits
