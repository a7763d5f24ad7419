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
      "boxes": [                               required, at least one; entry k becomes label / segment k+1
        {"label": "liver", "voxel": [x0, y0, z0, x1, y1, z1]},
        {"label": "lesion", "mm": [[x, y, z], [x, y, z]]},
        {"label": "kidney", "voxel": [...], "clicks": [{"voxel": [x, y, z]}, {"voxel": [x, y, z], "positive": false}]},
        {"label": "vessel", "clicks": [{"mm": [x, y, z]}]}
      ]
    }
"clicks" (optional) refine the label after its box, in the order given: "positive" true (the default) marks a voxel
of the structure, false one outside it; each click is "voxel" [x, y(, z)] or "mm" [x, y, z]. An entry may have
clicks and no box (with at least one positive click): the label starts from its clicks.
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
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, field_validator, model_validator

from producer.formats.intensity import Window
from worker.contract.study import StudyError

DICOM_SIDECAR = "prompts.json"
NIFTI_SIDECAR_SUFFIX = ".prompts.json"
SECTIONS = ("series", "instances")


@dataclass(frozen=True)
class ClickEntryPrompt:
    positive: bool = True
    voxel: tuple[int, ...] | None = None  # 2 or 3 indices
    mm: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class BoxPrompt:
    """One label's prompts: its box (voxel or mm; None: clicks alone) and its clicks, in order."""

    label: str
    voxel: tuple[int, ...] | None = None  # 4 or 6 inclusive indices
    mm: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    clicks: tuple[ClickEntryPrompt, ...] = ()

    @property
    def has_box(self) -> bool:
        return self.voxel is not None or self.mm is not None


@dataclass(frozen=True)
class SidecarPrompts:
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


# --- the entry's schema (pydantic): what each key may hold, and the message when it does not ----------------------


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _indices(value: Any, lengths: tuple[int, ...], shape_message: str) -> tuple[int, ...]:
    """Integer voxel indices, `lengths` of them; ValueError with `shape_message` (and the value) otherwise."""
    if not isinstance(value, list) or len(value) not in lengths:
        raise ValueError(f"{shape_message}, got {value!r}")
    numbers = [_finite(v, "voxel index") for v in value]
    if any(not n.is_integer() for n in numbers):
        raise ValueError(f"voxel indices must be integers, got {value!r}")
    return tuple(int(n) for n in numbers)


class WindowEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    level: Annotated[float, BeforeValidator(lambda v: _finite(v, "window level"))]
    width: Annotated[float, BeforeValidator(lambda v: _finite(v, "window width"))]
    comment: Any = None


class ClickEntry(BaseModel):
    """One click: exactly one of `voxel` ([x, y] or [x, y, z] indices) and `mm` ([x, y, z] world)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    voxel: tuple[int, ...] | None = None
    mm: tuple[float, float, float] | None = None
    positive: bool = True
    comment: Any = None

    @model_validator(mode="before")
    @classmethod
    def _one_point(cls, value: Any) -> Any:
        if not isinstance(value, dict) or set(value) - set(cls.model_fields):
            raise ValueError(f'a click must be an object with "voxel" or "mm" (and optional "positive"), got {value!r}')
        if ("voxel" in value) == ("mm" in value):
            raise ValueError('a click gives exactly one of "voxel" and "mm"')
        if not isinstance(value.get("positive", True), bool):
            raise ValueError(f'"positive" must be true or false, got {value.get("positive")!r}')
        return value

    @field_validator("voxel", mode="before")
    @classmethod
    def _voxel(cls, value: Any) -> Any:
        return _indices(value, (2, 3), 'a click\'s "voxel" must be [x, y] or [x, y, z]')

    @field_validator("mm", mode="before")
    @classmethod
    def _mm(cls, value: Any) -> Any:
        if not isinstance(value, list) or len(value) != 3:
            raise ValueError(f'a click\'s "mm" must be [x, y, z], got {value!r}')
        return tuple(_finite(v, "mm coordinate") for v in value)

    def prompt(self) -> ClickEntryPrompt:
        return ClickEntryPrompt(self.positive, self.voxel, self.mm)


class BoxEntry(BaseModel):
    """One label's prompts: at most one of `voxel` (inclusive indices) and `mm` (two opposite world corners), and
    `clicks`; a label without a box needs clicks, the first positive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str | None = None
    voxel: tuple[int, ...] | None = None
    mm: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    clicks: list[ClickEntry] = []
    comment: Any = None

    @model_validator(mode="before")
    @classmethod
    def _one_box(cls, value: Any) -> Any:
        if not isinstance(value, dict) or set(value) - set(cls.model_fields):
            raise ValueError(
                f'must be an object with "voxel" or "mm" and/or "clicks" (and optional "label"), got {value!r}'
            )
        if "voxel" in value and "mm" in value:
            raise ValueError('give exactly one of "voxel" and "mm"')
        if "voxel" not in value and "mm" not in value:
            clicks = value.get("clicks")
            if not isinstance(clicks, list) or not clicks:
                raise ValueError('give exactly one of "voxel" and "mm", or "clicks"')
        return value

    @field_validator("label", mode="before")
    @classmethod
    def _label(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"label must be a non-empty string, got {value!r}")
        return value.strip() if isinstance(value, str) else value

    @field_validator("voxel", mode="before")
    @classmethod
    def _voxel(cls, value: Any) -> Any:
        return _indices(value, (4, 6), '"voxel" must be [x0, y0, x1, y1] or [x0, y0, z0, x1, y1, z1]')

    @field_validator("mm", mode="before")
    @classmethod
    def _mm(cls, value: Any) -> Any:
        if not (
            isinstance(value, list) and len(value) == 2 and all(isinstance(c, list) and len(c) == 3 for c in value)
        ):
            raise ValueError(f'"mm" must be two opposite corners [[x, y, z], [x, y, z]], got {value!r}')
        return tuple(tuple(_finite(v, "mm coordinate") for v in corner) for corner in value)

    def prompt(self, index: int) -> BoxPrompt:
        clicks = tuple(click.prompt() for click in self.clicks)
        return BoxPrompt(self.label or f"box {index + 1}", voxel=self.voxel, mm=self.mm, clicks=clicks)


class SidecarEntry(BaseModel):
    """One study's entry: its boxes (at least one), and optionally its modality and an 8-bit window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    modality: str | None = None
    window: WindowEntry | None = None
    boxes: list[BoxEntry]
    comment: Any = None

    @field_validator("boxes", mode="before")
    @classmethod
    def _some_boxes(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise ValueError('"boxes" must be a non-empty list of box prompts')
        return value

    @field_validator("modality", mode="before")
    @classmethod
    def _modality(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f'"modality" must be a string, got {value!r}')
        return value

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, value: Any) -> Any:
        keys = set(value) if isinstance(value, dict) else set()
        if not isinstance(value, dict) or keys - {"level", "width", "comment"} or not {"level", "width"} <= keys:
            raise ValueError(f'"window" must be {{"level": L, "width": W}}, got {value!r}')
        return value

    def prompts(self) -> SidecarPrompts:
        window = Window(self.window.level, self.window.width) if self.window is not None else None
        return SidecarPrompts(tuple(box.prompt(i) for i, box in enumerate(self.boxes)), self.modality, window)


def _where(error: dict[str, Any], entry: dict[str, Any], where: str) -> str:
    """`<file>` or `<file>: box #2 (lesion)` for an error at `error["loc"]`."""
    loc = error["loc"]
    if len(loc) < 2 or loc[0] != "boxes" or not isinstance(loc[1], int):
        return where
    what = f"{where}: box #{loc[1] + 1}"
    box = entry["boxes"][loc[1]]
    label = box.get("label", f"box {loc[1] + 1}") if isinstance(box, dict) else None
    if len(loc) > 2 and loc[2] in ("voxel", "mm") and isinstance(label, str) and label.strip():
        what += f" ({label.strip()})"
    return what


def _study_error(error: ValidationError, entry: dict[str, Any], where: str) -> StudyError:
    problems = error.errors()
    unknown = sorted(str(p["loc"][0]) for p in problems if p["type"] == "extra_forbidden" and len(p["loc"]) == 1)
    if unknown:
        return StudyError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(SidecarEntry.model_fields)}")
    first = problems[0]
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing" and first["loc"] == ("boxes",):
        message = '"boxes" must be a non-empty list of box prompts'
    separator = " " if message.startswith("must be an object") else ": "
    return StudyError(f"{_where(first, entry, where)}{separator}{message}")


def parse_entry(entry: Any, where: str) -> SidecarPrompts:
    if not isinstance(entry, dict):
        raise StudyError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    try:
        return SidecarEntry.model_validate(entry).prompts()
    except ValidationError as error:
        raise _study_error(error, entry, where) from None


# --- the file: one entry, or entries keyed by series / instance UID ---------------------------------------------


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise StudyError(f'no box prompts: write {path} (docs/user-guide/inputs.md, "The prompts sidecar")')
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StudyError(f"{path}: not valid JSON ({error})") from error


def is_keyed(document: Any) -> bool:
    return isinstance(document, dict) and any(section in document for section in SECTIONS)


def _entry(document: Any, ref: SidecarRef) -> Any:
    if not is_keyed(document):
        if ref.shared:
            raise StudyError(
                f"{ref.path} serves several studies in its folder: key its entries by UID, "
                f'{{"series": {{"<SeriesInstanceUID>": {{...}}}}}} (this study: {ref.section} {ref.uid})'
            )
        return document
    unknown = set(document) - set(SECTIONS) - {"comment"}
    if unknown:
        raise StudyError(f'{ref.path}: unknown key(s) {sorted(unknown)} beside "series"/"instances"')
    section = document.get(ref.section) if ref.section else None
    if not isinstance(section, dict) or ref.uid not in section:
        raise StudyError(f"{ref.path} has no entry for {ref.section or 'this study'} {ref.uid}".rstrip())
    return section[ref.uid]


def read_prompts(ref: SidecarRef) -> SidecarPrompts:
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
