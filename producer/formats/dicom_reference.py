"""What the DICOM writers (SEG, RTSTRUCT) need from a source series, captured once as JSON-able data.

Captured when a study is loaded (producer.formats.output_context) and stored with a fleet batch, so `producer results`
writes the same SEG/RTSTRUCT from any folder or machine, with the sources gone. It holds:
- `header`: the patient, study, series, frame-of-reference, equipment and image-pixel attributes of the series'
  first instance (and an enhanced multi-frame object's functional groups), as DICOM JSON (pydicom to_json_dict);
- `instances`: per source instance, in layout order, its SOP Class/Instance UIDs and plane geometry (DICOM JSON);
- `slices`: per volume slice z, the (instance, frame) it comes from (frame None for a single-frame instance);
- `notes`: what was derived or filled in, for the study's notes and the SEG's description.

Anonymised or incomplete headers are completed here, in one place:
- SOP Class / Instance UIDs fall back to the file meta (MediaStorageSOPClassUID / MediaStorageSOPInstanceUID); an
  instance with neither gets a UID derived from its header content;
- a missing StudyInstanceUID, SeriesInstanceUID or FrameOfReferenceUID is derived deterministically (pydicom's
  generate_uid with entropy from the series' SOP Instance UIDs): the same source always gives the same UIDs;
- a single 2D image without patient geometry whose SOP class requires a frame of reference (e.g. a CT Image
  object holding a scout) gets a created frame of reference and a nominal plane (origin 0, axial, its pixel
  spacing or 1 mm), with a note;
- type 2 attributes the SEG copies (patient name/ID/birth date/sex, accession number, study ID/date/time,
  referring physician) are present, empty when the source lacks them or holds a value not valid for its VR;
- a slice with patient geometry but no SliceThickness gets the series' slice gap (1 mm for a single slice).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydicom import config
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value

from producer.formats.dicom import SeriesLayout
from producer.formats.dicom_files import derived_uid, sop_class_of, sop_instance_uid_of

SHARED_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDate",
    "SeriesTime",
    "SeriesDescription",
    "Modality",
    "BodyPartExamined",
    "Laterality",
    "PatientPosition",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "Manufacturer",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "LossyImageCompression",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "ContainerIdentifier",
    "IssuerOfTheContainerIdentifierSequence",
    "SpecimenDescriptionSequence",
)
INSTANCE_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
)
# kept for the outputs, but not part of a derived instance UID's content (UIDs derived before it was kept stay)
OUTPUT_ONLY_KEYWORDS = ("PatientOrientation",)
TYPE2_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
FRAME_OF_REFERENCE_REQUIRED = (  # single-frame SOP classes whose IOD makes the Frame of Reference module mandatory
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.128",  # PET Image
    "1.2.840.10008.5.1.4.1.1.20",  # NM Image
)


def _subset(ds: Dataset, keywords) -> Dataset:
    subset = Dataset()
    for keyword in keywords:
        if keyword in ds:
            subset[keyword] = ds[keyword]
    return subset


def _json(ds: Dataset) -> dict[str, Any]:
    return ds.to_json_dict(bulk_data_threshold=1 << 30)


def _content_uid(ds: Dataset, index: int) -> str:
    digest = hashlib.sha256(
        json.dumps(_json(_subset(ds, SHARED_KEYWORDS + INSTANCE_KEYWORDS)), sort_keys=True).encode()
    ).hexdigest()
    return generate_uid(entropy_srcs=["litemedsam-fleet derived instance", digest, str(index)])


@dataclass(frozen=True)
class DicomReference:
    """JSON-able: header (DICOM JSON), instances (DICOM JSON each), slices [(instance, frame|None)], notes."""

    header: dict[str, Any]
    instances: tuple[dict[str, Any], ...]
    slices: tuple[tuple[int, int | None], ...]
    notes: tuple[str, ...] = ()
    derived: tuple[str, ...] = ()  # the attributes derived or created here (e.g. "StudyInstanceUID")

    @property
    def is_multiframe(self) -> bool:
        return self.slices[0][1] is not None

    def datasets(self) -> list[Dataset]:
        """One header-only pydicom Dataset per source instance (layout order), as the writers' sources."""
        result = []
        for instance in self.instances:
            ds = Dataset.from_json(self.header)
            ds.update(Dataset.from_json(instance))
            result.append(ds)
        return result

    def slice_datasets(self) -> list[Dataset]:
        """The single-frame source instance of every volume slice, in volume order."""
        datasets = self.datasets()
        return [datasets[instance] for instance, _ in self.slices]

    @property
    def shared(self) -> Dataset:
        return Dataset.from_json(self.header)


def _complete_instances(headers) -> tuple[list[Dataset], list[str]]:
    instances, notes = [], []
    from_meta = derived = 0
    for index, ds in enumerate(headers):
        instance = _subset(ds, INSTANCE_KEYWORDS + OUTPUT_ONLY_KEYWORDS)
        if not str(ds.get("SOPClassUID", "") or "").strip():
            instance.SOPClassUID = sop_class_of(ds)
        if not str(ds.get("SOPInstanceUID", "") or "").strip():
            uid = sop_instance_uid_of(ds)
            from_meta += bool(uid)
            derived += not uid
            instance.SOPInstanceUID = uid or _content_uid(ds, index)
        instances.append(instance)
    if from_meta:
        notes.append(
            f"SOP Instance UIDs of {from_meta} instance(s) taken from the file meta "
            "(MediaStorageSOPInstanceUID): the data set has none"
        )
    if derived:
        notes.append(
            f"{derived} instance(s) have no SOP Instance UID at all: the SEG references UIDs derived from "
            "their headers, which no archive knows"
        )
    return instances, notes


def _complete_shared(shared: Dataset, sop_uids: list[str], notes: list[str], derived: list[str]) -> None:
    for keyword, what in (("StudyInstanceUID", "study"), ("SeriesInstanceUID", "series")):
        if not str(shared.get(keyword, "") or "").strip():
            setattr(shared, keyword, derived_uid(what, sop_uids))
            derived.append(keyword)
    if derived:
        notes.append(
            f"the source has no {' or '.join(derived)}: derived deterministically from its SOP Instance "
            "UIDs, so the output references a study/series no archive knows"
        )
    for keyword in TYPE2_KEYWORDS:
        if keyword not in shared:
            setattr(shared, keyword, "")
        elif not _conformant(shared[keyword]):
            notes.append(
                f"{keyword} {str(shared[keyword].value)[:40]!r} is not a valid {shared[keyword].VR}: "
                "left empty in the output"
            )
            setattr(shared, keyword, "")


def _conformant(element) -> bool:
    try:
        validate_value(element.VR, element.value, config.RAISE)
    except Exception:
        return False
    return True


def _complete_frame_of_reference(
    shared: Dataset,
    instances: list[Dataset],
    sop_uids: list[str],
    notes: list[str],
    derived: list[str],
    has_geometry: bool,
) -> None:
    if str(shared.get("FrameOfReferenceUID", "") or "").strip():
        return
    sop_class = str(instances[0].get("SOPClassUID", ""))
    if has_geometry:
        shared.FrameOfReferenceUID = derived_uid("frame of reference", sop_uids)
        derived.append("FrameOfReferenceUID")
        notes.append("the source has no FrameOfReferenceUID: one was derived from its SOP Instance UIDs")
    elif len(instances) == 1 and sop_class in FRAME_OF_REFERENCE_REQUIRED:
        shared.FrameOfReferenceUID = derived_uid("frame of reference", sop_uids)
        derived.append("FrameOfReferenceUID")
        instance = instances[0]
        spacing = instance.get("PixelSpacing") or instance.get("ImagerPixelSpacing") or [1.0, 1.0]
        instance.ImagePositionPatient = [0.0, 0.0, 0.0]
        instance.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        instance.PixelSpacing = [float(v) for v in spacing]
        notes.append(
            "the 2D image has no frame of reference or patient geometry, which its SOP class requires: "
            "a frame of reference and a nominal axial plane at the origin were created for the output"
        )


def _complete_slice_thickness(instances: list[Dataset], layout: SeriesLayout, notes: list[str]) -> None:
    """SliceThickness (type 2 in the Image Plane module; the SEG's pixel measures need a value): the slice gap."""
    thickness = layout.geometry.spacing[2] if layout.geometry is not None else 1.0
    missing = [ds for ds in instances if "ImagePositionPatient" in ds and not ds.get("SliceThickness")]
    for ds in missing:
        ds.SliceThickness = round(float(thickness), 6)
    if missing:
        notes.append(
            f"{len(missing)} slice(s) have no SliceThickness: {thickness:.6g} mm (the slice gap, or 1 mm for "
            "a single slice) used in the output"
        )


def reference_of(layout: SeriesLayout) -> DicomReference:
    """The writers' view of a series, with anonymised or missing attributes completed (module docstring)."""
    instances, notes = _complete_instances(layout.headers)
    sop_uids = [str(instance.SOPInstanceUID) for instance in instances]
    shared = _subset(layout.headers[0], SHARED_KEYWORDS)
    derived: list[str] = []
    _complete_shared(shared, sop_uids, notes, derived)
    _complete_frame_of_reference(shared, instances, sop_uids, notes, derived, layout.geometry is not None)
    if not layout.is_multiframe:
        _complete_slice_thickness(instances, layout, notes)
    slices = tuple((ref.instance, ref.frame) for ref in layout.slices)
    return DicomReference(
        _json(shared), tuple(_json(instance) for instance in instances), slices, tuple(notes), tuple(derived)
    )
