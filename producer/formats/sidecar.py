"""The prompts sidecar: box prompts, segment labels and per-study overrides for DICOM and NIfTI studies.

Where it lives:
- NIfTI `scan.nii.gz` (or `scan.nii`): `scan.prompts.json` beside it. (Not `scan.json`: BIDS keeps scanner
  metadata there; a BIDS `scan.json` is read only for its "Modality" when the prompts give none.)
- DICOM: `prompts.json` in the folder holding the series' files (the deepest folder containing all of them).
  When that folder holds one study, the file is that study's entry. When it holds several (series side by side,
  or several 2D images of one series), key the entries: {"series": {"<SeriesInstanceUID>": entry, ...}} and,
  for a 2D image split out of a multi-image series, {"instances": {"<SOPInstanceUID>": entry}}. Studies a keyed
  file does not list are skipped with a note (a folder usually holds localisers and reformats nobody prompted).

An entry:
    {
      "modality": "CT",                        optional: routing name or DICOM tag; required for NIfTI
      "window": {"level": 40, "width": 400},   optional: 8-bit window for this study, any modality
      "boxes": [                               required, at least one; box k becomes label / segment k+1
        {"label": "liver", "voxel": [x0, y0, z0, x1, y1, z1]},
        {"label": "lesion", "mm": [[x, y, z], [x, y, z]]}
      ]
    }
"voxel": inclusive integer indices, [x0, y0, x1, y1] for a 2D image (x = column, y = row, z = slice, as in
producer.formats.volume). "mm": two opposite corners in world millimetres (DICOM patient LPS for DICOM, the NIfTI
RAS world for NIfTI); both are mapped to voxel indices with the image's real geometry (producer.formats.boxes).
"label" is optional ("box k+1" by default); a "comment" key is allowed anywhere and ignored.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producer.formats.intensity import Window
from worker.contract.study import StudyError

DICOM_SIDECAR = "prompts.json"
NIFTI_SIDECAR_SUFFIX = ".prompts.json"
ENTRY_KEYS = {"modality", "window", "boxes", "comment"}
BOX_KEYS = {"label", "voxel", "mm", "comment"}
SECTIONS = ("series", "instances")


@dataclass(frozen=True)
class BoxPrompt:
    label: str
    voxel: tuple[int, ...] | None = None  # 4 or 6 inclusive indices
    mm: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None


@dataclass(frozen=True)
class Prompts:
    boxes: tuple[BoxPrompt, ...]
    modality: str | None = None
    window: Window | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(box.label for box in self.boxes)


@dataclass(frozen=True)
class SidecarRef:
    """Which sidecar a study reads and which entry in it."""

    path: Path
    section: str = ""  # "" (the file is the entry), "series" or "instances"
    uid: str = ""
    shared: bool = False  # the file serves several studies: it must be keyed


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise StudyError(f"no box prompts: write {path} (README, \"Hospital formats\")")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StudyError(f"{path}: not valid JSON ({error})") from error


def is_keyed(document: Any) -> bool:
    return isinstance(document, dict) and any(section in document for section in SECTIONS)


def _entry(document: Any, ref: SidecarRef) -> Any:
    if not is_keyed(document):
        if ref.shared:
            raise StudyError(f"{ref.path} serves several studies in its folder: key its entries by UID, "
                             f'{{"series": {{"<SeriesInstanceUID>": {{...}}}}}} (this study: {ref.section} {ref.uid})')
        return document
    unknown = set(document) - set(SECTIONS) - {"comment"}
    if unknown:
        raise StudyError(f"{ref.path}: unknown key(s) {sorted(unknown)} beside \"series\"/\"instances\"")
    section = document.get(ref.section) if ref.section else None
    if not isinstance(section, dict) or ref.uid not in section:
        raise StudyError(f"{ref.path} has no entry for {ref.section or 'this study'} {ref.uid}".rstrip())
    return section[ref.uid]


def read_prompts(ref: SidecarRef) -> Prompts:
    return parse_entry(_entry(_load_json(ref.path), ref), str(ref.path))


def lists(ref: SidecarRef) -> bool:
    """False only when the sidecar exists, is keyed, and has no entry for this study (discovery skips it)."""
    try:
        document = json.loads(ref.path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True  # missing or broken: loading the study reports it
    if not is_keyed(document) or not ref.section:
        return True
    section = document.get(ref.section)
    return isinstance(section, dict) and ref.uid in section


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StudyError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _window(value: Any, where: str) -> Window:
    keys = set(value) if isinstance(value, dict) else set()
    if not isinstance(value, dict) or keys - {"level", "width", "comment"} or not {"level", "width"} <= keys:
        raise StudyError(f'{where}: "window" must be {{"level": L, "width": W}}, got {value!r}')
    return Window(_number(value["level"], f"{where}: window level"),
                  _number(value["width"], f"{where}: window width"))


def _voxel(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) not in (4, 6):
        raise StudyError(f'{what}: "voxel" must be [x0, y0, x1, y1] or [x0, y0, z0, x1, y1, z1], got {value!r}')
    numbers = [_number(v, f"{what}: voxel index") for v in value]
    if any(not n.is_integer() for n in numbers):
        raise StudyError(f"{what}: voxel indices must be integers, got {value!r}")
    return tuple(int(n) for n in numbers)


def _corners(value: Any, what: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(c, list) and len(c) == 3 for c in value)):
        raise StudyError(f'{what}: "mm" must be two opposite corners [[x, y, z], [x, y, z]], got {value!r}')
    first, second = (tuple(_number(v, f"{what}: mm coordinate") for v in corner) for corner in value)
    return first, second


def _box(value: Any, index: int, where: str) -> BoxPrompt:
    what = f"{where}: box #{index + 1}"
    if not isinstance(value, dict) or set(value) - BOX_KEYS:
        raise StudyError(f'{what} must be an object with "voxel" or "mm" (and optional "label"), got {value!r}')
    if ("voxel" in value) == ("mm" in value):
        raise StudyError(f'{what}: give exactly one of "voxel" and "mm"')
    label = value.get("label", f"box {index + 1}")
    if not isinstance(label, str) or not label.strip():
        raise StudyError(f"{what}: label must be a non-empty string, got {label!r}")
    what = f"{what} ({label})"
    if "voxel" in value:
        return BoxPrompt(label.strip(), voxel=_voxel(value["voxel"], what))
    return BoxPrompt(label.strip(), mm=_corners(value["mm"], what))


def parse_entry(entry: Any, where: str) -> Prompts:
    if not isinstance(entry, dict):
        raise StudyError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise StudyError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(ENTRY_KEYS)}")
    boxes = entry.get("boxes")
    if not isinstance(boxes, list) or not boxes:
        raise StudyError(f'{where}: "boxes" must be a non-empty list of box prompts')
    modality = entry.get("modality")
    if modality is not None and (not isinstance(modality, str) or not modality.strip()):
        raise StudyError(f'{where}: "modality" must be a string, got {modality!r}')
    window = _window(entry["window"], where) if "window" in entry else None
    return Prompts(tuple(_box(box, i, where) for i, box in enumerate(boxes)), modality, window)
