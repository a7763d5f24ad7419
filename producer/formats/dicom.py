"""A DICOM series -> an ImageVolume (values in real units, geometry), plus the layout the SEG writer reuses.

What a series may be:
- single-frame instances with ImagePositionPatient/ImageOrientationPatient (CT, MR, PET slices): one volume,
  slices ordered along the slice normal (producer.formats.dicom_geometry), never by file name or InstanceNumber;
- exactly one multi-frame object with per-frame functional groups (Enhanced CT/MR/PET, Legacy Converted
  Enhanced, ophthalmic tomography): per-frame PlanePositionSequence, shared or per-frame PlaneOrientation and
  PixelMeasures, per-frame or shared PixelValueTransformation (rescale);
- one single-frame image without patient geometry (CR/DX/MG radiographs, photographs, ultrasound captures): a 2D
  image; discovery makes each such instance its own study.
Anything else (several multi-frame objects in one series, a multi-frame object without per-frame positions such
as an ultrasound cine loop) is a StudyError.

Pixel data is decoded by pydicom's pixel handlers: native, RLE, JPEG baseline/extended/lossless (pylibjpeg-libjpeg,
Pillow), JPEG-LS (pyjpegls or pylibjpeg), JPEG 2000 (pylibjpeg-openjpeg, Pillow). YCbCr colour comes back as RGB.
Real units: pydicom's apply_modality_lut (Modality LUT or RescaleSlope/Intercept; for enhanced objects with the
frame's PixelValueTransformationSequence item); PALETTE COLOR through apply_color_lut; MONOCHROME1 is inverted so
that high values are bright, as in MONOCHROME2.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.uid import UID

from producer.formats.dicom_files import CorruptDicomError, NotDicomError, read_dataset, sop_instance_uid_of
from producer.formats.dicom_geometry import Plane, stack_planes
from producer.formats.volume import ImageVolume, VolumeGeometry
from worker.contract.study import StudyError


@dataclass(frozen=True)
class FrameRef:
    """Where one slice of the volume comes from."""

    instance: int  # index into SeriesLayout.paths / headers
    frame: int | None  # 0-based frame of a multi-frame object; None for a single-frame instance


@dataclass(frozen=True)
class SeriesLayout:
    """The series' headers and, per volume slice z, the instance (and frame) it comes from."""

    paths: tuple[Path, ...]
    headers: tuple[Dataset, ...]
    slices: tuple[FrameRef, ...]
    geometry: VolumeGeometry | None
    spacing: tuple[float, ...] | None

    @property
    def is_multiframe(self) -> bool:
        return self.slices[0].frame is not None

    @property
    def modality_tag(self) -> str:
        return str(self.headers[0].get("Modality", "") or "").upper()

    @property
    def slice_uids(self) -> tuple[str, ...]:
        """SOPInstanceUID (else the file meta's) of every slice, in volume order (repeated for a multi-frame object)."""
        return tuple(sop_instance_uid_of(self.headers[ref.instance]) for ref in self.slices)


def _header(path: Path) -> Dataset:
    try:
        return read_dataset(path, pixels=False)
    except (NotDicomError, CorruptDicomError) as error:
        raise StudyError(f"{path.name}: {error}") from error


def _frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def functional_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The frame's item of a functional group macro (per-frame first, then shared), or None."""
    per_frame, shared = ds.get("PerFrameFunctionalGroupsSequence"), ds.get("SharedFunctionalGroupsSequence")
    for groups in (per_frame[frame] if per_frame else None, shared[0] if shared else None):
        if groups is not None and groups.get(sequence):
            return groups[sequence][0]
    return None


def _instance_plane(ds: Dataset, name: str) -> Plane:
    missing = [key for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if key not in ds]
    if missing:
        raise StudyError(f"{name}: no {', '.join(missing)}, so it cannot be placed in the series' volume")
    thickness = ds.get("SliceThickness") or ds.get("SpacingBetweenSlices")
    return Plane(
        _floats(ds.ImagePositionPatient),
        _floats(ds.ImageOrientationPatient),
        _floats(ds.PixelSpacing),
        int(ds.Rows),
        int(ds.Columns),
        float(thickness) if thickness else None,
    )


def _frame_plane(ds: Dataset, frame: int) -> Plane:
    position = functional_item(ds, frame, "PlanePositionSequence")
    orientation = functional_item(ds, frame, "PlaneOrientationSequence")
    measures = functional_item(ds, frame, "PixelMeasuresSequence")
    if position is None or orientation is None or measures is None or "PixelSpacing" not in measures:
        raise StudyError(
            f"frame {frame + 1} has no plane position, orientation or pixel spacing: a multi-frame "
            "object without per-frame geometry (e.g. a cine loop) is not a volume"
        )
    thickness = measures.get("SliceThickness")
    return Plane(
        _floats(position.ImagePositionPatient),
        _floats(orientation.ImageOrientationPatient),
        _floats(measures.PixelSpacing),
        int(ds.Rows),
        int(ds.Columns),
        float(thickness) if thickness else None,
    )


def _multiframe_layout(path: Path, ds: Dataset) -> SeriesLayout:
    stack = stack_planes([_frame_plane(ds, frame) for frame in range(_frame_count(ds))])
    slices = tuple(FrameRef(0, frame) for frame in stack.order)
    return SeriesLayout((path,), (ds,), slices, stack.geometry, stack.geometry.spacing)


def _volume_layout(paths: Sequence[Path], headers: Sequence[Dataset]) -> SeriesLayout:
    stack = stack_planes([_instance_plane(ds, path.name) for path, ds in zip(paths, headers)])
    slices = tuple(FrameRef(index, None) for index in stack.order)
    return SeriesLayout(tuple(paths), tuple(headers), slices, stack.geometry, stack.geometry.spacing)


def _projection_layout(path: Path, ds: Dataset) -> SeriesLayout:
    """A 2D image without patient geometry: spacing from PixelSpacing or ImagerPixelSpacing when present."""
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    xy = (float(spacing[1]), float(spacing[0])) if spacing else None
    return SeriesLayout((path,), (ds,), (FrameRef(0, None),), None, xy)


def _has_instance_plane(ds: Dataset) -> bool:
    return all(key in ds for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"))


def read_layout(paths: Sequence[Path]) -> SeriesLayout:
    """Headers only: which instance/frame becomes which slice, and the geometry."""
    if not paths:
        raise StudyError("a DICOM study without files")
    headers = [_header(Path(path)) for path in paths]
    frames = [_frame_count(ds) for ds in headers]
    if len(headers) == 1 and (frames[0] > 1 or "PerFrameFunctionalGroupsSequence" in headers[0]):
        return _multiframe_layout(Path(paths[0]), headers[0])
    if any(count > 1 for count in frames):
        raise StudyError(
            f"the series holds {sum(c > 1 for c in frames)} multi-frame objects among {len(headers)} "
            "instances; only one multi-frame object, or single-frame slices, make a volume"
        )
    if len(headers) == 1 and not _has_instance_plane(headers[0]):
        return _projection_layout(Path(paths[0]), headers[0])
    return _volume_layout([Path(p) for p in paths], headers)


def _decode(path: Path) -> tuple[Dataset, np.ndarray]:
    try:
        ds = read_dataset(path, pixels=True)
    except (NotDicomError, CorruptDicomError) as error:
        raise StudyError(f"{path.name}: {error}") from error
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    try:
        return ds, ds.pixel_array
    except Exception as error:  # missing plugin, truncated or damaged pixel data
        raise StudyError(f"{path.name}: cannot decode pixel data ({syntax.name}): {_decoder_reasons(error)}") from error


def _decoder_reasons(error: Exception) -> str:
    """pydicom's "all plugins failed" report on one line: each decoder's own reason."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and "plugins" in lines[0]:
        return "no installed decoder reads it (" + "; ".join(lines[1:]) + ")"
    return "; ".join(lines) or type(error).__name__


def _transform_item(ds: Dataset, frame: int | None) -> Dataset:
    """The dataset holding this frame's Modality LUT / rescale attributes."""
    if frame is not None:
        item = functional_item(ds, frame, "PixelValueTransformationSequence")
        if item is not None and ("RescaleSlope" in item or "ModalityLUTSequence" in item):
            return item
    return ds


def _real_units(pixels: np.ndarray, ds: Dataset, frame: int | None) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric == "PALETTE COLOR":
        return apply_color_lut(pixels, ds)
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        return pixels
    return apply_modality_lut(pixels, _transform_item(ds, frame)).astype(np.float32, copy=False)


def _is_native_8bit(ds: Dataset, frame: int | None) -> bool:
    item = _transform_item(ds, frame)
    rescaled = float(item.get("RescaleSlope", 1) or 1) != 1 or float(item.get("RescaleIntercept", 0) or 0) != 0
    return (
        int(ds.get("BitsStored", 8)) <= 8
        and not rescaled
        and "ModalityLUTSequence" not in item
        and str(ds.get("PhotometricInterpretation", "")) not in ("PALETTE COLOR", "MONOCHROME1")
    )


def _slices(layout: SeriesLayout) -> Iterator[tuple[Dataset, np.ndarray]]:
    """(dataset, real-unit pixels) per volume slice, in volume order; each file is decoded once."""
    if layout.is_multiframe:
        ds, pixels = _decode(layout.paths[0])
        if _frame_count(ds) == 1:  # pydicom drops the frame axis of a one-frame object
            pixels = pixels[None]
        for ref in layout.slices:
            yield ds, _real_units(pixels[ref.frame], ds, ref.frame)
        return
    for ref in layout.slices:
        ds, pixels = _decode(layout.paths[ref.instance])
        yield ds, _real_units(pixels, ds, None)


def _assemble(layout: SeriesLayout) -> tuple[np.ndarray, Dataset]:
    """Fill one preallocated array (no second copy of a large volume): float32 grey, or colour."""
    values, ds = None, None
    for z, (ds, plane) in enumerate(_slices(layout)):  # noqa: B007 (the last slice's ds is used below)
        if values is None:
            colour = plane.ndim == 3
            if colour and len(layout.slices) > 1:
                raise StudyError("colour volumes are not supported: the 3D strategies take grey slices")
            dtype = np.uint8 if colour and plane.dtype == np.uint8 else np.float32
            values = np.empty((len(layout.slices), *plane.shape), dtype)
        values[z] = plane
    if values.ndim == 3 and str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        values = values.max() + values.min() - values
    return values, ds


def load_dicom_volume(paths: Sequence[Path]) -> ImageVolume:
    """Decode a series (the files discovery grouped) into an ImageVolume with its geometry."""
    return volume_of(read_layout(paths))


def volume_of(layout: SeriesLayout) -> ImageVolume:
    """Decode the series a layout describes (headers read once, by read_layout)."""
    values, ds = _assemble(layout)
    native = _is_native_8bit(ds, layout.slices[0].frame)
    return ImageVolume(values, layout.geometry, layout.spacing, layout.modality_tag, native, layout.slice_uids)
