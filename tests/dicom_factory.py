"""Build small, valid DICOM objects for the tests with pydicom: CT/MR/PET series, enhanced multi-frame, 2D images.

Geometry is explicit: slice k of a series sits at origin + k * step * (row x col), so a test knows exactly which
stored slice a file holds, whatever order (file names, InstanceNumbers) it is written in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ComprehensiveSRStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    VLPhotographicImageStorage,
    generate_uid,
)

SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage, "PT": PositronEmissionTomographyImageStorage}


@dataclass
class SeriesSpec:
    """A single-frame series: stored values (D, H, W) int, geometry in DICOM LPS millimetres."""

    stored: np.ndarray
    modality: str = "CT"
    slope: float = 1.0
    intercept: float = 0.0
    origin: tuple[float, float, float] = (-100.0, -120.0, 30.0)
    row_dir: tuple[float, float, float] = (1.0, 0.0, 0.0)  # direction of increasing column index (x)
    col_dir: tuple[float, float, float] = (0.0, 1.0, 0.0)  # direction of increasing row index (y)
    pixel_spacing: tuple[float, float] = (0.8, 0.7)  # (row spacing = y, column spacing = x), as DICOM stores it
    step: float = 2.5  # mm between slices along row x col (negative: stored slices run against the normal)
    series_uid: str = field(default_factory=generate_uid)
    study_uid: str = field(default_factory=generate_uid)
    frame_of_reference: str = field(default_factory=generate_uid)
    series_number: int = 3

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    def position(self, k: int) -> np.ndarray:
        return np.asarray(self.origin) + k * self.step * self.normal


def patient_study(ds: Dataset, spec: SeriesSpec) -> None:
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "PHANTOM-1", "19700101", "O"
    ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = spec.study_uid, "1", "20240101", "120000"
    ds.AccessionNumber, ds.ReferringPhysicianName = "A1", ""
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = spec.series_uid, spec.series_number, spec.modality
    ds.Manufacturer = "test-factory"


def file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def pixel_module(ds: Dataset, frame: np.ndarray, samples: int = 1) -> None:
    ds.Rows, ds.Columns = frame.shape[:2]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = frame.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(frame.dtype.kind == "i")
    ds.PixelData = np.ascontiguousarray(frame).tobytes()


def slice_dataset(spec: SeriesSpec, k: int, instance_number: int) -> Dataset:
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = file_meta(SOP_CLASSES[spec.modality], sop_uid)
    ds.SOPClassUID, ds.SOPInstanceUID = SOP_CLASSES[spec.modality], sop_uid
    patient_study(ds, spec)
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = spec.frame_of_reference, ""
    ds.InstanceNumber = instance_number
    ds.ImageOrientationPatient = [*spec.row_dir, *spec.col_dir]
    ds.ImagePositionPatient = [float(v) for v in spec.position(k)]
    ds.PixelSpacing = list(spec.pixel_spacing)
    ds.SliceThickness = abs(spec.step)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    if spec.modality in ("CT", "PT"):
        ds.RescaleSlope, ds.RescaleIntercept = spec.slope, spec.intercept
    if spec.modality == "PT":
        ds.Units, ds.DecayCorrection, ds.CorrectedImage = "BQML", "START", ["ATTN", "DECY"]
    pixel_module(ds, spec.stored[k])
    return ds


def write_series(
    folder: Path, spec: SeriesSpec, shuffle_seed: int | None = 7, transfer_syntax: str | None = None, prefix: str = "IM"
) -> list[Path]:
    """One file per slice. With a seed, file names and InstanceNumbers are a random permutation of slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    order = list(range(spec.stored.shape[0]))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    paths = []
    for rank, k in enumerate(order):
        ds = slice_dataset(spec, k, instance_number=rank + 1)
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        path = folder / f"{prefix}{rank:04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced_ct(
    path: Path, spec: SeriesSpec, frame_order: list[int], per_frame_intercepts: list[float] | None = None
) -> Path:
    """One Enhanced CT object; frame f holds slice frame_order[f], with per-frame positions.

    Rescale is shared (spec.slope/intercept) unless per_frame_intercepts[k] gives slice k its own intercept
    (then the shared item keeps spec.intercept, which a reader must not use for those frames)."""
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = file_meta(EnhancedCTImageStorage, sop_uid)
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedCTImageStorage, sop_uid
    patient_study(ds, spec)
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = spec.frame_of_reference, ""
    ds.InstanceNumber, ds.ContentDate, ds.ContentTime = 1, "20240101", "120000"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = len(frame_order)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = list(spec.pixel_spacing), abs(spec.step)
    orientation = Dataset()
    orientation.ImageOrientationPatient = [*spec.row_dir, *spec.col_dir]
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = spec.slope, spec.intercept, "HU"
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence([_frame_group(spec, k) for k in frame_order])
    if per_frame_intercepts is not None:
        for item, k in zip(ds.PerFrameFunctionalGroupsSequence, frame_order):
            own = Dataset()
            own.RescaleSlope, own.RescaleIntercept, own.RescaleType = spec.slope, per_frame_intercepts[k], "HU"
            item.PixelValueTransformationSequence = Sequence([own])
    pixel_module(ds, spec.stored[0])
    ds.PixelData = np.ascontiguousarray(spec.stored[frame_order]).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _frame_group(spec: SeriesSpec, k: int) -> Dataset:
    item, position, content = Dataset(), Dataset(), Dataset()
    position.ImagePositionPatient = [float(v) for v in spec.position(k)]
    content.StackID, content.InStackPositionNumber = "1", k + 1
    item.PlanePositionSequence, item.FrameContentSequence = Sequence([position]), Sequence([content])
    return item


def write_xray(path: Path, stored: np.ndarray, modality: str = "DX", photometric: str = "MONOCHROME2") -> Path:
    """A single-frame projection radiograph without patient geometry (no ImagePositionPatient)."""
    spec = SeriesSpec(stored=stored[None], modality=modality)
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = file_meta(DigitalXRayImageStorageForPresentation, sop_uid)
    ds.SOPClassUID, ds.SOPInstanceUID = DigitalXRayImageStorageForPresentation, sop_uid
    patient_study(ds, spec)
    ds.InstanceNumber, ds.ImagerPixelSpacing, ds.PresentationIntentType = 1, [0.15, 0.15], "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    pixel_module(ds, stored)
    ds.PhotometricInterpretation = photometric
    ds.save_as(path, enforce_file_format=True)
    return path


def write_colour_photo(path: Path, rgb: np.ndarray, modality: str = "XC") -> Path:
    """A single-frame RGB photograph (dermoscopy-like) without patient geometry."""
    spec = SeriesSpec(stored=rgb[None, ..., 0], modality=modality)
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = file_meta(VLPhotographicImageStorage, sop_uid)
    ds.SOPClassUID, ds.SOPInstanceUID = VLPhotographicImageStorage, sop_uid
    patient_study(ds, spec)
    ds.InstanceNumber, ds.ImageType = 1, ["ORIGINAL", "PRIMARY"]
    pixel_module(ds, rgb, samples=3)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_jpeg_photo(path: Path, rgb: np.ndarray, modality: str = "XC") -> Path:
    """A JPEG baseline (lossy, YCbCr 4:2:2) colour photograph, encoded with Pillow and encapsulated by pydicom."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, format="JPEG", quality=95)
    write_colour_photo(path, rgb, modality)
    from pydicom import dcmread

    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_raw_dataset(path: Path, source: Path) -> Path:
    """Rewrite a DICOM file as a bare implicit-VR dataset: no 128-byte preamble, no "DICM", no file meta."""
    from pydicom import dcmread

    ds = dcmread(source)
    del ds.file_meta
    ds.preamble = None
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return path


def write_sr(path: Path, study_uid: str | None = None) -> Path:
    """A minimal Comprehensive SR document (no pixel data): discovery must skip it with a note."""
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = file_meta(ComprehensiveSRStorage, sop_uid)
    ds.SOPClassUID, ds.SOPInstanceUID = ComprehensiveSRStorage, sop_uid
    spec = SeriesSpec(stored=np.zeros((1, 1, 1), np.int16), modality="SR", study_uid=study_uid or generate_uid())
    patient_study(ds, spec)
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp_volume(depth: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Stored int16 values where every slice is distinguishable: value = 100 * k + noise-free pattern."""
    z, y, x = np.meshgrid(np.arange(depth), np.arange(height), np.arange(width), indexing="ij")
    rng = np.random.default_rng(seed)
    return (100 * z + 3 * y + x + rng.integers(0, 3, size=z.shape)).astype(np.int16)
