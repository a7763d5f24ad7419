"""Write each study's mask and a metrics line into the output folder; the source's format writes the mask
(producer.formats.registry):

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

from producer.formats.base import OutputFolder, StudySource, check_study_name
from producer.formats.dicom_outputs import DEFAULT_DICOM_OUTPUTS, DICOM_OUTPUTS, DicomSeg, parse_dicom_formats
from producer.formats.outcome import StudyOutcome
from producer.formats.registry import FORMATS, format_of
from worker.contract.study import StudyError

__all__ = [
    "DICOM_OUTPUTS",
    "METRICS_FILE",
    "SUFFIXES",
    "OutputWriter",
    "check_study_name",
    "output_path",
    "parse_dicom_formats",
]

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
SUFFIXES = {kind: fmt.suffix for kind, fmt in FORMATS.items()}  # each kind's main output


def output_path(out_dir: Path, source: StudySource, dicom_format: str = DicomSeg.name) -> Path:
    """Where a study's mask goes: always directly inside out_dir, whatever the name says."""
    return format_of(source).main_output(OutputFolder(Path(out_dir), (dicom_format,)), source)


class OutputWriter:
    """Writes each outcome's outputs. `keep_written`: leave the DICOM objects as written in `outcome.written` (a
    single-study caller sends them on); else they are dropped once written, so a batch holds no objects."""

    def __init__(
        self, out_dir: Path, dicom_formats: tuple[str, ...] = DEFAULT_DICOM_OUTPUTS, keep_written: bool = False
    ):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.out_dir / METRICS_FILE
        self.dicom_formats = parse_dicom_formats(dicom_formats)
        self.folder = OutputFolder(self.out_dir, self.dicom_formats)
        self.keep_written = keep_written

    def write(self, source: StudySource, outcome: StudyOutcome) -> None:
        if outcome.ok and outcome.labels is not None:
            started = time.perf_counter()
            target = f"{source.name!r}"
            try:
                fmt = format_of(source)
                target = fmt.main_output(self.folder, source).name
                context = outcome.context
                if context is None:
                    from producer.loading import context_of

                    context = outcome.context = context_of(source)
                    outcome.notes = list(dict.fromkeys([*outcome.notes, *context.notes]))
                fmt.write(self.folder, source, outcome, context)
                outcome.metrics.setdefault("times", {})["write"] = time.perf_counter() - started
            except StudyError as error:
                outcome.status, outcome.error = "error", f"writing {target} failed: {error}"
            except Exception as error:  # one study's output failing must not stop the batch
                log.exception("writing %s failed", target)
                outcome.status, outcome.error = (
                    "error",
                    (f"writing {target} failed: an internal error ({type(error).__name__}; details in the log)"),
                )
        if not self.keep_written:
            outcome.written.clear()
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(outcome.record()) + "\n")
