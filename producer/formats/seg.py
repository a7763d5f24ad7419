"""The engine's label volume -> a DICOM Segmentation (highdicom) referencing the source series.

- Segmentation type BINARY (what viewers read most widely); label k+1 <-> segment number k+1 <-> box k.
- One segment per box, labelled from the prompts sidecar ("box k+1" by default); a label that names a known
  structure ("liver", "Kidney_L", "liver tumour") gets its SNOMED CT category and type, any other SNOMED "Tissue"
  (a box prompt says nothing about anatomy); every segment has a RecommendedDisplayCIELabValue, the colour the
  overlays and the gateway's pages give that label (producer.formats.structures); algorithm type SEMIAUTOMATIC.
- A source image without patient geometry (a secondary capture, a photograph, a scanned film) gives a SEG that
  places nothing either: PatientOrientation is copied from the source (empty if it has none: type 2C), and the
  shared Pixel Measures are left out (highdicom copies a secondary capture's nominal PixelSpacing there without the
  SliceThickness that a projection image cannot have, which its own reader then refuses). dciodvfy and highdicom
  accept the result (tests/test_dicom_validators.py); viewers that place segments in patient space (3D Slicer,
  OHIF) cannot show such a SEG over its image.
- Algorithm identification: name "litemedsam-fleet", version = the engine's package version, source = the model
  name, parameters model_sha256 / precision / strategy (from the outcome's provenance).
- Geometry and references come from the source headers: frame i of the label array is matched to source slice i
  (single-frame series: the instances in volume order; an enhanced multi-frame source: its own frame order), so
  highdicom copies each frame's position, orientation, pixel spacing, frame of reference and
  ReferencedSOPInstanceUID (+ frame number) from the right source frame.
- Empty frames are omitted (omit_empty_frames); a box whose mask is empty everywhere remains a described segment
  with no frames, so segment numbers never shift.
- UIDs are derived from the source UIDs and the labels' content (pydicom's generate_uid with entropy sources):
  writing the same result twice gives the same SeriesInstanceUID and SOPInstanceUID.
- The source is a DicomReference (producer.formats.dicom_reference): header-only data sets rebuilt from JSON,
  with anonymised/missing attributes completed there; when it derived UIDs or created a frame of reference, the
  SEG's SeriesDescription and ContentDescription say so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from producer.formats.dicom_reference import DicomReference
from producer.formats.structures import Colour, chosen_colour, segment_structure
from worker.contract.files import atomic_path
from worker.contract.study import StudyError
from worker.contract.version import PACKAGE_VERSION as __version__

ALGORITHM_NAME = "litemedsam-fleet"
SERIES_NUMBER_OFFSET = 1000


def algorithm_identification(provenance: Mapping[str, Any]) -> hd.AlgorithmIdentificationSequence:
    parameters = {
        key: str(provenance[key])
        for key in ("model_sha256", "precision", "encoder_precision", "decoder_precision", "strategy", "overlap")
        if provenance.get(key)
    }
    return hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=codes.cid7162.ArtificialIntelligence,
        version=str(provenance.get("package_version") or __version__),
        source=str(provenance.get("model") or "") or None,
        parameters=parameters or None,
    )


def segment_descriptions(
    labels: Sequence[str], algorithm: hd.AlgorithmIdentificationSequence, colours: Sequence[Colour | None] = ()
) -> list[hd.seg.SegmentDescription]:
    descriptions = []
    for number, label in enumerate(labels, start=1):
        structure = segment_structure(number, label, chosen_colour(colours, number))
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label[:64],
                segmented_property_category=structure.category,
                segmented_property_type=structure.type,
                algorithm_type="SEMIAUTOMATIC",
                algorithm_identification=algorithm,
                display_color=hd.color.CIELabColor.from_rgb(*structure.rgb),
            )
        )
    return descriptions


def check_fits(reference: DicomReference, labels: np.ndarray) -> np.ndarray:
    """labels as (slices, rows, columns) of the source; a StudyError when they do not fit it."""
    volume = labels[None] if labels.ndim == 2 else labels
    shared = reference.shared
    rows, columns = int(shared.Rows), int(shared.Columns)
    if volume.shape != (len(reference.slices), rows, columns):
        raise StudyError(
            f"labels of shape {labels.shape} do not fit the source series ({len(reference.slices)} "
            f"slices of {rows}x{columns})"
        )
    return volume


def _frames(reference: DicomReference, labels: np.ndarray) -> tuple[list, np.ndarray]:
    """(source_images, pixel_array) with pixel_array[i] <-> source image i (or frame i of a multi-frame source)."""
    volume = check_fits(reference, labels)
    if not reference.is_multiframe:
        return reference.slice_datasets(), volume
    frames = np.zeros_like(volume)
    for z, (_, frame) in enumerate(reference.slices):
        frames[frame] = volume[z]
    return reference.datasets()[:1], frames


def _uid(*parts: str) -> str:
    return generate_uid(entropy_srcs=list(parts))


def check_labels(labels: np.ndarray, segment_labels: Sequence[str]) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size and int(labels.max()) > len(segment_labels):
        raise StudyError(f"labels go up to {int(labels.max())} but the study has {len(segment_labels)} boxes")
    return labels.astype(np.uint16, copy=False)


def output_uids(reference: DicomReference, labels: np.ndarray, salt: str = "") -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of an output object, derived from the source and the mask; each output
    format other than the SEG salts them with its name (the SEG's, unsalted, are derived as they always were)."""
    digest = hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()
    key = "|".join(str(instance.SOPInstanceUID) for instance in reference.slice_datasets())
    prefix = f"{salt} " if salt else ""
    return _uid(key, digest, f"{prefix}series"), _uid(key, digest, f"{prefix}instance")


def build_segmentation(
    reference: DicomReference,
    labels: np.ndarray,
    segment_labels: Sequence[str],
    provenance: Mapping[str, Any],
    colours: Sequence[Colour | None] = (),
) -> hd.seg.Segmentation:
    sources, frames = _frames(reference, check_labels(labels, segment_labels))
    series_uid, instance_uid = output_uids(reference, frames)
    source_number = int(sources[0].get("SeriesNumber") or 0)
    derived = "; derived " + ", ".join(reference.derived) if reference.derived else ""
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type="BINARY",
        segment_descriptions=segment_descriptions(segment_labels, algorithm_identification(provenance), colours),
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER_OFFSET + source_number,
        sop_instance_uid=instance_uid,
        instance_number=1,
        manufacturer=ALGORITHM_NAME,
        manufacturer_model_name=str(provenance.get("model") or "litemedsam"),
        software_versions=str(provenance.get("package_version") or __version__),
        device_serial_number="none",
        content_label="LITEMEDSAM",
        content_description=f"LiteMedSAM box-prompted segmentation{derived}"[:64],
        omit_empty_frames=True,
    )
    seg.SeriesDescription = f"LiteMedSAM segmentation{derived}"[:64]
    _stable_dimension_organization(seg, _uid(series_uid, "dimension organization"))
    if not _is_placed(seg):
        _without_patient_geometry(seg, sources[0])
    return seg


def _is_placed(seg: hd.seg.Segmentation) -> bool:
    """Whether the SEG's frames carry a position in patient space (copied from a source that has one)."""
    frames = seg.get("PerFrameFunctionalGroupsSequence") or [Dataset()]
    return (
        "PlanePositionSequence" in frames[0]
        or "PlanePositionSequence" in (seg.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    )


def _without_patient_geometry(seg: hd.seg.Segmentation, source: Dataset) -> None:
    """A SEG of an image that has no place in patient space: what the IOD asks of such an image (module doc)."""
    seg.PatientOrientation = source.get("PatientOrientation", "")
    for group in seg.get("SharedFunctionalGroupsSequence", []):
        if "PixelMeasuresSequence" in group:
            del group.PixelMeasuresSequence


def _stable_dimension_organization(seg: hd.seg.Segmentation, uid: str) -> None:
    """highdicom draws a random DimensionOrganizationUID; a derived one makes re-writing the same result give
    the same object, e.g. `producer results` elsewhere and the waiting submit."""
    for item in [*seg.get("DimensionOrganizationSequence", []), *seg.get("DimensionIndexSequence", [])]:
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = uid


def write_dicom_seg(
    path: Path,
    reference: DicomReference,
    labels: np.ndarray,
    segment_labels: Sequence[str],
    provenance: Mapping[str, Any],
    colours: Sequence[Colour | None] = (),
) -> hd.seg.Segmentation:
    """Build and write atomically (a reader never sees half a file); the object as written."""
    seg = build_segmentation(reference, labels, segment_labels, provenance, colours)
    with atomic_path(path) as partial:
        seg.save_as(partial)
    return seg
