"""One slice at a time: cached embedding, box prompts decoded in bounded chunks, masks at original size.

Post-processing (REFERENCE.md): bring the low-res logits to S x S, crop to the resized area, bilinear resize
to the original size, threshold the logits at 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from models.preprocess import Geometry, to_model_input
from worker.contract.engine_defaults import ENGINE_DEFAULTS
from worker.contract.metrics import StageTimes
from worker.engine.cache import EmbeddingCache
from worker.engine.runtime import CompiledSam

ProgressFn = Callable[[int, int], None]


class EmbeddingSource(Protocol):
    """Where a slice's embedding comes from when the embedding cache does not hold it. `encode` computes it here;
    a source may instead return the same embedding computed elsewhere (worker.cooperative: a split study)."""

    def embedding(self, view: str, index: int, encode: Callable[[], np.ndarray]) -> np.ndarray: ...


class LocalEncode:
    """The default source: encode every slice in this process."""

    def embedding(self, view: str, index: int, encode: Callable[[], np.ndarray]) -> np.ndarray:
        return encode()


@dataclass(frozen=True)
class SliceSettings:
    interpolation: str = "linear"  # the route's, for this study's dimension (2D image or 3D volume)
    decode_chunk: int = ENGINE_DEFAULTS.decode_chunk
    box_rounding: str = "fractional"  # the route's, for this study's dimension


class StageClock:
    """Adds wall time per named stage into a StageTimes."""

    def __init__(self, times: StageTimes):
        self.times = times

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            setattr(self.times, name, getattr(self.times, name) + time.perf_counter() - started)


class SliceSegmenter:
    """Runs one model on slices of one study; counts encoder and decoder calls."""

    def __init__(
        self,
        model: CompiledSam,
        cache: EmbeddingCache,
        study_key: str,
        settings: SliceSettings,
        clock: StageClock,
        source: EmbeddingSource | None = None,
    ):
        self.model = model
        self.source = source or LocalEncode()
        self.cache = cache
        self.study_key = study_key
        self.settings = settings
        self.clock = clock
        self.encoder_calls = 0
        self.decoder_calls = 0

    @property
    def size(self) -> int:
        return self.model.spec.input_size

    def embedding(self, view: str, index: int, image: np.ndarray) -> np.ndarray:
        key = (
            self.study_key,
            self.model.spec.name,
            self.model.precision.encoder,
            self.settings.interpolation,
            view,
            index,
        )  # the encoder's precision: decoders at other precisions share the embedding
        return self.cache.get_or_compute(key, lambda: self.source.embedding(view, index, lambda: self._encode(image)))

    def encode(self, image: np.ndarray) -> np.ndarray:
        """One slice's embedding, computed here and not cached (a part of a split study stores it instead)."""
        return np.array(self._encode(image), copy=True)

    def _encode(self, image: np.ndarray) -> np.ndarray:
        with self.clock.stage("preprocess"):
            tensor, _ = to_model_input(np.ascontiguousarray(image), self.size, self.settings.interpolation)
        with self.clock.stage("encode"):
            self.encoder_calls += 1
            return self.model.encode(tensor)

    def masks(self, embedding: np.ndarray, geo: Geometry, boxes: np.ndarray) -> np.ndarray:
        """(B, 4) model-input boxes -> bool masks (B, H, W) at the slice's original size."""
        chunk = max(1, self.settings.decode_chunk)
        out = np.empty((len(boxes), *geo.original), dtype=bool)
        for start in range(0, len(boxes), chunk):
            with self.clock.stage("decode"):
                logits = self.model.decode(embedding, boxes[start : start + chunk])
                self.decoder_calls += 1
            with self.clock.stage("postprocess"):
                for offset, low_res in enumerate(logits[:, 0]):
                    out[start + offset] = logits_to_mask(low_res, geo)
        return out


def logits_to_mask(low_res: np.ndarray, geo: Geometry) -> np.ndarray:
    if low_res.shape[0] != geo.size:
        low_res = cv2.resize(low_res, (geo.size, geo.size), interpolation=cv2.INTER_LINEAR)
    new_h, new_w = geo.resized
    cropped = np.ascontiguousarray(low_res[:new_h, :new_w])
    h, w = geo.original
    return cv2.resize(cropped, (w, h), interpolation=cv2.INTER_LINEAR) > 0
