"""Find the studies in a folder: challenge npz, DICOM series, NIfTI images; and say what was left out and why.

- The folder is walked recursively (hidden files and folders excepted); `.json` files are sidecars (prompts,
  BIDS), never studies; every other file goes to the first format of producer.formats.registry that claims it:
  - npz (producer.formats.npz_kind): challenge npz (2DBox_*/3DBox_*) are read from the top folder only, or, when
    it has none, from its `imgs/` subfolder (the challenge layout; `gts/` beside it holds ground truth, not
    studies); other npz files are left out;
  - NIfTI (producer.formats.nifti_kind): `.nii`/`.nii.gz` files (but not `*.seg.nii.gz`, our own outputs);
  - DICOM (producer.formats.dicom_kind): any other file is read as a DICOM header
    (producer.formats.dicom_files) and image objects are grouped into studies (producer.formats.dicom_groups).
- Left-out files come back as `Skipped(path, reason)`: non-image DICOM objects (SR, SEG, RTSTRUCT, PR, KO, ...),
  corrupt DICOM, duplicates, files of no known format, npz outside the challenge places, DICOM studies a keyed
  prompts.json does not list.

Study names (also the output file names) are the file stem for npz; for NIfTI and DICOM the path relative to the
searched folder with "/" -> "_" (the NIfTI file without suffix; the DICOM series' folder, plus
`_<Modality><SeriesNumber>` when the folder holds several studies, plus `_<n>` for the n-th separate 2D image of
a series); a clash gets a short hash of the UID or path appended.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from producer.formats.base import Skipped, StudySource
from producer.formats.registry import FORMATS

__all__ = ["Discovery", "Skipped", "StudySource", "discover", "find_studies"]


@dataclass
class Discovery:
    studies: list[StudySource] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def _is_sidecar(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def _unique_names(sources: list[StudySource]) -> list[StudySource]:
    counts: dict[str, int] = {}
    for source in sources:
        counts[source.name] = counts.get(source.name, 0) + 1
    renamed = []
    for source in sources:
        if counts[source.name] > 1:
            key = source.sidecar.uid if source.sidecar and source.sidecar.uid else str(source.path)
            source = replace(source, name=f"{source.name}_{hashlib.sha1(key.encode()).hexdigest()[:8]}")
        renamed.append(source)
    return renamed


def discover(folder: Path) -> Discovery:
    """All studies under `folder` (sorted by name) and the files left out, with reasons."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    finders = [fmt.finder(folder) for fmt in FORMATS.values()]
    result = Discovery()
    for path in _walk(folder):
        if _is_sidecar(path):
            continue
        finder = next((finder for finder in finders if finder.claims(path)), None)
        taken = finder.take(path) if finder is not None else None
        if isinstance(taken, StudySource):
            result.studies.append(taken)
        elif isinstance(taken, Skipped):
            result.skipped.append(taken)
    for finder in finders:
        studies, skipped = finder.finish()
        result.studies += studies
        result.skipped += skipped
    result.studies = sorted(_unique_names(result.studies), key=lambda s: s.name)
    return result


def find_studies(folder: Path) -> list[StudySource]:
    """The studies under `folder`, sorted by name (see `discover` for the files left out)."""
    return discover(folder).studies
