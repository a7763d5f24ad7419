"""Prometheus metrics of a worker: studies done/failed/cached, stage latencies, embedding-cache hits.

Multiprocess-safe the standard way: the Celery parent creates a fresh PROMETHEUS_MULTIPROC_DIR before the
prefork children exist (`prepare_parent`), each child writes its samples to files there (`ChildTelemetry`),
and the parent serves the merged view on one port (`serve`), plus a derived cache hit-ratio gauge.

prometheus_client picks its value store (in memory, or files in the multiprocess directory) when it is first
imported, and a Celery CLI plugin (Flower) may import it in the parent before the directory exists: each child
picks again once it does (`_use_multiprocess_values`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from worker.contract.messages import Outcome
from worker.contract.metrics import StudyMetrics
from worker.contract.settings import environment

log = logging.getLogger(__name__)
DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
STAGES = (
    "queue_wait",
    "input_download",
    "load",
    "preprocess",
    "encode",
    "decode",
    "postprocess",
    "vote",
    "result_upload",
    "total",
)
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def metrics_port() -> int | None:
    return environment().metrics_port


def prepare_parent() -> Path:
    """In the Celery parent, before any child forks: an empty multiprocess directory in the environment."""
    existing = os.environ.get(DIR_ENV)
    if existing:
        path = Path(existing)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="litemedsam-prom-"))
        os.environ[DIR_ENV] = str(path)
    return path


def serve(port: int) -> None:
    """Serve the children's merged metrics on `port` (a daemon thread in the parent)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    merged = MultiProcessCollector(None)
    registry.register(merged)
    registry.register(HitRatioCollector(merged))
    start_http_server(port, registry=registry)
    log.info("Prometheus metrics on :%d (from %s)", port, os.environ.get(DIR_ENV))


def cleanup_parent() -> None:
    path = os.environ.get(DIR_ENV, "")
    if path and Path(path).name.startswith("litemedsam-prom-"):
        shutil.rmtree(path, ignore_errors=True)


class HitRatioCollector:
    """litemedsam_embedding_cache_hit_ratio = hits / (hits + misses) over all children since start."""

    def __init__(self, source):
        self.source = source

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        totals = {"hits": 0.0, "misses": 0.0}
        for family in self.source.collect():
            for sample in family.samples:
                for kind in totals:
                    if sample.name == f"litemedsam_embedding_cache_{kind}_total":
                        totals[kind] += sample.value
        seen = totals["hits"] + totals["misses"]
        yield GaugeMetricFamily(
            "litemedsam_embedding_cache_hit_ratio",
            "Embedding cache hits / lookups, all worker processes",
            value=totals["hits"] / seen if seen else 0.0,
        )


class ChildTelemetry:
    """Counters and histograms one worker child updates; a no-op unless the parent serves metrics."""

    def __init__(self):
        self.enabled = bool(os.environ.get(DIR_ENV)) and metrics_port() is not None
        if not self.enabled:
            return
        _use_multiprocess_values()
        from prometheus_client import Counter, Histogram

        # registry=None: the samples go to the multiprocess files; the parent's collector reads them from there
        self.studies = Counter(
            "litemedsam_studies", "Studies finished by status", ["status", "modality"], registry=None
        )
        self.stages = Histogram(
            "litemedsam_stage_seconds", "Seconds per stage of a study", ["stage"], buckets=BUCKETS, registry=None
        )
        self.hits = Counter("litemedsam_embedding_cache_hits", "Embedding cache hits", registry=None)
        self.misses = Counter("litemedsam_embedding_cache_misses", "Embedding cache misses", registry=None)
        self.slices = Counter("litemedsam_slices_encoded", "Slices run through the image encoder", registry=None)

    def observe(self, outcome: Outcome) -> None:
        if not self.enabled:
            return
        status = outcome.status if not (outcome.ok and outcome.metrics.extra.cached) else "cached"
        self.studies.labels(status=status, modality=outcome.modality or "unknown").inc()
        if status != "ok":
            return
        for stage, seconds in stage_seconds(outcome.metrics).items():
            self.stages.labels(stage=stage).observe(seconds)
        counts = outcome.metrics.counts
        self.hits.inc(counts.cache_hits)
        self.misses.inc(counts.cache_misses)
        self.slices.inc(counts.slices_encoded)


def _use_multiprocess_values() -> None:
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # reads PROMETHEUS_MULTIPROC_DIR now


def stage_seconds(metrics: StudyMetrics) -> dict[str, float]:
    """The stages of STAGES present in a study's metrics (engine times plus the fleet's transfer/wait)."""
    found: dict[str, object] = dict(metrics.times.model_dump())
    found["queue_wait"] = metrics.extra.queue_wait
    if metrics.extra.transfer is not None:
        found.update(metrics.extra.transfer.model_dump(exclude_none=True))
    return {stage: float(found[stage]) for stage in STAGES if isinstance(found.get(stage), (int, float))}
