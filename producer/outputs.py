"""Write each study's mask and a metrics line into the output folder; the format follows the source's kind.

- npz: `<study>.npz` with `segs` (uint16), as the challenge expects.
- dicom: `<study>.seg.dcm`, a DICOM SEG referencing the source series (producer.formats.seg).
- nifti: `<study>.seg.nii.gz`, a uint16 label map with the source's affine (producer.formats.nifti).
A study whose mask cannot be written is recorded as an error (the batch goes on).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from producer.discovery import OUTPUT_MARK, StudySource
from producer.formats.dicom import read_layout
from producer.formats.nifti import write_label_nifti
from producer.formats.npz import write_segs
from producer.formats.seg import write_dicom_seg
from producer.formats.sidecar import read_prompts
from producer.outcome import StudyOutcome
from worker.protocol import StudyError

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
SUFFIXES = {"npz": ".npz", "dicom": f"{OUTPUT_MARK}.dcm", "nifti": f"{OUTPUT_MARK}.nii.gz"}


def check_study_name(name: str) -> str:
    """A study name becomes a file name in the output folder: it must be one plain path component."""
    if (not name or name in (".", "..") or any(c in name for c in "/\\\0") or len(name.encode()) > 200
            or not name.isprintable()):
        raise StudyError(f"study name {name!r} is not a plain file name (no path separators, '..', control "
                         "characters; at most 200 bytes): refusing to write it")
    return name


def output_path(out_dir: Path, source: StudySource) -> Path:
    """Where a study's mask goes: always directly inside out_dir, whatever the name says."""
    path = Path(out_dir) / f"{check_study_name(source.name)}{SUFFIXES[source.kind]}"
    if path.resolve().parent != Path(out_dir).resolve():
        raise StudyError(f"study name {source.name!r} would write outside {out_dir}")
    return path


def _write_dicom(path: Path, source: StudySource, outcome: StudyOutcome) -> None:
    labels = read_prompts(source.sidecar).labels
    write_dicom_seg(path, read_layout(source.files), outcome.labels, labels,
                    outcome.metrics.get("provenance", {}))


def _write_mask(path: Path, source: StudySource, outcome: StudyOutcome) -> None:
    labels: np.ndarray = outcome.labels
    if source.kind == "npz":
        write_segs(path, labels)
    elif source.kind == "dicom":
        _write_dicom(path, source, outcome)
    elif source.kind == "nifti":
        write_label_nifti(path, labels, source.path)
    else:
        raise StudyError(f"no writer for study kind {source.kind!r}")


class OutputWriter:
    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.out_dir / METRICS_FILE

    def write(self, source: StudySource, outcome: StudyOutcome) -> None:
        if outcome.ok and outcome.labels is not None:
            started = time.perf_counter()
            target = f"{source.name!r}"
            try:
                path = output_path(self.out_dir, source)
                target = path.name
                _write_mask(path, source, outcome)
                outcome.metrics.setdefault("times", {})["write"] = time.perf_counter() - started
            except StudyError as error:
                outcome.status, outcome.error = "error", f"writing {target} failed: {error}"
            except Exception as error:  # one study's output failing must not stop the batch
                log.exception("writing %s failed", target)
                outcome.status, outcome.error = "error", f"writing {target} failed: {type(error).__name__}: {error}"
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(outcome.record()) + "\n")
