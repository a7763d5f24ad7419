"""Turn a found study source into a Study the engine can run.

npz: the challenge arrays as stored. DICOM and NIfTI: prompts sidecar first (cheap, and a missing one fails before
any pixel is decoded), then the image, then producer.formats.hospital builds the 8-bit Study.
"""
from __future__ import annotations

from producer.discovery import StudySource
from producer.formats.dicom import load_dicom_volume
from producer.formats.hospital import build_study
from producer.formats.nifti import bids_modality, load_nifti_volume
from producer.formats.npz import load_npz_study
from producer.formats.sidecar import read_prompts
from worker.protocol import Study, StudyError


def _hospital_study(source: StudySource) -> Study:
    if source.sidecar is None:
        raise StudyError(f"{source.name}: no prompts sidecar location")
    prompts = read_prompts(source.sidecar)
    if source.kind == "dicom":
        return build_study(source.name, load_dicom_volume(source.files), prompts)
    return build_study(source.name, load_nifti_volume(source.path), prompts, bids_modality(source.path))


def load_study(source: StudySource) -> Study:
    if source.kind == "npz":
        return load_npz_study(source.path)
    if source.kind in ("dicom", "nifti"):
        return _hospital_study(source)
    raise StudyError(f"{source.name}: unknown study kind {source.kind!r}")
