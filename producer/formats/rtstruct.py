"""The engine's label volume -> a DICOM RT Structure Set (rt-utils) referencing the source series.

- One ROI per box, ROI number k+1 <-> label k+1 <-> box k, named by the sidecar's label; a box whose mask is empty
  remains an ROI without contours, so ROI numbers always equal box numbers. ROIGenerationAlgorithm SEMIAUTOMATIC.
- Contours (CLOSED_PLANAR, per slice, holes and several components included) are traced by rt-utils (OpenCV
  findContours on each slice, pixel -> patient with the series' geometry); this module writes no contour code.
- rt-utils maps a contour's column index with PixelSpacing[0] and its row index with PixelSpacing[1], the reverse
  of DICOM's (PixelSpacing = [between rows, between columns]); that only shows with non-square pixels. The data
  sets handed to rt-utils therefore carry PixelSpacing reversed; the RTSTRUCT stores no PixelSpacing, only
  patient coordinates, which come out right (tests/test_rtstruct.py rasterises them back independently).
- Only a series of single-frame slices with patient geometry can be contoured: a multi-frame object or a 2D image
  without ImagePositionPatient/ImageOrientationPatient is refused with a StudyError (the SEG holds its mask).
- UIDs derive from the source and the mask like the SEG's; Manufacturer and description name this project.

rt-utils wants `opencv-python` while the worker extra installs `opencv-python-headless`; both provide `cv2` and
would overwrite each other. ops/setup.sh installs rt-utils with `--no-deps` (its other dependencies, pydicom and
numpy, are the project's own; cv2 comes from opencv-python-headless, a base dependency), so one cv2 stays.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from producer.formats.dicom_reference import DicomReference
from producer.formats.seg import ALGORITHM_NAME, SERIES_NUMBER_OFFSET, check_fits, check_labels, output_uids
from worker.contract.files import atomic_path
from worker.contract.study import StudyError
from worker.contract.version import PACKAGE_VERSION as __version__

GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


def _contour_sources(reference: DicomReference) -> list[Dataset]:
    if reference.is_multiframe:
        raise StudyError(
            "an RTSTRUCT needs a series of single-frame slices; this source is one multi-frame object "
            "(its DICOM SEG holds the mask)"
        )
    sources = reference.slice_datasets()
    missing = [key for key in GEOMETRY if any(key not in ds for ds in sources)]
    if missing:
        raise StudyError(f"an RTSTRUCT needs patient geometry and the source has no {', '.join(missing)}")
    for ds in sources:
        ds.PixelSpacing = [ds.PixelSpacing[1], ds.PixelSpacing[0]]  # rt-utils reads them the other way round
    return sources


def build_rtstruct(
    reference: DicomReference, labels: np.ndarray, segment_labels: Sequence[str], provenance: Mapping[str, Any]
) -> Dataset:
    from rt_utils import RTStruct, ds_helper

    volume = check_fits(reference, check_labels(labels, segment_labels))
    sources = _contour_sources(reference)
    ds = ds_helper.create_rtstruct_dataset(sources)
    structure = RTStruct(sources, ds)
    with contextlib.redirect_stdout(io.StringIO()):  # rt-utils prints a line for an empty ROI
        for number, label in enumerate(segment_labels, start=1):
            mask = np.ascontiguousarray(np.moveaxis(volume == number, 0, -1))  # (rows, columns, slices)
            structure.add_roi(mask=mask, name=label[:64], roi_generation_algorithm=1)
    series_uid, instance_uid = output_uids(reference, volume, "rtstruct")
    ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, instance_uid
    ds.file_meta.MediaStorageSOPInstanceUID = instance_uid
    ds.SeriesNumber = SERIES_NUMBER_OFFSET + 1 + int(sources[0].get("SeriesNumber") or 0)
    ds.InstanceNumber = 1
    ds.Manufacturer, ds.ManufacturerModelName = ALGORITHM_NAME, str(provenance.get("model") or "litemedsam")
    ds.SoftwareVersions = str(provenance.get("package_version") or __version__)
    ds.StructureSetLabel = "LITEMEDSAM"
    derived = "; derived " + ", ".join(reference.derived) if reference.derived else ""
    ds.SeriesDescription = f"LiteMedSAM contours{derived}"[:64]
    ds.StructureSetDescription = "LiteMedSAM box-prompted segmentation, contoured per slice"
    if "InstitutionName" in ds:
        del ds.InstitutionName
    return ds


def write_rtstruct(
    path: Path,
    reference: DicomReference,
    labels: np.ndarray,
    segment_labels: Sequence[str],
    provenance: Mapping[str, Any],
) -> None:
    """Build and write atomically (a reader never sees half a file)."""
    ds = build_rtstruct(reference, labels, segment_labels, provenance)
    with atomic_path(path) as partial:
        ds.save_as(partial, enforce_file_format=True)
