"""Order a DICOM series' image planes into a volume and derive its geometry, or say clearly why it is no volume.

Slices are sorted by ImagePositionPatient projected on the slice normal n = row x column (the cross product of
ImageOrientationPatient's two direction cosines), ascending. File names and InstanceNumber play no part.
The resulting axes are right-handed in (x, y, z) = (column, row, slice) order: x along the row direction cosine,
y along the column direction cosine, z along n. Checks, each a StudyError:
all planes share Rows/Columns, ImageOrientationPatient and PixelSpacing; no two planes share a position; the gaps
between consecutive slices agree within 1 % (a missing slice or mixed acquisitions break this); slices are stacked
along n (a gantry tilt or shear would put the world/voxel mapping off, so it is refused rather than mis-mapped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from producer.formats.volume import VolumeGeometry
from worker.contract.study import StudyError

ORIENTATION_TOLERANCE = 1e-3  # direction cosines
SPACING_RTOL = 0.01  # relative spread of slice gaps
SHEAR_TOLERANCE = 1e-2  # in-plane drift per slice, as a fraction of the slice gap


@dataclass(frozen=True)
class Plane:
    """One image plane (a single-frame instance or one frame of a multi-frame object)."""

    position: tuple[float, float, float]  # ImagePositionPatient: centre of the first transmitted pixel, LPS mm
    orientation: tuple[float, ...]  # ImageOrientationPatient: row cosine (3) then column cosine (3)
    pixel_spacing: tuple[float, float]  # PixelSpacing: (between rows = y, between columns = x)
    rows: int
    columns: int
    thickness: float | None = None  # SliceThickness, the z spacing of a single plane


@dataclass(frozen=True)
class Stack:
    order: tuple[int, ...]  # order[z] = index of the plane that becomes slice z
    geometry: VolumeGeometry


def _unit_axes(orientation: tuple[float, ...]) -> np.ndarray:
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    if not (
        np.isclose(np.linalg.norm(row), 1, atol=1e-2)
        and np.isclose(np.linalg.norm(col), 1, atol=1e-2)
        and abs(row @ col) < 1e-2
    ):
        raise StudyError(f"ImageOrientationPatient {list(orientation)} is not two orthogonal unit vectors")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    return np.column_stack([row, col, np.cross(row, col)])


def _check_consistent(planes: list[Plane]) -> None:
    first = planes[0]
    for index, plane in enumerate(planes[1:], start=1):
        if (plane.rows, plane.columns) != (first.rows, first.columns):
            raise StudyError(
                f"mixed image sizes in one series: {first.rows}x{first.columns} and "
                f"{plane.rows}x{plane.columns} (plane {index})"
            )
        if not np.allclose(plane.orientation, first.orientation, atol=ORIENTATION_TOLERANCE):
            raise StudyError(
                f"mixed orientations in one series: ImageOrientationPatient {list(first.orientation)} "
                f"and {list(plane.orientation)} (plane {index})"
            )
        if not np.allclose(plane.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-4):
            raise StudyError(
                f"mixed pixel spacings in one series: {list(first.pixel_spacing)} and "
                f"{list(plane.pixel_spacing)} (plane {index})"
            )


def _slice_gap(positions: np.ndarray, normal: np.ndarray) -> float:
    """Sorted positions -> the common gap along the normal; StudyError on duplicates, irregular gaps or shear."""
    steps = np.diff(positions, axis=0)
    gaps = steps @ normal
    if np.any(gaps < 1e-4):
        raise StudyError(
            f"{int(np.sum(gaps < 1e-4)) + 1} slices share a position along the slice normal: several "
            "acquisitions (echoes, phases, time points) in one series are not one volume"
        )
    gap = float(np.median(gaps))
    if np.any(np.abs(gaps - gap) > SPACING_RTOL * gap):
        raise StudyError(
            f"inconsistent slice spacing: gaps between consecutive slices range from {gaps.min():.4g} "
            f"to {gaps.max():.4g} mm (missing slices, or a series that is not one volume)"
        )
    drift = np.linalg.norm(steps - np.outer(gaps, normal), axis=1)
    if np.any(drift > SHEAR_TOLERANCE * gap):
        raise StudyError(
            f"slices are not stacked along their normal (in-plane drift up to {drift.max():.3g} mm per "
            "slice: gantry tilt or a sheared acquisition is not supported)"
        )
    return gap


def stack_planes(planes: list[Plane]) -> Stack:
    """Sort planes along the normal and return the volume's order and geometry (LPS)."""
    if not planes:
        raise StudyError("no image planes")
    _check_consistent(planes)
    axes = _unit_axes(planes[0].orientation)
    positions = np.array([plane.position for plane in planes], float)
    order = np.argsort(positions @ axes[:, 2], kind="stable")
    if len(planes) > 1:
        z_spacing = _slice_gap(positions[order], axes[:, 2])
    else:
        z_spacing = planes[0].thickness or 1.0
    row_spacing, column_spacing = planes[0].pixel_spacing
    geometry = VolumeGeometry.from_components(
        positions[order[0]], axes, (column_spacing, row_spacing, z_spacing), "LPS"
    )
    return Stack(tuple(int(i) for i in order), geometry)
