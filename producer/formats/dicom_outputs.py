"""The DICOM output formats, as classes in one table (as the study kinds are in producer.formats.registry).

Each says its name (the `--dicom-format` word), what it is called in notes, its file suffix, its media type
(the gateway's download) and how it is written from a source's DicomReference. A new DICOM output format: a class
here and a row in DICOM_OUTPUTS; the command line, the output folder, the writers' loop, the fallback notes and
the gateway's downloads ask the table.

Also here: the label-map downloads a job offers beside them (a NIfTI on the series' grid, the npz label map).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydicom import Dataset

from producer.formats.base import OUTPUT_MARK
from producer.formats.dicom_reference import DicomReference
from producer.formats.seg import write_dicom_seg
from producer.formats.structures import Colour
from worker.contract.study import StudyError

DicomOutputName = Literal["seg", "rtstruct"]
DownloadName = Literal["seg", "nifti", "npz"]


class DicomOutput(ABC):
    name: ClassVar[DicomOutputName]
    title: ClassVar[str]  # as notes name it
    suffix: ClassVar[str]  # <study><suffix> in the output folder
    media_type: ClassVar[str] = "application/dicom"

    @abstractmethod
    def write(
        self,
        path: Path,
        reference: DicomReference,
        labels: np.ndarray,
        segment_labels: tuple[str, ...],
        provenance: dict[str, Any],
        colours: Sequence[Colour | None] = (),
    ) -> Dataset:
        """Write the object to `path`; the object as written (kept in memory for a sender). `colours`: per label,
        a chosen display colour (None: the structure table's)."""


class DicomSeg(DicomOutput):
    name = "seg"
    title = "DICOM SEG"
    suffix = f"{OUTPUT_MARK}.dcm"

    def write(self, path, reference, labels, segment_labels, provenance, colours=()) -> Dataset:
        return write_dicom_seg(path, reference, labels, segment_labels, provenance, colours)


class RtStruct(DicomOutput):
    name = "rtstruct"
    title = "RTSTRUCT"
    suffix = ".rtstruct.dcm"

    def write(self, path, reference, labels, segment_labels, provenance, colours=()) -> Dataset:
        try:
            from producer.formats.rtstruct import write_rtstruct
        except ImportError as error:
            raise StudyError(
                "RTSTRUCT output needs rt-utils: run ops/setup.sh, or pip install --no-deps rt-utils==1.2.7"
            ) from error
        return write_rtstruct(path, reference, labels, segment_labels, provenance, colours)


DICOM_OUTPUTS: dict[str, DicomOutput] = {output.name: output for output in (DicomSeg(), RtStruct())}
DEFAULT_DICOM_OUTPUTS: tuple[str, ...] = (DicomSeg.name,)
# what a job offers for download, by name: its media type
DOWNLOAD_MEDIA_TYPES: dict[DownloadName, str] = {
    "seg": DicomSeg.media_type,
    "nifti": "application/gzip",
    "npz": "application/octet-stream",
}


def parse_dicom_formats(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """ "seg", "rtstruct", "seg,rtstruct" (or a list) -> a tuple of known formats; ValueError otherwise."""
    items = value.split(",") if isinstance(value, str) else list(value)
    formats = tuple(dict.fromkeys(item.strip().lower() for item in items if item.strip()))
    unknown = [f for f in formats if f not in DICOM_OUTPUTS]
    if unknown or not formats:
        choices = ", ".join(DICOM_OUTPUTS)
        raise ValueError(
            f"DICOM output format(s) {unknown or value!r} unknown: choose {choices} or several (seg,rtstruct)"
        )
    return formats
