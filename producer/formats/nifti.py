"""NIfTI (.nii, .nii.gz) in and out, with nibabel; the image's affine is kept exactly.

Axis convention: nibabel indexes the data array (i, j, k). The study volume is `volume[k, j, i]`
(np.transpose(data, (2, 1, 0))), so voxel (x, y, z) = (i, j, k), boxes [x0, y0, z0, x1, y1, z1] are in i, j, k,
and world mm = affine @ (i, j, k, 1) in the NIfTI world (RAS+, nibabel's `img.affine`: sform when set, else
qform). Spacing is the header zooms of i, j, k: (x, y, z), the challenge's order.
Accepted shapes: 3D, 2D (one slice: a 2D study), and 4D with a single time point. Values are read with the
header's scl_slope/scl_inter applied (nibabel's get_fdata).

Output: a label map with the source's shape, affine, sform/qform codes and header, dtype uint16,
intent "label", scl_slope 1 / scl_inter 0; label k+1 is box k. What the writer needs from the source is a
NiftiReference (JSON-able, captured at load time), so the source need not exist when the label map is written.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from producer.formats.volume import ImageVolume, VolumeGeometry
from worker.contract.files import atomic_path
from worker.contract.study import StudyError

SUFFIXES = (".nii.gz", ".nii")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def nifti_stem(path: Path) -> str:
    """`scan.nii.gz` -> `scan`."""
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def bids_modality(path: Path) -> str | None:
    """The "Modality" of a BIDS sidecar (`scan.json` beside `scan.nii.gz`), e.g. "MR" or "PT", when there is one."""
    sidecar = path.with_name(nifti_stem(path) + ".json")
    try:
        value = json.loads(sidecar.read_text(encoding="utf-8")).get("Modality")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) and value.strip() else None


def _load(path: Path) -> nib.spatialimages.SpatialImage:
    try:
        return nib.load(str(path))
    except Exception as error:  # nibabel raises ImageFileError, EOFError, zlib errors, OSError...
        raise StudyError(f"{path.name}: unreadable NIfTI ({type(error).__name__}: {error})") from error


def _spatial_shape(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 3 or (len(shape) == 4 and shape[3] == 1):
        return shape[0], shape[1], shape[2]
    raise StudyError(
        f"{name}: NIfTI of shape {shape} is not a single 2D or 3D image (time series and vector "
        "images are not supported; extract one volume first)"
    )


def _is_native_8bit(img) -> bool:
    slope, inter = img.dataobj.slope, img.dataobj.inter
    return img.get_data_dtype() == np.uint8 and slope in (1, None) and inter in (0, None)


def load_nifti_volume(path: Path) -> ImageVolume:
    img = _load(path)
    if img.get_data_dtype().fields is not None:
        raise StudyError(f"{path.name}: RGB NIfTI is not supported")
    shape = _spatial_shape(img.shape, path.name)
    try:
        data = img.get_fdata(dtype=np.float32).reshape(shape)
    except Exception as error:
        raise StudyError(f"{path.name}: cannot read the image data ({type(error).__name__}: {error})") from error
    spacing = tuple(float(v) for v in (list(img.header.get_zooms()) + [1.0, 1.0])[:3])
    geometry = VolumeGeometry(np.asarray(img.affine, float), "RAS")
    volume = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    return ImageVolume(volume, geometry, spacing, None, _is_native_8bit(img))


@dataclass(frozen=True)
class NiftiReference:
    """What the label-map writer needs from a source, as JSON-able data (stored with a fleet batch, so the label
    map is written the same from any folder or machine): the source header's 348/540 bytes (base64: sform/qform
    codes, units, description...), its affine as nibabel reports it, its shape and NIfTI version."""

    header: str  # base64 of the header's binary block
    affine: tuple[tuple[float, ...], ...]
    shape: tuple[int, ...]
    version: int = 1  # 1 or 2

    @classmethod
    def of_image(cls, img) -> NiftiReference:
        version = 2 if isinstance(img, nib.Nifti2Image) else 1
        return cls(
            base64.b64encode(img.header.binaryblock).decode("ascii"),
            tuple(tuple(float(v) for v in row) for row in np.asarray(img.affine)),
            tuple(int(n) for n in img.shape),
            version,
        )

    @classmethod
    def of_geometry(cls, affine_ras: np.ndarray, shape: tuple[int, ...]) -> NiftiReference:
        """A fresh header for a label map on a grid known only by its RAS affine (a DICOM series' fallback)."""
        header = nib.Nifti1Header()
        header.set_data_shape(shape)
        header.set_sform(affine_ras, code="scanner")
        header.set_qform(affine_ras, code="scanner")
        return cls(
            base64.b64encode(header.binaryblock).decode("ascii"),
            tuple(tuple(float(v) for v in row) for row in affine_ras),
            tuple(int(n) for n in shape),
        )

    def header_object(self):
        block = base64.b64decode(self.header)
        return (nib.Nifti2Header if self.version == 2 else nib.Nifti1Header)(binaryblock=block)

    def image_class(self):
        return nib.Nifti2Image if self.version == 2 else nib.Nifti1Image


def reference_of(path: Path) -> NiftiReference:
    return NiftiReference.of_image(_load(path))


def write_label_nifti(path: Path, labels: np.ndarray, reference: NiftiReference, name: str = "the source") -> None:
    """labels (D, H, W) or, for a one-slice image, (H, W) -> a uint16 NIfTI on the source's grid (atomic write)."""
    shape = _spatial_shape(reference.shape, name)
    volume = labels[None] if labels.ndim == 2 else labels
    if volume.shape != shape[::-1]:
        raise StudyError(f"labels of shape {labels.shape} do not fit {name} (spatial shape {shape})")
    data = np.ascontiguousarray(np.transpose(volume, (2, 1, 0))).astype(np.uint16)
    if len(reference.shape) == 2:
        data = data[:, :, 0]
    header = reference.header_object()
    header.set_data_dtype(np.uint16)
    out = reference.image_class()(data, np.asarray(reference.affine, float), header)
    out.header.set_slope_inter(1.0, 0.0)
    out.header.set_intent("label")
    out.header["cal_min"], out.header["cal_max"] = 0, int(data.max(initial=0))
    with atomic_path(path) as partial:  # keeps the suffix nibabel picks compression by
        nib.save(out, str(partial))
