"""DICOM as a study kind: every file no other format claims is read as a DICOM header; image objects are grouped
into studies (producer.formats.dicom_groups), boxes come from the series folder's prompts.json; out: the requested
DICOM formats (a DICOM SEG `<study>.seg.dcm`, an RT Structure Set `<study>.rtstruct.dcm`), both referencing the
source series.

A computed mask is never lost: when a requested DICOM output cannot be built from the source's headers, the label
map is written instead (`<study>.labels.nii.gz` on the series' grid when it has patient geometry, else
`<study>.labels.npz`) and the study's notes say why; the study stays ok.

Study names: the series' folder relative to the searched folder ("/" -> "_"), plus `_<Modality><SeriesNumber>` when
the folder holds several studies, plus `_<n>` for the n-th separate 2D image of a series.
"""

from __future__ import annotations

import logging
from pathlib import Path

from producer.formats.base import (
    Finder,
    OutputFolder,
    Skipped,
    StudyFormat,
    StudySource,
    prompts_of,
    relative_name,
    slug,
)
from producer.formats.dicom import read_layout, volume_of
from producer.formats.dicom_files import (
    CorruptDicomError,
    DicomHeader,
    NotDicomError,
    has_preamble,
    header_of,
    non_image_reason,
    read_dataset,
)
from producer.formats.dicom_groups import DicomGroup, group_headers
from producer.formats.dicom_outputs import DICOM_OUTPUTS, DicomSeg
from producer.formats.hospital import build_study, image_study
from producer.formats.nifti import write_label_nifti
from producer.formats.npz import write_segs
from producer.formats.outcome import StudyOutcome
from producer.formats.output_context import OutputContext, dicom_context
from producer.formats.seg import check_labels
from producer.formats.sidecar import DICOM_SIDECAR, SidecarPrompts, SidecarRef, lists
from worker.contract.study import Study, StudyError

log = logging.getLogger(__name__)
FALLBACK_SUFFIXES = {"nifti": ".labels.nii.gz", "npz": ".labels.npz"}
SERIES_NIFTI = "labels.nii.gz"  # a job's download of the mask as NIfTI, on the series' grid (LPS -> RAS)


def _scan(path: Path) -> DicomHeader | Skipped:
    try:
        ds = read_dataset(path, pixels=False)
    except OSError as error:
        return Skipped(path, f"unreadable file ({error.strerror or error})")
    except NotDicomError:
        if has_preamble(path) or path.suffix.lower() in (".dcm", ".dicom", ".ima"):
            return Skipped(path, "corrupt DICOM: cannot be parsed")
        return Skipped(path, "not a DICOM, NIfTI or challenge npz file")
    except CorruptDicomError as error:
        return Skipped(path, str(error))
    reason = non_image_reason(ds)
    return Skipped(path, f"{reason}, skipped") if reason else header_of(path, ds)


def _sources(folder: Path, groups: list[DicomGroup]) -> list[StudySource]:
    per_folder: dict[Path, int] = {}
    for group in groups:
        per_folder[group.folder] = per_folder.get(group.folder, 0) + 1
    sources = []
    for group in groups:
        shared = per_folder[group.folder] > 1
        name = relative_name(folder, group.folder)
        if shared:
            number = "" if group.series_number is None else str(group.series_number)
            name += f"_{slug(group.modality or 'DICOM')}{number}"
        if group.instance_index is not None:
            name += f"_{group.instance_index}"
        ref = SidecarRef(group.folder / DICOM_SIDECAR, group.section, group.uid, shared)
        sources.append(StudySource(name, group.folder, DicomFormat.kind, group.files, ref, group.notes))
    return sources


class _DicomFinder(Finder):
    def __init__(self, folder: Path):
        self.folder, self.headers = folder, []

    def claims(self, path: Path) -> bool:
        return True  # last in the table: whatever no other format reads is tried as DICOM

    def take(self, path: Path) -> Skipped | None:
        scanned = _scan(path)
        if isinstance(scanned, Skipped):
            return scanned
        self.headers.append(scanned)
        return None

    def finish(self) -> tuple[list[StudySource], list[Skipped]]:
        groups, notes = group_headers(self.headers)
        studies, skipped = [], [Skipped(path, reason) for path, reason in notes]
        for source in _sources(self.folder, groups):
            if lists(source.sidecar):
                studies.append(source)
            else:
                skipped.append(
                    Skipped(
                        source.path, f"DICOM study {source.name} is not listed in {source.sidecar.path.name}, skipped"
                    )
                )
        return studies, skipped


def _failure_reason(what: str, error: Exception) -> str:
    if isinstance(error, StudyError):
        return str(error)
    log.warning("building the %s failed", what, exc_info=error)
    if isinstance(error, ValueError):  # highdicom/pydicom say in words which header value they reject
        return f"the source's DICOM headers do not allow a {what}: {error}"
    return f"the source's DICOM headers lack or garble attributes a {what} needs"


class DicomFormat(StudyFormat):
    kind = "dicom"
    title = "DICOM"
    suffix = DicomSeg.suffix
    gives_seg = True

    def finder(self, folder: Path) -> Finder:
        return _DicomFinder(folder)

    def load(self, source: StudySource, prompts: SidecarPrompts | None = None) -> tuple[Study, OutputContext]:
        prompts = prompts_of(source, prompts)  # a missing sidecar fails before any pixel is decoded
        layout = read_layout(source.files)  # headers read once: the volume and the writers' reference
        study = build_study(source.name, volume_of(layout), prompts)
        return study, dicom_context(layout, prompts.labels, source.notes)

    def load_image(self, source: StudySource, modality: str | None = None) -> tuple[Study, OutputContext]:
        layout = read_layout(source.files)
        study = image_study(source.name, volume_of(layout), modality=modality)
        return study, dicom_context(layout, (), source.notes)

    def context(self, source: StudySource, prompts: SidecarPrompts | None = None) -> OutputContext:
        prompts = prompts_of(source, prompts)
        return dicom_context(read_layout(source.files), prompts.labels, source.notes)

    def main_output(self, folder: OutputFolder, source: StudySource) -> Path:
        return self.output(folder, source, folder.dicom_formats[0])

    @staticmethod
    def output(folder: OutputFolder, source: StudySource, dicom_format: str) -> Path:
        return folder.file(source.name, DICOM_OUTPUTS[dicom_format].suffix)

    def write(self, folder: OutputFolder, source: StudySource, outcome: StudyOutcome, context: OutputContext) -> None:
        labels = check_labels(outcome.labels, context.segment_labels)
        provenance = outcome.metrics.get("provenance", {})
        failed = []
        for kind in folder.dicom_formats:
            output = DICOM_OUTPUTS[kind]
            what = output.title
            try:
                if context.dicom is None:
                    raise StudyError("its headers could not be kept (see the notes above)")
                outcome.written[kind] = output.write(
                    self.output(folder, source, kind),
                    context.dicom,
                    labels,
                    context.segment_labels,
                    provenance,
                    context.segment_colours,
                )
            except Exception as error:
                failed.append(f"{what} not written: {_failure_reason(what, error)}")
        if failed:
            path = self._write_fallback(folder, source, labels, context)
            outcome.notes += [*failed, f"the label map was written to {path.name} instead"]

    def downloads(self, folder: OutputFolder, source: StudySource, outcome: StudyOutcome) -> dict[str, str]:
        files: dict[str, str] = {}
        seg = self.output(folder, source, DicomSeg.name)
        if seg.is_file():  # else the SEG could not be built and the notes say why
            files[DicomSeg.name] = seg.name
        context = outcome.context
        if context is not None and context.nifti is not None:  # the series' grid (producer.formats.output_context)
            write_label_nifti(Path(folder.path) / SERIES_NIFTI, outcome.labels, context.nifti, source.name)
            files["nifti"] = SERIES_NIFTI
        return files

    @staticmethod
    def _write_fallback(folder: OutputFolder, source: StudySource, labels, context: OutputContext) -> Path:
        """The mask as a label map: NIfTI on the series' grid when it has patient geometry, else npz."""
        if context.nifti is not None:
            path = folder.file(source.name, FALLBACK_SUFFIXES["nifti"])
            write_label_nifti(path, labels, context.nifti, source.name)
        else:
            path = folder.file(source.name, FALLBACK_SUFFIXES["npz"])
            write_segs(path, labels)
        return path
