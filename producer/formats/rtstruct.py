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
- What rt-utils leaves out and the IOD asks for (dciodvfy -new, tests/test_dicom_validators.py): the Frame of
  Reference module's FrameOfReferenceUID and PositionReferenceIndicator, the General Study module's
  ReferringPhysicianName and AccessionNumber (copied from the source, empty when it has none: type 2) and the RT
  Series module's OperatorsName (empty: no operator drew these contours); an ROI without contours has no
  ContourSequence (an empty one is invalid) and contour coordinates are written as DS values of at most 16
  characters.
- Contours of one or two points (an isolated pixel; a one-pixel-wide line, which OpenCV's simple chain
  approximation keeps as its two ends) enclose no area, and planning systems warn about or drop them. They are
  grown into a valid polygon instead of dropped, so no segmented voxel is lost: the convex hull of a square of
  0.8 pixel around each point (in the slice's plane, with its own pixel spacing). Every pixel whose centre lies in
  such a polygon is one the contour passed through, so a rasteriser gets those pixels back and no neighbour.
- Each ROI's ROIDisplayColor is the colour of its label everywhere else (producer.formats.structures).

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
from pydicom.valuerep import format_number_as_ds

from producer.formats.dicom_reference import DicomReference
from producer.formats.seg import ALGORITHM_NAME, SERIES_NUMBER_OFFSET, check_fits, check_labels, output_uids
from producer.formats.structures import Colour, chosen_colour, segment_structure
from worker.contract.files import atomic_path
from worker.contract.study import StudyError
from worker.contract.version import PACKAGE_VERSION as __version__

GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
GROWN_HALF_WIDTH = 0.4  # pixels: the square grown around each point of a one- or two-point contour
COPIED_TYPE_2 = ("ReferringPhysicianName", "AccessionNumber", "PositionReferenceIndicator")


def _contour_sources(reference: DicomReference) -> tuple[list[Dataset], np.ndarray]:
    """(the slices as rt-utils wants them, the in-plane half-width offsets of a grown point: (2, 3) patient mm)."""
    if reference.is_multiframe:
        raise StudyError(
            "an RTSTRUCT needs a series of single-frame slices; this source is one multi-frame object "
            "(its DICOM SEG holds the mask)"
        )
    sources = reference.slice_datasets()
    missing = [key for key in GEOMETRY if any(key not in ds for ds in sources)]
    if missing:
        raise StudyError(f"an RTSTRUCT needs patient geometry and the source has no {', '.join(missing)}")
    orientation = np.asarray(sources[0].ImageOrientationPatient, float).reshape(2, 3)  # (row dir, column dir)
    between_rows, between_columns = (float(v) for v in sources[0].PixelSpacing)
    half = GROWN_HALF_WIDTH * np.array([between_columns, between_rows])[:, None] * orientation
    for ds in sources:
        ds.PixelSpacing = [ds.PixelSpacing[1], ds.PixelSpacing[0]]  # rt-utils reads them the other way round
    return sources, half


def _grown(points: np.ndarray, half: np.ndarray) -> np.ndarray:
    """A one- or two-point contour (k, 3) -> the convex hull of the squares around its points, (m, 3), m >= 4."""
    import cv2

    basis = half / np.linalg.norm(half, axis=1, keepdims=True)  # unit row and column directions
    in_plane = (points - points[0]) @ basis.T  # (k, 2) mm along the row and column directions
    extent = np.linalg.norm(half, axis=1)
    corners = np.array([(du, dv) for du in (-1, 1) for dv in (-1, 1)]) * extent
    square_points = (in_plane[:, None, :] + corners[None]).reshape(-1, 2)
    hull = cv2.convexHull(square_points.astype(np.float32)).reshape(-1, 2).astype(float)
    return points[0] + hull @ basis


def _valid_contours(ds: Dataset, half: np.ndarray) -> None:
    """Grow one- and two-point contours into polygons, drop empty ContourSequences, DS values of <= 16 characters."""
    for roi in ds.ROIContourSequence:
        if "ContourSequence" not in roi:
            continue
        if len(roi.ContourSequence) == 0:
            del roi.ContourSequence
            continue
        for contour in roi.ContourSequence:
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            if len(points) < 3:
                points = _grown(points, half)
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [format_number_as_ds(float(v)) for v in points.ravel()]


def _required_attributes(ds: Dataset, source: Dataset) -> None:
    """The type 1 and 2 attributes rt-utils does not write (module doc)."""
    ds.FrameOfReferenceUID = source.FrameOfReferenceUID
    for keyword in COPIED_TYPE_2:
        setattr(ds, keyword, source.get(keyword, ""))
    ds.OperatorsName = ""


def build_rtstruct(
    reference: DicomReference,
    labels: np.ndarray,
    segment_labels: Sequence[str],
    provenance: Mapping[str, Any],
    colours: Sequence[Colour | None] = (),
) -> Dataset:
    from rt_utils import RTStruct, ds_helper

    volume = check_fits(reference, check_labels(labels, segment_labels))
    sources, half = _contour_sources(reference)
    ds = ds_helper.create_rtstruct_dataset(sources)
    structure = RTStruct(sources, ds)
    with contextlib.redirect_stdout(io.StringIO()):  # rt-utils prints a line for an empty ROI
        for number, label in enumerate(segment_labels, start=1):
            mask = np.ascontiguousarray(np.moveaxis(volume == number, 0, -1))  # (rows, columns, slices)
            colour = list(segment_structure(number, label, chosen_colour(colours, number)).rgb)
            structure.add_roi(mask=mask, color=colour, name=label[:64], roi_generation_algorithm=1)
    _valid_contours(ds, half)
    _required_attributes(ds, sources[0])
    series_uid, instance_uid = output_uids(reference, volume, "rtstruct")  # the salt: fixed, as stored UIDs are
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
    colours: Sequence[Colour | None] = (),
) -> Dataset:
    """Build and write atomically (a reader never sees half a file); the object as written."""
    ds = build_rtstruct(reference, labels, segment_labels, provenance, colours)
    with atomic_path(path) as partial:
        ds.save_as(partial, enforce_file_format=True)
    return ds
