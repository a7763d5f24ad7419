"""Read one DICOM file (header or whole) and tell images from everything else a hospital export holds.

A file is read as DICOM when it has the Part 10 preamble ("DICM" at byte 128), or, without one, when it starts
like a bare dataset (a group 0008/0002 tag) and pydicom can parse it with force=True and it carries a SOPClassUID
(raw datasets some PACS exports write). Such raw files get
a transfer syntax from the encoding pydicom detected, so their pixel data decodes.

Not images, skipped with a note (decided in this order):
- no SOPClassUID: corrupt or incomplete DICOM;
- a Modality that never holds an image to segment (SR, SEG, RTSTRUCT, RTPLAN, RTDOSE, PR, KO, DOC, REG, ...);
- a SOP Class that is not an image (pydicom's UID dictionary name says SR, presentation state, key object
  selection, segmentation, RT structure set/plan/dose/record, encapsulated document, waveform, raw data,
  MR spectroscopy, ...);
- no Rows/Columns (no pixel data).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

NON_IMAGE_MODALITIES = frozenset(
    {
        "SR",
        "SEG",
        "RTSTRUCT",
        "RTPLAN",
        "RTDOSE",
        "RTRECORD",
        "PR",
        "KO",
        "DOC",
        "REG",
        "FID",
        "RWV",
        "PLAN",
        "AU",
        "ECG",
        "EPS",
        "HD",
        "RESP",
        "M3D",
        "ANN",
    }
)
NON_IMAGE_SOP_CLASS_WORDS = (
    " SR ",
    "SR Storage",
    "Presentation State",
    "Key Object Selection",
    "Segmentation Storage",
    "RT Structure Set",
    "RT Plan",
    "RT Dose",
    "RT Ion Plan",
    "Treatment Record",
    "Encapsulated",
    "Waveform",
    "Raw Data",
    "Spatial Registration",
    "Spatial Fiducials",
    "Media Storage Directory",
    "Surface",
    "Tractography",
    "Real World Value Mapping",
    "Content Assessment",
    "Annotation",
    "Radiation Record",
    "Delivery Instruction",
    "Spectroscopy",
)


RAW_DATASET_STARTS = (b"\x08\x00", b"\x02\x00", b"\x00\x08")  # group 0008/0002 little endian, 0008 big endian


class NotDicomError(Exception):
    """The file is not DICOM at all."""


class CorruptDicomError(Exception):
    """The file claims to be DICOM but cannot be parsed."""


@dataclass(frozen=True)
class DicomHeader:
    """What discovery needs from one image file."""

    path: Path
    sop_instance_uid: str  # SOPInstanceUID, else the file meta's MediaStorageSOPInstanceUID, else the path
    series_uid: str  # "" when the data set has none (anonymised exports): grouped by `traits` instead
    modality: str
    series_number: int | None
    has_plane_geometry: bool  # ImagePositionPatient/ImageOrientationPatient, or per-frame plane positions
    traits: tuple = ()  # what files of one series share: frame of reference, orientation, size, spacing, modality


def has_preamble(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def _set_transfer_syntax(ds: Dataset) -> None:
    """Raw datasets (no file meta) get the transfer syntax pydicom detected while reading them."""
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
        ds.file_meta = meta


def read_dataset(path: Path, pixels: bool = True) -> Dataset:
    """The dataset (header only unless `pixels`); NotDicomError / CorruptDicomError otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = dcmread(path, stop_before_pixels=not pixels)
        except InvalidDicomError:
            ds = _read_forced(path, pixels)
        except Exception as error:  # pydicom raises many kinds on damaged files
            raise CorruptDicomError(f"unreadable DICOM ({type(error).__name__}: {error})") from error
    if not sop_class_of(ds):
        raise CorruptDicomError("corrupt or incomplete DICOM: no SOP Class UID")
    _set_transfer_syntax(ds)
    return ds


def sop_class_of(ds: Dataset) -> str:
    """SOPClassUID, else the file meta's MediaStorageSOPClassUID (a DICOMDIR, or an anonymised export, has only
    the latter)."""
    meta = getattr(ds, "file_meta", None) or {}
    return str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or "").strip()


def derived_uid(what: str, sop_uids) -> str:
    """A UID derived from a series' SOP Instance UIDs (for a source that lacks one): the same files always give
    the same UID."""
    return generate_uid(entropy_srcs=[f"litemedsam-fleet derived {what}", *sorted(sop_uids)])


def sop_instance_uid_of(ds: Dataset) -> str:
    """SOPInstanceUID, else the file meta's MediaStorageSOPInstanceUID (anonymised exports blank the former); ""."""
    meta = getattr(ds, "file_meta", None) or {}
    return str(ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID") or "").strip()


def _starts_like_a_dataset(path: Path) -> bool:
    """A bare dataset begins with a group 0008 (or 0002) tag; checking it spares force-parsing arbitrary files."""
    with path.open("rb") as handle:
        return handle.read(2) in RAW_DATASET_STARTS


def _read_forced(path: Path, pixels: bool) -> Dataset:
    if not _starts_like_a_dataset(path):
        raise NotDicomError("no DICOM preamble and no dataset at the start of the file")
    try:
        ds = dcmread(path, stop_before_pixels=not pixels, force=True)
        if "SOPClassUID" in ds and str(ds.SOPClassUID).strip():
            return ds
    except Exception as error:
        raise NotDicomError(str(error)) from error
    raise NotDicomError("no DICOM preamble and no SOP Class UID")


def non_image_reason(ds: Dataset) -> str | None:
    """Why this object is not an image to segment, or None when it is one."""
    modality = str(ds.get("Modality", "") or "").upper()
    sop_class = UID(sop_class_of(ds))
    name = sop_class.name if sop_class.is_valid else str(sop_class)
    if modality in NON_IMAGE_MODALITIES:
        return f"{name} (Modality {modality}) is not an image"
    if any(word in f" {name} " for word in NON_IMAGE_SOP_CLASS_WORDS):
        return f"{name} is not an image"
    if "Rows" not in ds or "Columns" not in ds:
        return f"{name} has no pixel data"
    return None


def _has_plane_geometry(ds: Dataset) -> bool:
    if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
        return True
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    return bool(frames) and "PlanePositionSequence" in frames[0]


def _rounded(values, digits: int) -> tuple[float, ...] | None:
    try:
        return tuple(round(float(v), digits) for v in values) if values else None
    except (TypeError, ValueError):
        return None


def series_traits(ds: Dataset) -> tuple:
    """What the files of one series share; files without a SeriesInstanceUID are grouped by it (and folder)."""
    return (
        str(ds.get("FrameOfReferenceUID", "") or ""),
        _rounded(ds.get("ImageOrientationPatient"), 4),
        str(ds.get("Rows", "")),
        str(ds.get("Columns", "")),
        _rounded(ds.get("PixelSpacing"), 4),
        str(ds.get("Modality", "") or "").upper(),
    )


def _series_number(ds: Dataset) -> int | None:
    try:
        number = ds.get("SeriesNumber")
        return int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        return None


def header_of(path: Path, ds: Dataset) -> DicomHeader:
    return DicomHeader(
        path=path,
        sop_instance_uid=sop_instance_uid_of(ds) or str(path),
        series_uid=str(ds.get("SeriesInstanceUID", "") or "").strip(),
        modality=str(ds.get("Modality", "") or "").upper(),
        series_number=_series_number(ds),
        has_plane_geometry=_has_plane_geometry(ds),
        traits=series_traits(ds),
    )
