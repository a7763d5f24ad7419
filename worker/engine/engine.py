"""The engine: route a study, run its strategy with a compiled model, and account for every stage.

One Engine per process. It compiles each model once (on first use) and keeps one embedding cache.
The same class runs in the producer's embedded mode and in each fleet worker process.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.paths import compile_cache_dir, default_models_dir
from models.registry import ModelSpec, load_registry
from worker.contract.engine_defaults import ENGINE_DEFAULTS
from worker.contract.identity import EngineIdentity, routing_data
from worker.contract.metrics import StudyMetrics
from worker.contract.precision import F32, FAST, PartPrecision, ProfileChoice
from worker.contract.prompts import BOX_WIDTH
from worker.contract.routing import Route, RoutingTable
from worker.contract.settings import EngineConfig, routing_file
from worker.contract.strategies import STRATEGY_2D, STRATEGY_NAMES, TRIVIEW
from worker.contract.study import Segmentation, Study, is_3d
from worker.contract.validation import check_study
from worker.contract.version import PACKAGE_VERSION
from worker.engine.cache import EmbeddingCache
from worker.engine.click_decoder import EngineSliceDecoder
from worker.engine.cores import CoreBinding
from worker.engine.footprint import study_bytes
from worker.engine.labelwise import segment_labelwise
from worker.engine.profiles import ProfileChooser, named_profile
from worker.engine.refine import DEFAULT as DEFAULT_REFINE
from worker.engine.runtime import CompiledSam, RuntimeSettings
from worker.engine.slices import EmbeddingSource, ProgressFn, SliceSegmenter, SliceSettings, StageClock
from worker.engine.strategies import IMPLEMENTATIONS_3D, majority_vote, propagate_views, segment_2d

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    models_dir: Path = field(default_factory=default_models_dir)
    precision: str = ENGINE_DEFAULTS.precision  # a profile of the routing table, an int8 profile, or "fast"
    threads: int = ENGINE_DEFAULTS.threads
    cache_bytes: int = ENGINE_DEFAULTS.cache_bytes
    decode_chunk: int = ENGINE_DEFAULTS.decode_chunk
    routing_file: Path | None = None
    max_voxels: int = ENGINE_DEFAULTS.max_voxels
    cores: tuple[int, ...] = ()  # explicit cores of this process (worker.cpu_affinity.plan); empty: not pinned

    @classmethod
    def from_config(cls, config: EngineConfig, cores: tuple[int, ...] = ()) -> EngineSettings:
        """The settings of an engine built from the shared engine config (both CLIs, a fleet worker's process);
        `cores`: this process's core binding (worker.cpu_affinity.plan)."""
        return cls(
            models_dir=config.models_dir or default_models_dir(),
            precision=config.precision,
            threads=config.threads,
            cache_bytes=config.cache_mb << 20,
            routing_file=config.routing_file,
            max_voxels=config.max_voxels,
            cores=cores,
        )


def study_key(study: Study) -> str:
    """Content digest of the image: cache entries of one study are shared across its boxes and re-runs."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(study.image.shape).encode())
    digest.update(np.ascontiguousarray(study.image).data)
    return digest.hexdigest()


class Engine:
    def __init__(self, settings: EngineSettings | None = None, choose_profile: ProfileChooser = named_profile):
        """`choose_profile` turns settings.precision into the profile that runs: named profiles by default;
        pass worker.calibration.choose_profile where `fast` (this host's calibrated choice) may be asked for."""
        self.settings = settings or EngineSettings()
        self.registry: dict[str, ModelSpec] = load_registry(self.settings.models_dir)
        self.routing = RoutingTable.load(routing_file(self.settings.routing_file))
        self.cache = EmbeddingCache(self.settings.cache_bytes)
        self.precision = self._choose_precision(choose_profile)
        self._compiled: dict[tuple[str, PartPrecision], CompiledSam] = {}
        # threads, cores and compiled cache; each part compiles at the precision its profile gives it (CompiledSam)
        self._runtime = RuntimeSettings(
            F32, self.settings.threads, compile_cache_dir(self.settings.models_dir), tuple(self.settings.cores)
        )
        CoreBinding(tuple(self.settings.cores)).apply()  # before OpenVINO starts any thread

    def _choose_precision(self, choose_profile: ProfileChooser) -> ProfileChoice:
        """The profile this engine runs (a `fast` request resolved by the chooser it was given)."""
        choice = choose_profile(self.settings.precision, self.routing, self.settings.models_dir, self.registry)
        if choice.requested == FAST:
            log.info("--precision fast runs %s", choice.reason)
        return choice

    def model(self, name: str, parts: PartPrecision | None = None) -> CompiledSam:
        """The model compiled at `parts` (default: the profile's parts for strategies it does not single out)."""
        parts = parts or self.precision.profile.default
        if (name, parts) not in self._compiled:
            self._compiled[(name, parts)] = CompiledSam(self.registry[name], self._runtime, parts)
        return self._compiled[(name, parts)]

    def warm_up(self) -> None:
        """Compile every registered model at every precision its profile uses (a worker does this at start-up)."""
        for name in self.registry:
            for parts in self.precision.profile.distinct_parts():
                self.model(name, parts)

    def identity(self) -> EngineIdentity:
        """The identity of this engine (content keys): per model, the sha256 of the weights that run at its
        profile's default parts (an int8 profile's encoder differs from the f32 export's), and per model and
        strategy the precision of each part and its weights. Compiles what it names (call after warm_up())."""
        models = {name: getattr(self.model(name), "sha256", spec.sha256) for name, spec in self.registry.items()}
        return EngineIdentity(
            precision=self.precision.name,
            package_version=PACKAGE_VERSION,
            models=models,
            routing=routing_data(self.settings.routing_file),
            parts=self.precision_identity(),
        )

    def precision_identity(self) -> dict[str, dict[str, dict[str, str]]]:
        """Per model and strategy: the parts' precisions and the sha256 of the weights that run (content keys)."""
        return {
            name: {
                strategy: {
                    **self.precision.profile.parts(strategy).as_dict(),
                    "sha256": self.model(name, self.precision.profile.parts(strategy)).sha256,
                }
                for strategy in STRATEGY_NAMES
            }
            for name in self.registry
        }

    def segment(
        self, study: Study, progress: ProgressFn | None = None, source: EmbeddingSource | None = None
    ) -> Segmentation:
        """The study's labels and metrics; `source` supplies embeddings the cache lacks (default: encode here)."""
        started = time.perf_counter()
        check_study(study, self.settings.max_voxels)
        route, strategy, seg, metrics = self._prepare(study, source)
        before = self._cache_snapshot()
        if study.prompts.boxes_only:
            labels = self._run(strategy, study, seg, route, progress)
        else:  # clicks, or labels given by clicks alone: each label on its own (worker.engine.labelwise)
            labels = segment_labelwise(self, study)
            metrics.note(labelwise=True, refine=DEFAULT_REFINE)
        self._account(metrics, seg, before, study, strategy, route)
        metrics.times.total = time.perf_counter() - started
        return Segmentation(study.study_id, labels, metrics)

    def segment_view(self, study: Study, view: str, progress: ProgressFn | None = None) -> Segmentation:
        """One view of a tri-view study (its labels in (z, y, x) order, overlaps resolved in the view), for a
        study split by view (worker.parts); vote() joins three of them into what segment() returns."""
        started = time.perf_counter()
        check_study(study, self.settings.max_voxels)
        route, strategy, seg, metrics = self._prepare(study, None)
        if strategy != TRIVIEW:
            raise ValueError(f"{study.modality} runs {strategy}, not triview: it has no views to split")
        before = self._cache_snapshot()
        boxes = study.prompts.box_array()
        labels = propagate_views(study.image, boxes, seg, (view,), route.margin, route.overlap, progress)[0]
        self._account(metrics, seg, before, study, strategy, route)
        metrics.note(view=view)
        metrics.times.total = time.perf_counter() - started
        return Segmentation(study.study_id, labels, metrics)

    @staticmethod
    def vote(views: list[np.ndarray], metrics: StudyMetrics) -> np.ndarray:
        """The tri-view majority vote of the axial, coronal and sagittal labels (as segment() ends a triview)."""
        with StageClock(metrics.times).stage("vote"):
            return majority_vote(*views)

    def slice_decoder(self, study: Study) -> EngineSliceDecoder:
        """The study's slices decoded with any box on this engine's cached embeddings (clicks' refinement)."""
        return EngineSliceDecoder(self.slice_encoder(study), study, self.routing.route(study.modality).margin)

    def slice_encoder(self, study: Study) -> SliceSegmenter:
        """The slice segmenter segment() would use for this study (to encode its slices for another worker)."""
        return self._prepare(study, None)[2]

    def embedding_space(self, study: Study) -> str:
        """A digest of everything a slice embedding of this study depends on: its content, the model's weights
        and input size, the encoder's precision and the interpolation. Workers whose spaces agree compute the
        same embeddings (at f32, same compiled model and thread count: bit for bit)."""
        seg = self.slice_encoder(study)
        digest = hashlib.blake2b(digest_size=16)
        for part in (
            seg.study_key,
            seg.model.spec.name,
            getattr(seg.model, "sha256", ""),
            seg.model.precision.encoder,
            seg.settings.interpolation,
            str(seg.size),
        ):
            digest.update(part.encode() + b"|")
        return digest.hexdigest()

    def _prepare(self, study: Study, source: EmbeddingSource | None):
        route = self.routing.route(study.modality)
        metrics = StudyMetrics()
        clock = StageClock(metrics.times)
        name = route.pick_model(self.registry)
        strategy = route.strategy(study.is_3d)
        with clock.stage("load"):
            model = self.model(name, self.precision.profile.parts(strategy))
        settings = SliceSettings(
            route.interpolation(study.is_3d), self.settings.decode_chunk, route.box_rounding(study.is_3d)
        )
        return route, strategy, SliceSegmenter(model, self.cache, study_key(study), settings, clock, source), metrics

    def memory_needed(self, study: Study) -> int:
        """Bytes this study may add to the process: its arrays at their peak plus the embedding cache's headroom."""
        image = np.asarray(study.image)
        try:
            boxes = study.prompts.box_array()
        except ValueError:  # prompts the engine cannot run: segment() says why
            boxes = np.zeros((0, BOX_WIDTH[study.prompts.dims]))
        volume = is_3d(image, study.prompts)  # malformed: segment() says why
        try:
            views = self.routing.route(study.modality).views(volume)
        except (LookupError, ValueError):
            views = 1
        needed = study_bytes(image.shape, image.itemsize, boxes, volume, views)
        return needed + max(0, self.cache.max_bytes - self.cache.nbytes)

    @staticmethod
    def _run(strategy: str, study: Study, seg: SliceSegmenter, route: Route, progress) -> np.ndarray:
        boxes = study.prompts.box_array()  # checked: voxel boxes, one per label
        if strategy == STRATEGY_2D:
            return segment_2d(study.image, boxes, seg, route.overlap, progress)
        return IMPLEMENTATIONS_3D[strategy](study.image, boxes, seg, route.margin, route.overlap, progress)

    def _cache_snapshot(self) -> tuple[int, int, int]:
        stats = self.cache.stats
        return stats.hits, stats.misses, stats.evictions

    def _account(self, metrics: StudyMetrics, seg: SliceSegmenter, before, study: Study, strategy: str, route) -> None:
        hits, misses, evictions = self._cache_snapshot()
        counts = metrics.counts
        counts.boxes = len(study.prompts)
        counts.slices_encoded = seg.encoder_calls
        counts.decoder_calls = seg.decoder_calls
        counts.cache_hits, counts.cache_misses = hits - before[0], misses - before[1]
        counts.cache_evictions = evictions - before[2]
        spec = seg.model.spec
        preferred = route.models[0]
        metrics.provenance.model = spec.name
        metrics.provenance.model_sha256 = seg.model.sha256
        metrics.provenance.precision = self.precision.name
        metrics.provenance.encoder_precision = seg.model.precision.encoder
        metrics.provenance.decoder_precision = seg.model.precision.decoder
        if self.precision.requested != self.precision.name or self.precision.reason:
            metrics.provenance.precision_choice = f"--precision {self.precision.requested}: {self.precision.reason}"
        metrics.provenance.strategy = strategy
        metrics.provenance.package_version = PACKAGE_VERSION
        metrics.provenance.overlap = route.overlap
        if spec.name != preferred:
            metrics.provenance.note = f"{preferred} is not registered; ran {spec.name} instead"
        metrics.extra.margin = route.margin
        metrics.extra.interpolation = seg.settings.interpolation
        metrics.extra.box_rounding = seg.settings.box_rounding
