"""A finished job's downloadable files beside the producer's own output: labels.npz, a NIfTI label map for DICOM
sources, and the page's thumbnail.

The DICOM SEG (DICOM sources) and the NIfTI label map (NIfTI sources) are written by producer.outputs, exactly as
`producer submit` writes them; this module adds only what the gateway offers on top.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from producer.formats.npz import write_segs
from producer.formats.volume import Geometry

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
THUMBNAIL_SIZE = 192
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230]], dtype=np.float32)


def write_labels_npz(path: Path, labels: np.ndarray) -> None:
    write_segs(path, labels)


def write_nifti_from_geometry(path: Path, labels: np.ndarray, geometry: Geometry | None,
                              spacing: tuple[float, ...] | None) -> None:
    """labels (D, H, W) or (H, W) -> uint16 NIfTI with i, j, k = x, y, z (README axis convention); a DICOM
    geometry (LPS) becomes the NIfTI world (RAS). Without geometry: the spacing on the diagonal."""
    volume = labels[None] if labels.ndim == 2 else labels
    data = np.ascontiguousarray(np.transpose(volume, (2, 1, 0))).astype(np.uint16)
    if geometry is not None and geometry.frame == "LPS":
        affine = LPS_TO_RAS @ geometry.affine
    elif geometry is not None:
        affine = geometry.affine
    else:
        steps = list(spacing or ()) + [1.0] * 3
        affine = np.diag([float(steps[0]), float(steps[1]), float(steps[2]), 1.0])
    image = nib.Nifti1Image(data, affine)
    image.header.set_intent("label")
    image.header.set_sform(affine, code=1)
    image.header.set_qform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(".partial-" + path.name)
    nib.save(image, str(partial))
    os.replace(partial, path)


def _thumbnail_slice(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(grey or RGB plane, label plane): a 2D study as it is; a volume at the middle of its segmented slices
    (the middle slice when the mask is empty)."""
    if labels.ndim == 2:
        return image, labels
    segmented = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    z = int(segmented[len(segmented) // 2]) if len(segmented) else labels.shape[0] // 2
    return image[z], labels[z]


def thumbnail_png(image: np.ndarray, labels: np.ndarray) -> bytes:
    """The study's 8-bit image with each label blended in its own colour, longest side THUMBNAIL_SIZE."""
    from PIL import Image

    plane, mask = _thumbnail_slice(image, labels)
    rgb = np.repeat(plane[..., None], 3, axis=2) if plane.ndim == 2 else plane[..., :3]
    rgb = rgb.astype(np.float32)
    for label in np.unique(mask[mask > 0]):
        colour = PALETTE[(int(label) - 1) % len(PALETTE)]
        where = mask == label
        rgb[where] = 0.45 * rgb[where] + 0.55 * colour
    picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    picture.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
