"""What a study's output writers need from its source, captured when the study is loaded, as JSON.

An OutputContext travels with the study: the embedded run hands it from the loader to the writer; a fleet batch
stores it (JSON, never pickle) in the study's manifest entry, so `producer results` writes the same SEG,
RTSTRUCT or NIfTI from any folder or machine with the sources gone. It holds:
- `segment_labels`: the box labels from the prompts sidecar (segment / ROI names);
- `segment_colours`: per label, the display colour chosen for it (an interactive session's), None (or no entry):
  the structure table's (producer.formats.structures);
- `dicom`: the DicomReference of a DICOM source (header subset, referenced instances and their geometry), or None
  when its headers could not be kept (then `notes` says why and the label map is written instead);
- `nifti`: the NiftiReference of a NIfTI source; for a DICOM source with patient geometry, the grid of the
  fallback label map (RAS affine from the series' LPS geometry);
- `notes`: what discovery and the readers decided that the user should know (grouping, derived UIDs, ...).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import Field, TypeAdapter, ValidationError

from producer.formats.dicom import SeriesLayout
from producer.formats.dicom_reference import DicomReference, reference_of
from producer.formats.nifti import NiftiReference
from producer.formats.volume import VolumeGeometry
from worker.contract.errors import validation_message
from worker.contract.study import StudyError

log = logging.getLogger(__name__)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
Channel = Annotated[int, Field(ge=0, le=255)]  # one of a display colour's red, green, blue


@dataclass(frozen=True)
class OutputContext:
    kind: str  # "npz", "dicom" or "nifti"
    segment_labels: tuple[str, ...] = ()
    dicom: DicomReference | None = None
    nifti: NiftiReference | None = None
    notes: tuple[str, ...] = ()
    segment_colours: tuple[tuple[Channel, Channel, Channel] | None, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON a batch manifest stores (the shape of the dataclasses: pydantic writes it)."""
        return _CODEC.dump_python(self, mode="json")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutputContext:
        """An OutputContext from a batch manifest (StudyError saying what does not fit)."""
        try:
            return _CODEC.validate_python(data)
        except ValidationError as error:
            problems = validation_message(error, whole="output_context")
            raise StudyError(f"the batch manifest's output context does not fit: {problems}") from None


_CODEC = TypeAdapter(OutputContext)


def _grid_of(geometry: VolumeGeometry | None, depth: int, rows: int, columns: int) -> NiftiReference | None:
    if geometry is None:
        return None
    return NiftiReference.of_geometry(LPS_TO_RAS @ geometry.affine, (columns, rows, depth))


def dicom_context(layout: SeriesLayout, segment_labels, discovery_notes=()) -> OutputContext:
    """The writers' context of a DICOM series. Headers that cannot be kept leave `dicom` None with a note: the
    mask is then written as a label map, never lost."""
    notes = list(discovery_notes)
    reference = None
    try:
        reference = reference_of(layout)
        notes += reference.notes
    except Exception as error:  # malformed header values pydicom cannot convert: the label map still gets written
        log.warning("cannot keep the DICOM headers for the SEG: %s", error, exc_info=True)
        notes.append(
            "the source's DICOM headers hold values that cannot be copied into a DICOM SEG or RTSTRUCT "
            "(malformed attributes)"
        )
    header = layout.headers[0]
    grid = _grid_of(layout.geometry, len(layout.slices), int(header.Rows), int(header.Columns))
    return OutputContext("dicom", tuple(segment_labels), reference, grid, tuple(notes))
