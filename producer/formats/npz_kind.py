"""The challenge npz as a study kind: found in the top folder (or its imgs/), loaded as stored, written as `segs`.

Challenge npz (2DBox_*/3DBox_*, and the 2025 challenge's cases, recognised by their pickled box list:
producer.formats.npz2025) are read from the top folder only, or, when it has none, from its `imgs/` subfolder
(the challenge layout; `gts/` beside it holds ground truth, not studies); other npz files are counted and left out.
"""

from __future__ import annotations

from pathlib import Path

from producer.formats.base import Finder, OutputFolder, Skipped, StudyFormat, StudySource
from producer.formats.npz import is_challenge_npz, load_npz_image, load_npz_study, write_segs
from producer.formats.npz2025 import is_2025_npz, study_from_2025
from producer.formats.outcome import StudyOutcome
from producer.formats.output_context import OutputContext
from producer.formats.sidecar import SidecarPrompts
from worker.contract.study import Study, StudyError


def challenge_npz(folder: Path) -> list[Path]:
    found = [p for p in sorted(folder.glob("*.npz")) if is_challenge_npz(p) or is_2025_npz(p)]
    if not found and (folder / "imgs").is_dir():
        found = [p for p in sorted((folder / "imgs").glob("*.npz")) if is_challenge_npz(p) or is_2025_npz(p)]
    return found


class _NpzFinder(Finder):
    def __init__(self, folder: Path):
        self.folder, self.studies, self.others = folder, challenge_npz(folder), 0

    def claims(self, path: Path) -> bool:
        return path.suffix == ".npz"

    def take(self, path: Path) -> None:
        self.others += path not in self.studies
        return None

    def finish(self) -> tuple[list[StudySource], list[Skipped]]:
        skipped = (
            [
                Skipped(
                    self.folder,
                    f"{self.others} .npz file(s) ignored: challenge npz are read from the top "
                    "folder, or its imgs/ when the top folder has none",
                )
            ]
            if self.others
            else []
        )
        return [StudySource(path.stem, path, NpzFormat.kind) for path in self.studies], skipped


class NpzFormat(StudyFormat):
    kind = "npz"
    title = "npz"
    suffix = ".npz"
    boxes_in_sidecar = False  # `boxes` is an array of the file

    def finder(self, folder: Path) -> Finder:
        return _NpzFinder(folder)

    def load(self, source: StudySource, prompts: SidecarPrompts | None = None) -> tuple[Study, OutputContext]:
        self._no_prompts(prompts)
        study = study_from_2025(source.path) if is_2025_npz(source.path) else load_npz_study(source.path)
        return study, self.context(source)

    def load_image(self, source: StudySource, modality: str | None = None) -> tuple[Study, OutputContext]:
        return load_npz_image(source.path, modality), self.context(source)

    def context(self, source: StudySource, prompts: SidecarPrompts | None = None) -> OutputContext:
        self._no_prompts(prompts)
        return OutputContext(self.kind, notes=source.notes)

    def _no_prompts(self, prompts: SidecarPrompts | None) -> None:
        if prompts is not None:
            raise StudyError(f"an {self.title} study carries its own boxes: send it without prompts")

    def write(self, folder: OutputFolder, source: StudySource, outcome: StudyOutcome, context: OutputContext) -> None:
        write_segs(self.main_output(folder, source), outcome.labels)
