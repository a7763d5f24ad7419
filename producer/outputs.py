"""Write each study's mask and a metrics line into the output folder."""
from __future__ import annotations

import json
import time
from pathlib import Path

from producer.discovery import StudySource
from producer.formats.npz import write_segs
from producer.outcome import StudyOutcome

METRICS_FILE = "metrics.jsonl"


class OutputWriter:
    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.out_dir / METRICS_FILE

    def write(self, source: StudySource, outcome: StudyOutcome) -> None:
        if outcome.ok and outcome.labels is not None:
            started = time.perf_counter()
            write_segs(self.out_dir / f"{source.name}.npz", outcome.labels)
            outcome.metrics.setdefault("times", {})["write"] = time.perf_counter() - started
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(outcome.record()) + "\n")
