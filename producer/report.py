"""`producer report`: timing metrics of a batch summarised per modality and per stage, and throughput.

Input is a list of study records shaped like StudyOutcome.record() (a fleet batch's outcomes, or the lines
of a metrics.jsonl from any run). Studies served from the content-addressed store are counted but left out of
the stage statistics: their timings belong to the run that computed them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from worker.contract.metrics import MetricsExtra

ENGINE_STAGES = ("load", "preprocess", "encode", "decode", "postprocess", "vote", "total")
FLEET_STAGES = ("queue_wait",)
TRANSFER_STAGES = ("upload", "input_download", "result_upload", "result_download")
STAGES = (*FLEET_STAGES, *TRANSFER_STAGES, *ENGINE_STAGES, "write", "wall")


@dataclass(frozen=True)
class StageStats:
    modality: str  # "all" for every modality together
    stage: str
    n: int
    mean: float
    p50: float
    p95: float


@dataclass
class ModalityCounts:
    modality: str
    studies: int = 0
    ok: int = 0
    failed: int = 0
    cached: int = 0
    slices_encoded: int = 0


@dataclass
class BatchReport:
    studies: int
    ok: int
    failed: int
    cached: int
    span_seconds: float  # first enqueue to last finish (fleet), or the sum of study times (sequential run)
    modalities: list[ModalityCounts] = field(default_factory=list)
    stages: list[StageStats] = field(default_factory=list)

    @property
    def computed(self) -> int:
        return self.ok - self.cached

    @property
    def throughput(self) -> float:
        """Computed studies per second over the span."""
        return self.computed / self.span_seconds if self.span_seconds > 0 else 0.0

    @property
    def slices_per_second(self) -> float:
        slices = sum(m.slices_encoded for m in self.modalities)
        return slices / self.span_seconds if self.span_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "computed": self.computed,
            "throughput": self.throughput,
            "slices_per_second": self.slices_per_second,
        }


def _extra(record: dict[str, Any]) -> MetricsExtra:
    return MetricsExtra.model_validate((record.get("metrics") or {}).get("extra") or {})


def stage_times(record: dict[str, Any]) -> dict[str, float]:
    metrics = record.get("metrics") or {}
    extra = _extra(record)
    found: dict[str, Any] = dict(metrics.get("times") or {})  # the stages this record has
    found.update(extra.transfer.model_dump(exclude_none=True) if extra.transfer else {})
    found["queue_wait"] = extra.queue_wait
    found["wall"] = record.get("seconds")
    return {
        s: float(found[s])
        for s in STAGES
        if isinstance(found.get(s), (int, float)) and (s not in ("vote", "write") or found[s] > 0)
    }


def _stats(modality: str, stage: str, values: list[float]) -> StageStats:
    arr = np.asarray(values, dtype=np.float64)
    return StageStats(
        modality, stage, len(arr), float(arr.mean()), float(np.percentile(arr, 50)), float(np.percentile(arr, 95))
    )


def summarise(records: Iterable[dict[str, Any]], span_seconds: float | None = None) -> BatchReport:
    records = list(records)
    counts: dict[str, ModalityCounts] = {}
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    for record in records:
        modality = record.get("modality") or "unknown"
        row = counts.setdefault(modality, ModalityCounts(modality))
        row.studies += 1
        ok = record.get("status") == "ok"
        cached = ok and bool(_extra(record).cached)
        row.ok, row.failed, row.cached = row.ok + ok, row.failed + (not ok), row.cached + cached
        if not ok or cached:
            continue
        row.slices_encoded += int(((record.get("metrics") or {}).get("counts") or {}).get("slices_encoded", 0))
        for stage, seconds in stage_times(record).items():
            samples[(modality, stage)].append(seconds)
            samples[("all", stage)].append(seconds)
    if span_seconds is None:
        span_seconds = sum(float(r.get("seconds") or 0.0) for r in records)
    stages = [_stats(m, s, v) for (m, s), v in samples.items()]
    order = {s: i for i, s in enumerate(STAGES)}
    stages.sort(key=lambda st: (st.modality != "all", st.modality, order[st.stage]))
    rows = sorted(counts.values(), key=lambda r: r.modality)
    return BatchReport(
        len(records),
        sum(r.ok for r in rows),
        sum(r.failed for r in rows),
        sum(r.cached for r in rows),
        span_seconds,
        rows,
        stages,
    )


def read_metrics_file(path: Path) -> list[dict[str, Any]]:
    """Records from a metrics.jsonl (the last line per study wins: a folder written twice keeps the newest)."""
    latest: dict[str, dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            latest[record.get("study", str(len(latest)))] = record
    return list(latest.values())


def report_tables(report: BatchReport, title: str) -> list[Table]:
    head = Table(
        title=f"{title}: {report.studies} studies, {report.ok} ok ({report.cached} from the store), "
        f"{report.failed} failed; {report.throughput:.3f} computed studies/s, "
        f"{report.slices_per_second:.2f} slices/s over {report.span_seconds:.1f} s"
    )
    for column in ("modality", "studies", "ok", "cached", "failed", "slices encoded"):
        head.add_column(column, justify="left" if column == "modality" else "right")
    for row in report.modalities:
        head.add_row(
            row.modality, str(row.studies), str(row.ok), str(row.cached), str(row.failed), str(row.slices_encoded)
        )
    stages = Table(title="seconds per stage (computed studies)")
    for column in ("modality", "stage", "n", "mean", "p50", "p95"):
        stages.add_column(column, justify="left" if column in ("modality", "stage") else "right")
    for st in report.stages:
        stages.add_row(st.modality, st.stage, str(st.n), f"{st.mean:.3f}", f"{st.p50:.3f}", f"{st.p95:.3f}")
    return [head, stages]
