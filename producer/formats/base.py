"""What every study format provides, and the study sources and output folder the formats share.

A format is one class per kind of study (npz, NIfTI, DICOM), registered in producer.formats.registry. It says:
- `finder(folder)`: which files it claims while discovery walks a folder, and which studies (or left-out files,
  with reasons) they make;
- `load(source, prompts)`: the Study the engine runs plus the OutputContext its writers need; `context(source,
  prompts)`: that context from headers and prompts alone (no pixels). The prompts are read from the study's sidecar,
  or given in memory (a gateway job's): `prompts_of` decides which, for every format;
- `main_output(folder, source)` and `write(folder, source, outcome, context)`: where a computed mask goes and how it
  is written;
- for a single-study job (the gateway): whether it takes prompts (`boxes_in_sidecar`: False for a format whose
  files carry their boxes), whether its mask gives a DICOM SEG to store back (`gives_seg`), and the result files
  the job offers (`downloads`).
A StudySource names its format by `kind` (a plain string, so the batch manifest stores it as JSON); the registry
turns the string into the format once (`format_of`), and nothing else branches on it.

Study names (also the output file names) are one plain path component (`check_study_name`); every output lands
directly inside the output folder (`OutputFolder.file`), whatever a name in a tampered manifest says.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from producer.formats.sidecar import SidecarPrompts, SidecarRef, read_prompts
from worker.contract.study import StudyError

if TYPE_CHECKING:
    from producer.formats.outcome import StudyOutcome
    from producer.formats.output_context import OutputContext
    from worker.contract.study import Study

OUTPUT_MARK = ".seg"  # outputs are <study>.seg.dcm / <study>.seg.nii.gz: discovery leaves them out


@dataclass(frozen=True)
class StudySource:
    """One study to run. npz: `path` is the file. nifti: `path` is the file. dicom: `path` is the folder holding
    the series (where its prompts.json lives) and `files` its instances (the loader orders slices by geometry)."""

    name: str
    path: Path
    kind: str  # a key of producer.formats.registry.FORMATS
    files: tuple[Path, ...] = ()
    sidecar: SidecarRef | None = None  # dicom/nifti: where the box prompts are read
    notes: tuple[str, ...] = ()  # what discovery decided for this study that its user should know


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "study"


def relative_name(folder: Path, path: Path) -> str:
    """A study name from its path below the searched folder: "/" -> "_" (the folder's own name for itself)."""
    relative = path.relative_to(folder)
    return slug("_".join(relative.parts)) if relative.parts else slug(folder.resolve().name)


def prompts_of(source: StudySource, given: SidecarPrompts | None = None) -> SidecarPrompts:
    """The prompts of a DICOM or NIfTI study: those `given` in memory (a gateway job's, never looked for on disk),
    else its sidecar's."""
    if given is not None:
        return given
    if source.sidecar is None:
        raise StudyError(f"{source.name}: no prompts sidecar location")
    return read_prompts(source.sidecar)


def check_study_name(name: str) -> str:
    """A study name becomes a file name in the output folder: it must be one plain path component."""
    if (
        not name
        or name in (".", "..")
        or any(c in name for c in "/\\\0")
        or len(name.encode()) > 200
        or not name.isprintable()
    ):
        raise StudyError(
            f"study name {name!r} is not a plain file name (no path separators, '..', control "
            "characters; at most 200 bytes): refusing to write it"
        )
    return name


@dataclass(frozen=True)
class OutputFolder:
    """Where outputs go, and the output options a format reads (the DICOM formats asked for)."""

    path: Path
    dicom_formats: tuple[str, ...] = ("seg",)

    def file(self, name: str, suffix: str) -> Path:
        """`<name><suffix>` directly inside the folder, never anywhere else."""
        path = Path(self.path) / f"{check_study_name(name)}{suffix}"
        if path.resolve().parent != Path(self.path).resolve():
            raise StudyError(f"study name {name!r} would write outside {self.path}")
        return path


class Finder(ABC):
    """One format's part of one discovery: the files it claims during the walk, then what they make."""

    @abstractmethod
    def claims(self, path: Path) -> bool:
        """Whether this format reads `path` (the first format in the table that claims a file gets it)."""

    @abstractmethod
    def take(self, path: Path) -> StudySource | Skipped | None:
        """A claimed file: a study, a file left out, or None (kept for `finish`)."""

    def finish(self) -> tuple[list[StudySource], list[Skipped]]:
        """After the walk: the studies made of several files, and what was left out (in that order)."""
        return [], []


class StudyFormat(ABC):
    kind: ClassVar[str]  # StudySource.kind, OutputContext.kind
    title: ClassVar[str]  # how messages to users name it ("DICOM", "NIfTI", "npz")
    suffix: ClassVar[str]  # the main output's suffix (a DICOM source: that of a DICOM SEG)
    boxes_in_sidecar: ClassVar[bool] = True  # its boxes come from a prompts sidecar (False: the files carry them)
    gives_seg: ClassVar[bool] = False  # its mask is written as a DICOM SEG referencing the source (a PACS can store it)

    @abstractmethod
    def finder(self, folder: Path) -> Finder:
        """A fresh finder for one discovery of `folder`."""

    @abstractmethod
    def load(self, source: StudySource, prompts: SidecarPrompts | None = None) -> tuple[Study, OutputContext]:
        """The study to run and what its writers need; `prompts`: given in memory, else the sidecar's (prompts_of)."""

    def load_image(self, source: StudySource, modality: str | None = None) -> tuple[Study, OutputContext]:
        """The image alone, without prompts (an interactive session's), and what its writers need; `modality`
        overrides the source's. A StudyError when this format has no image without its prompts."""
        raise StudyError(f"a {self.title} study cannot be opened without its prompts")

    @abstractmethod
    def context(self, source: StudySource, prompts: SidecarPrompts | None = None) -> OutputContext:
        """What the writers need, read from headers and prompts only (no pixels)."""

    def main_output(self, folder: OutputFolder, source: StudySource) -> Path:
        """Where the study's mask goes."""
        return folder.file(source.name, self.suffix)

    @abstractmethod
    def write(self, folder: OutputFolder, source: StudySource, outcome: StudyOutcome, context: OutputContext) -> None:
        """Write an ok outcome's mask (outcome.labels); notes for the user go to outcome.notes."""

    def downloads(self, folder: OutputFolder, source: StudySource, outcome: StudyOutcome) -> dict[str, str]:
        """After `write`, for a single-study job: the result files it offers besides labels.npz, by result format
        ("seg", "nifti") -> file name in the folder; writes any extra file that takes."""
        return {}
