"""A decoded hospital image before 8-bit preparation, and its voxel-to-world geometry.

Axis convention (the same for DICOM and NIfTI, and the same as the challenge npz):
- `values` is indexed `values[z, y, x]`: z = slice, y = row, x = column. A 3D Study image is this array.
- A voxel index is written (x, y, z); boxes are [x0, y0, z0, x1, y1, z1], inclusive.
- `VolumeGeometry.affine` maps (x, y, z, 1) to world millimetres: DICOM patient coordinates (LPS) for DICOM,
  the NIfTI world (RAS+, the image's sform/qform) for NIfTI.
- spacing is (x, y, z), the challenge's order (x, y, z while the array is z, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VolumeGeometry:
    """world_mm = affine @ (x, y, z, 1); `frame` names the world: "LPS" (DICOM) or "RAS" (NIfTI)."""

    affine: np.ndarray
    frame: str

    @classmethod
    def from_components(cls, origin, axes, spacing, frame: str) -> VolumeGeometry:
        """origin: world position of voxel (0, 0, 0); axes: unit vectors of x, y, z as columns; spacing: (x, y, z)."""
        affine = np.eye(4)
        affine[:3, :3] = np.asarray(axes, float) * np.asarray(spacing, float)[None, :]
        affine[:3, 3] = np.asarray(origin, float)
        return cls(affine, frame)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def origin(self) -> np.ndarray:
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3, columns are the unit world directions of increasing x, y, z index."""
        return self.affine[:3, :3] / np.asarray(self.spacing)[None, :]

    def to_world(self, voxels) -> np.ndarray:
        """(n, 3) voxel indices (x, y, z) -> (n, 3) world mm."""
        points = np.atleast_2d(np.asarray(voxels, float))
        return points @ self.affine[:3, :3].T + self.affine[:3, 3]

    def to_voxel(self, points_mm) -> np.ndarray:
        """(n, 3) world mm -> (n, 3) continuous voxel indices (x, y, z); voxel centres are at integers."""
        points = np.atleast_2d(np.asarray(points_mm, float))
        return np.linalg.solve(self.affine[:3, :3], (points - self.affine[:3, 3]).T).T


@dataclass(frozen=True)
class ImageVolume:
    """What a DICOM or NIfTI reader hands to the study preparation.

    values: float32 (D, H, W) grey values in real units (CT: HU after rescale), or uint8/float (D, H, W, 3) colour;
            D == 1 for a 2D image.
    geometry: None when the source has no patient geometry (projection X-ray, photographs).
    spacing: (x, y, z) for volumes, (x, y) for 2D images when the source records it, else None.
    modality_tag: the DICOM Modality (e.g. "CT", "PT"), None for NIfTI.
    native_8bit: stored as 8-bit without a rescale or LUT (photographs, most ultrasound): already model range.
    slice_uids: DICOM only: the SOPInstanceUID each slice z comes from (repeated for a multi-frame object).
    """

    values: np.ndarray
    geometry: VolumeGeometry | None
    spacing: tuple[float, ...] | None
    modality_tag: str | None
    native_8bit: bool = False
    slice_uids: tuple[str, ...] = ()

    @property
    def is_colour(self) -> bool:
        return self.values.ndim == 4

    @property
    def depth(self) -> int:
        return int(self.values.shape[0])
