"""Find the studies in a folder: challenge npz, DICOM series, NIfTI images; and say what was left out and why.

- Challenge npz (2DBox_*/3DBox_*) are read from the top folder only, or, when it has none, from its `imgs/`
  subfolder (the challenge layout; `gts/` beside it holds ground truth, not studies).
- Everything else is found walking the folder recursively (hidden files and folders excepted):
  `.nii`/`.nii.gz` files are NIfTI studies (but not `*.seg.nii.gz`, our own outputs); other files are read as
  DICOM headers (producer.formats.dicom_files) and image objects grouped into studies
  (producer.formats.dicom_groups); `.json` files are prompts sidecars.
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
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from producer.formats.dicom_files import (CorruptDicomError, DicomHeader, NotDicomError, has_preamble, header_of,
                                          non_image_reason, read_dataset)
from producer.formats.dicom_groups import DicomGroup, group_headers
from producer.formats.nifti import is_nifti, nifti_stem
from producer.formats.npz import is_challenge_npz
from producer.formats.sidecar import DICOM_SIDECAR, NIFTI_SIDECAR_SUFFIX, SidecarRef, lists

KINDS = ("npz", "dicom", "nifti")
OUTPUT_MARK = ".seg"  # outputs are <study>.seg.dcm / <study>.seg.nii.gz (producer.outputs)


@dataclass(frozen=True)
class StudySource:
    """One study to run. npz: `path` is the file. nifti: `path` is the file. dicom: `path` is the folder holding
    the series (where its prompts.json lives) and `files` its instances (the loader orders slices by geometry)."""

    name: str
    path: Path
    kind: str  # one of KINDS
    files: tuple[Path, ...] = ()
    sidecar: SidecarRef | None = None  # dicom/nifti: where the box prompts are read
    notes: tuple[str, ...] = ()  # what discovery decided for this study that its user should know


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass
class Discovery:
    studies: list[StudySource] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _challenge_npz(folder: Path) -> list[Path]:
    found = [p for p in sorted(folder.glob("*.npz")) if is_challenge_npz(p)]
    if not found and (folder / "imgs").is_dir():
        found = [p for p in sorted((folder / "imgs").glob("*.npz")) if is_challenge_npz(p)]
    return found


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "study"


def _relative_name(folder: Path, path: Path) -> str:
    relative = path.relative_to(folder)
    return _slug("_".join(relative.parts)) if relative.parts else _slug(folder.resolve().name)


def _scan_dicom(path: Path) -> DicomHeader | Skipped:
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


def _nifti_source(folder: Path, path: Path) -> StudySource:
    stem = nifti_stem(path)
    name = _relative_name(folder, path.with_name(stem))
    return StudySource(name, path, "nifti", (path,), SidecarRef(path.with_name(stem + NIFTI_SIDECAR_SUFFIX)))


def _dicom_sources(folder: Path, groups: list[DicomGroup]) -> list[StudySource]:
    per_folder: dict[Path, int] = {}
    for group in groups:
        per_folder[group.folder] = per_folder.get(group.folder, 0) + 1
    sources = []
    for group in groups:
        shared = per_folder[group.folder] > 1
        name = _relative_name(folder, group.folder)
        if shared:
            number = "" if group.series_number is None else str(group.series_number)
            name += f"_{_slug(group.modality or 'DICOM')}{number}"
        if group.instance_index is not None:
            name += f"_{group.instance_index}"
        ref = SidecarRef(group.folder / DICOM_SIDECAR, group.section, group.uid, shared)
        sources.append(StudySource(name, group.folder, "dicom", group.files, ref, group.notes))
    return sources


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


def _sort_files(folder: Path, npz: list[Path], result: Discovery) -> list[DicomHeader]:
    """Walk the tree: NIfTI studies and notes go into `result`; DICOM image headers are returned for grouping."""
    headers, other_npz = [], 0
    for path in _walk(folder):
        if path.suffix == ".npz":
            other_npz += path not in npz
        elif is_nifti(path) and nifti_stem(path).endswith(OUTPUT_MARK):
            result.skipped.append(Skipped(path, f"a label map this producer wrote (*{OUTPUT_MARK}.nii.gz), skipped"))
        elif is_nifti(path):
            result.studies.append(_nifti_source(folder, path))
        elif path.suffix.lower() != ".json":
            scanned = _scan_dicom(path)
            (result.skipped if isinstance(scanned, Skipped) else headers).append(scanned)
    if other_npz:
        result.skipped.append(Skipped(folder, f"{other_npz} .npz file(s) ignored: challenge npz are read from the "
                                              "top folder, or its imgs/ when the top folder has none"))
    return headers


def _add_dicom_studies(folder: Path, headers: list[DicomHeader], result: Discovery) -> None:
    groups, notes = group_headers(headers)
    result.skipped += [Skipped(path, reason) for path, reason in notes]
    for source in _dicom_sources(folder, groups):
        if lists(source.sidecar):
            result.studies.append(source)
        else:
            result.skipped.append(Skipped(source.path, f"DICOM study {source.name} is not listed in "
                                                       f"{source.sidecar.path.name}, skipped"))


def discover(folder: Path) -> Discovery:
    """All studies under `folder` (sorted by name) and the files left out, with reasons."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    npz = _challenge_npz(folder)
    result = Discovery(studies=[StudySource(p.stem, p, "npz") for p in npz])
    _add_dicom_studies(folder, _sort_files(folder, npz, result), result)
    result.studies = sorted(_unique_names(result.studies), key=lambda s: s.name)
    return result


def find_studies(folder: Path) -> list[StudySource]:
    """The studies under `folder`, sorted by name (see `discover` for the files left out)."""
    return discover(folder).studies
