"""Turn a found study source into a Study the engine can run, and the OutputContext its writers need.

npz: the challenge arrays as stored. DICOM and NIfTI: prompts sidecar first (cheap, and a missing one fails before
any pixel is decoded), then the image (DICOM headers are read once: the same layout gives the volume and the
writers' DicomReference), then producer.formats.hospital builds the 8-bit Study.
"""
from __future__ import annotations

from producer.discovery import StudySource
from producer.formats.dicom import read_layout, volume_of
from producer.formats.hospital import build_study
from producer.formats.nifti import bids_modality, load_nifti_volume
from producer.formats.nifti import reference_of as nifti_reference_of
from producer.formats.npz import load_npz_study
from producer.formats.sidecar import Prompts, read_prompts
from producer.output_context import OutputContext, dicom_context
from worker.contract.study import Study, StudyError


def _prompts(source: StudySource) -> Prompts:
    if source.sidecar is None:
        raise StudyError(f"{source.name}: no prompts sidecar location")
    return read_prompts(source.sidecar)


def load_study_and_context(source: StudySource) -> tuple[Study, OutputContext]:
    if source.kind == "npz":
        return load_npz_study(source.path), OutputContext("npz", notes=source.notes)
    if source.kind == "dicom":
        prompts = _prompts(source)
        layout = read_layout(source.files)
        study = build_study(source.name, volume_of(layout), prompts)
        return study, dicom_context(layout, prompts.labels, source.notes)
    if source.kind == "nifti":
        prompts = _prompts(source)
        study = build_study(source.name, load_nifti_volume(source.path), prompts, bids_modality(source.path))
        return study, OutputContext("nifti", prompts.labels, nifti=nifti_reference_of(source.path),
                                    notes=source.notes)
    raise StudyError(f"{source.name}: unknown study kind {source.kind!r}")


def load_study(source: StudySource) -> Study:
    return load_study_and_context(source)[0]


def context_of(source: StudySource) -> OutputContext:
    """The writers' context read from the source's headers and sidecar only (no pixels): for an outcome that
    came without one (a batch stored before contexts existed, or a caller's own outcome)."""
    if source.kind == "npz":
        return OutputContext("npz", notes=source.notes)
    prompts = _prompts(source)
    if source.kind == "dicom":
        return dicom_context(read_layout(source.files), prompts.labels, source.notes)
    if source.kind == "nifti":
        return OutputContext("nifti", prompts.labels, nifti=nifti_reference_of(source.path), notes=source.notes)
    raise StudyError(f"{source.name}: unknown study kind {source.kind!r}")
