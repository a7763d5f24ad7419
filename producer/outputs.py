"""Write each study's mask and a metrics line into the output folder; the format follows the source's kind.

- npz: `<study>.npz` with `segs` (uint16), as the challenge expects.
- dicom: the requested DICOM formats (`dicom_formats`, default ("seg",)): `<study>.seg.dcm`, a DICOM SEG
  (producer.formats.seg), and/or `<study>.rtstruct.dcm`, an RT Structure Set (producer.formats.rtstruct), both
  referencing the source series.
- nifti: `<study>.seg.nii.gz`, a uint16 label map with the source's affine (producer.formats.nifti).
The writers take what they need from the study's OutputContext (captured when it was loaded), not from the
source files, so a fleet batch's results are written the same from any folder or machine.

A computed mask is never lost: when a requested DICOM output cannot be built from the source's headers, the
label map is written instead (`<study>.labels.nii.gz` on the series' grid when it has patient geometry, else
`<study>.labels.npz`) and the study's notes say why; the study stays ok. Labels that do not fit the study (more
labels than boxes, a wrong shape) and names that would leave the output folder are errors of that study alone.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

from producer.discovery import OUTPUT_MARK, StudySource
from producer.formats.nifti import write_label_nifti
from producer.formats.npz import write_segs
from producer.formats.seg import check_labels, write_dicom_seg
from producer.outcome import StudyOutcome
from producer.output_context import OutputContext
from worker.contract.study import StudyError

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
SUFFIXES = {"npz": ".npz", "dicom": f"{OUTPUT_MARK}.dcm", "nifti": f"{OUTPUT_MARK}.nii.gz"}
DICOM_FORMATS = {"seg": (f"{OUTPUT_MARK}.dcm", "DICOM SEG"), "rtstruct": (".rtstruct.dcm", "RTSTRUCT")}
FALLBACK_SUFFIXES = {"nifti": ".labels.nii.gz", "npz": ".labels.npz"}


def parse_dicom_formats(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """"seg", "rtstruct", "seg,rtstruct" (or a list) -> a tuple of known formats; ValueError otherwise."""
    items = value.split(",") if isinstance(value, str) else list(value)
    formats = tuple(dict.fromkeys(item.strip().lower() for item in items if item.strip()))
    unknown = [f for f in formats if f not in DICOM_FORMATS]
    if unknown or not formats:
        raise ValueError(f"DICOM output format(s) {unknown or value!r} unknown: choose seg, rtstruct or both "
                         "(seg,rtstruct)")
    return formats


def check_study_name(name: str) -> str:
    """A study name becomes a file name in the output folder: it must be one plain path component."""
    if (not name or name in (".", "..") or any(c in name for c in "/\\\0") or len(name.encode()) > 200
            or not name.isprintable()):
        raise StudyError(f"study name {name!r} is not a plain file name (no path separators, '..', control "
                         "characters; at most 200 bytes): refusing to write it")
    return name


def _inside(out_dir: Path, name: str, suffix: str) -> Path:
    path = Path(out_dir) / f"{check_study_name(name)}{suffix}"
    if path.resolve().parent != Path(out_dir).resolve():
        raise StudyError(f"study name {name!r} would write outside {out_dir}")
    return path


def output_path(out_dir: Path, source: StudySource, dicom_format: str = "seg") -> Path:
    """Where a study's mask goes: always directly inside out_dir, whatever the name says."""
    suffix = DICOM_FORMATS[dicom_format][0] if source.kind == "dicom" else SUFFIXES[source.kind]
    return _inside(out_dir, source.name, suffix)


def _dicom_writer(kind: str) -> Callable:
    if kind == "seg":
        return write_dicom_seg
    try:
        from producer.formats.rtstruct import write_rtstruct
    except ImportError as error:
        raise StudyError("RTSTRUCT output needs rt-utils: run ops/setup.sh, or pip install --no-deps "
                         "rt-utils==1.2.7") from error
    return write_rtstruct


def _failure_reason(what: str, error: Exception) -> str:
    if isinstance(error, StudyError):
        return str(error)
    log.warning("building the %s failed", what, exc_info=error)
    if isinstance(error, ValueError):  # highdicom/pydicom say in words which header value they reject
        return f"the source's DICOM headers do not allow a {what}: {error}"
    return f"the source's DICOM headers lack or garble attributes a {what} needs"


class OutputWriter:
    def __init__(self, out_dir: Path, dicom_formats: tuple[str, ...] = ("seg",)):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.out_dir / METRICS_FILE
        self.dicom_formats = parse_dicom_formats(dicom_formats)

    def write(self, source: StudySource, outcome: StudyOutcome) -> None:
        if outcome.ok and outcome.labels is not None:
            started = time.perf_counter()
            target = f"{source.name!r}"
            try:
                target = output_path(self.out_dir, source, self.dicom_formats[0]).name
                context = outcome.context
                if context is None:
                    from producer.loading import context_of

                    context = outcome.context = context_of(source)
                    outcome.notes = list(dict.fromkeys([*outcome.notes, *context.notes]))
                self._write_mask(source, outcome, context)
                outcome.metrics.setdefault("times", {})["write"] = time.perf_counter() - started
            except StudyError as error:
                outcome.status, outcome.error = "error", f"writing {target} failed: {error}"
            except Exception as error:  # one study's output failing must not stop the batch
                log.exception("writing %s failed", target)
                outcome.status, outcome.error = "error", (f"writing {target} failed: an internal error "
                                                          f"({type(error).__name__}; details in the log)")
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(outcome.record()) + "\n")

    def _write_mask(self, source: StudySource, outcome: StudyOutcome, context: OutputContext) -> None:
        labels: np.ndarray = outcome.labels
        if source.kind == "npz":
            write_segs(output_path(self.out_dir, source), labels)
        elif source.kind == "nifti":
            write_label_nifti(output_path(self.out_dir, source), labels, context.nifti, source.name)
        elif source.kind == "dicom":
            self._write_dicom(source, outcome, context)
        else:
            raise StudyError(f"no writer for study kind {source.kind!r}")

    def _write_dicom(self, source: StudySource, outcome: StudyOutcome, context: OutputContext) -> None:
        labels = check_labels(outcome.labels, context.segment_labels)
        provenance = outcome.metrics.get("provenance", {})
        failed = []
        for kind in self.dicom_formats:
            what = DICOM_FORMATS[kind][1]
            try:
                if context.dicom is None:
                    raise StudyError("its headers could not be kept (see the notes above)")
                _dicom_writer(kind)(output_path(self.out_dir, source, kind), context.dicom, labels,
                                    context.segment_labels, provenance)
            except Exception as error:
                failed.append(f"{what} not written: {_failure_reason(what, error)}")
        if failed:
            path = self._write_fallback(source, labels, context)
            outcome.notes += [*failed, f"the label map was written to {path.name} instead"]

    def _write_fallback(self, source: StudySource, labels: np.ndarray, context: OutputContext) -> Path:
        """The mask as a label map: NIfTI on the series' grid when it has patient geometry, else npz."""
        if context.nifti is not None:
            path = _inside(self.out_dir, source.name, FALLBACK_SUFFIXES["nifti"])
            write_label_nifti(path, labels, context.nifti, source.name)
        else:
            path = _inside(self.out_dir, source.name, FALLBACK_SUFFIXES["npz"])
            write_segs(path, labels)
        return path
