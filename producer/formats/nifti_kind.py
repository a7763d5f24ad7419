"""NIfTI as a study kind: `.nii`/`.nii.gz` files anywhere below the folder (not our own `*.seg.nii.gz` outputs),
boxes from `<stem>.prompts.json`, modality from the prompts or a BIDS sidecar; out: `<study>.seg.nii.gz` on the
source's grid (producer.formats.nifti)."""

from __future__ import annotations

from pathlib import Path

from producer.formats.base import (
    OUTPUT_MARK,
    Finder,
    OutputFolder,
    Skipped,
    StudyFormat,
    StudySource,
    prompts_of,
    relative_name,
)
from producer.formats.hospital import build_study, image_study
from producer.formats.nifti import (
    bids_modality,
    is_nifti,
    load_nifti_volume,
    nifti_stem,
    reference_of,
    write_label_nifti,
)
from producer.formats.outcome import StudyOutcome
from producer.formats.output_context import OutputContext
from producer.formats.sidecar import NIFTI_SIDECAR_SUFFIX, SidecarPrompts, SidecarRef
from worker.contract.study import Study


class _NiftiFinder(Finder):
    def __init__(self, folder: Path):
        self.folder = folder

    def claims(self, path: Path) -> bool:
        return is_nifti(path)

    def take(self, path: Path) -> StudySource | Skipped:
        stem = nifti_stem(path)
        if stem.endswith(OUTPUT_MARK):
            return Skipped(path, f"a label map this producer wrote (*{OUTPUT_MARK}.nii.gz), skipped")
        name = relative_name(self.folder, path.with_name(stem))
        sidecar = SidecarRef(path.with_name(stem + NIFTI_SIDECAR_SUFFIX))
        return StudySource(name, path, NiftiFormat.kind, (path,), sidecar)


class NiftiFormat(StudyFormat):
    kind = "nifti"
    title = "NIfTI"
    suffix = f"{OUTPUT_MARK}.nii.gz"

    def finder(self, folder: Path) -> Finder:
        return _NiftiFinder(folder)

    def load(self, source: StudySource, prompts: SidecarPrompts | None = None) -> tuple[Study, OutputContext]:
        prompts = prompts_of(source, prompts)  # a missing sidecar fails before any pixel is read
        study = build_study(source.name, load_nifti_volume(source.path), prompts, bids_modality(source.path))
        return study, self._context(source, prompts)

    def load_image(self, source: StudySource, modality: str | None = None) -> tuple[Study, OutputContext]:
        volume = load_nifti_volume(source.path)
        study = image_study(source.name, volume, modality=modality, fallback_modality=bids_modality(source.path))
        return study, OutputContext(self.kind, (), nifti=reference_of(source.path), notes=source.notes)

    def context(self, source: StudySource, prompts: SidecarPrompts | None = None) -> OutputContext:
        return self._context(source, prompts_of(source, prompts))

    def _context(self, source: StudySource, prompts: SidecarPrompts) -> OutputContext:
        return OutputContext(self.kind, prompts.labels, nifti=reference_of(source.path), notes=source.notes)

    def write(self, folder: OutputFolder, source: StudySource, outcome: StudyOutcome, context: OutputContext) -> None:
        write_label_nifti(self.main_output(folder, source), outcome.labels, context.nifti, source.name)

    def downloads(self, folder: OutputFolder, source: StudySource, outcome: StudyOutcome) -> dict[str, str]:
        return {"nifti": self.main_output(folder, source).name}
