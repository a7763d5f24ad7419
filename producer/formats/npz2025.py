"""The CVPR 2025 interactive challenge's npz, read without executing pickle.

Its evaluation script writes each step's input with `np.savez_compressed`: `imgs` (D, H, W) uint8, `spacing`,
`boxes` (a list, per class, of dicts {z_min, z_max, z_mid, z_mid_x_min, z_mid_y_min, z_mid_x_max, z_mid_y_max}),
`clicks` (per class {"fg": [...], "bg": [...]}, each click a 3-element coordinate), `clicks_order` (per class,
"fg"/"bg" in order) and `prev_pred` (the previous prediction). numpy stores the lists of dicts as object arrays,
i.e. as pickles. `np.load(allow_pickle=True)` would execute whatever a pickle names, so these members are read by
`RestrictedUnpickler`: it admits the plain values pickle builds by itself (dict, list, tuple, str, int, float,
bool, None) and, by name, only numpy's array and scalar reconstructors; anything else is refused by name before it
is looked up, let alone called. Members without objects are read with allow_pickle=False as everywhere else.

A click is stored as the script computes it: the array index (z, y, x) into the volume (its text says [x, y, z];
what it stores is the index). `Click.zyx` keeps that order.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from producer.formats.npz import check_size_before_loading
from worker.contract.prompts import Box, LabelPrompt, Prompts
from worker.contract.prompts import Click as PromptClick
from worker.contract.settings import max_voxels
from worker.contract.study import Study, StudyError

BOX_KEYS = ("z_min", "z_max", "z_mid", "z_mid_x_min", "z_mid_y_min", "z_mid_x_max", "z_mid_y_max")
CLICK_KINDS = ("fg", "bg")
OBJECT_MEMBERS = ("boxes", "clicks", "clicks_order")
MAX_PICKLE_BYTES = 16 << 20  # boxes and clicks of a case are a few kB; a bigger pickle is refused unread

# The only globals a pickle of these members may name: numpy's array and scalar reconstructors (numpy 1.x spells
# the module numpy.core, numpy 2 numpy._core; files of either are read).
ALLOWED_GLOBALS = frozenset(
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
) | {("numpy", "ndarray"), ("numpy", "dtype")}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain values and numpy arrays/scalars only; any other global is refused by name."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: not a value this format holds")
        return super().find_class(module, name)


def restricted_loads(data: bytes) -> Any:
    return RestrictedUnpickler(io.BytesIO(data)).load()


@dataclass(frozen=True)
class Box2025:
    """One class's box prompt: its z range and its 2D box on slice z_mid (inclusive pixels)."""

    z_min: int
    z_max: int
    z_mid: int
    x_min: int
    y_min: int
    x_max: int
    y_max: int

    def as_dict(self) -> dict[str, int]:
        """The challenge's dict (what its script writes)."""
        values = (self.z_min, self.z_max, self.z_mid, self.x_min, self.y_min, self.x_max, self.y_max)
        return dict(zip(BOX_KEYS, (int(v) for v in values)))

    def as_3d(self) -> list[int]:
        """[x_min, y_min, z_min, x_max, y_max, z_max]: the 2024 layout the engine's box strategies take."""
        return [self.x_min, self.y_min, self.z_min, self.x_max, self.y_max, self.z_max]


@dataclass(frozen=True)
class Click:
    zyx: tuple[int, int, int]  # the array index into the (D, H, W) volume, as the script stores it
    positive: bool  # a foreground ("fg") click


@dataclass(frozen=True)
class Case2025:
    imgs: np.ndarray  # (D, H, W)
    spacing: tuple[float, ...] | None
    boxes: list[Box2025 | None] | None  # per class; None: the case has no boxes (clicks only)
    clicks: list[list[Click]]  # per class, in the order they were given (from clicks_order)
    prev_pred: np.ndarray | None

    @property
    def classes(self) -> int:
        return max(len(self.boxes or ()), len(self.clicks))

    @property
    def has_clicks(self) -> bool:
        return any(self.clicks)


def _member(archive: zipfile.ZipFile, key: str) -> np.ndarray:
    """One member as an array: plain arrays without pickle, object arrays with the restricted unpickler."""
    with archive.open(f"{key}.npy") as handle:
        major, _ = npy_format.read_magic(handle)
        header = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
        shape, fortran, dtype = header(handle)
        if not dtype.hasobject:
            handle.close()
            with archive.open(f"{key}.npy") as again:
                return npy_format.read_array(again, allow_pickle=False)
        if key not in OBJECT_MEMBERS:
            raise StudyError(f"member {key!r} holds Python objects; only {list(OBJECT_MEMBERS)} may")
        data = handle.read(MAX_PICKLE_BYTES + 1)
    if len(data) > MAX_PICKLE_BYTES:
        raise StudyError(f"member {key!r}: a pickle above {MAX_PICKLE_BYTES} bytes is not a box or click list")
    try:
        value = restricted_loads(data)
    except pickle.UnpicklingError as error:
        raise StudyError(f"member {key!r}: {error}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as error:
        raise StudyError(f"member {key!r}: unreadable pickle ({type(error).__name__}: {error})") from None
    if not isinstance(value, np.ndarray) or value.shape != tuple(shape):
        raise StudyError(f"member {key!r}: expected an array of shape {tuple(shape)}, got {type(value).__name__}")
    return value


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise StudyError(f"{what}: expected an integer, got {value!r}")
    return int(value)


def _boxes(raw: np.ndarray, depth: int) -> list[Box2025 | None]:
    if not raw.dtype.hasobject:
        raise StudyError(f"boxes: expected the list of per-class dicts, got a {raw.dtype} array of shape {raw.shape}")
    boxes: list[Box2025 | None] = []
    for k, entry in enumerate(raw.ravel().tolist()):
        if entry is None:
            boxes.append(None)
            continue
        if not isinstance(entry, dict) or set(entry) != set(BOX_KEYS):
            raise StudyError(f"boxes[{k}]: expected a dict with keys {list(BOX_KEYS)}, got {entry!r:.200}")
        box = Box2025(*(_int(entry[key], f"boxes[{k}].{key}") for key in BOX_KEYS))
        if not (0 <= box.z_min <= box.z_mid <= box.z_max < depth) or box.x_min > box.x_max or box.y_min > box.y_max:
            raise StudyError(f"boxes[{k}]: inconsistent box {entry} for a volume of {depth} slices")
        boxes.append(box)
    return boxes


def _coordinate(value: Any, what: str) -> tuple[int, int, int]:
    items = value.tolist() if isinstance(value, np.ndarray) else value
    if not isinstance(items, list | tuple) or len(items) != 3:
        raise StudyError(f"{what}: expected a 3-element coordinate, got {value!r:.200}")
    z, y, x = (_int(v, what) for v in items)
    return z, y, x


def _order(raw: np.ndarray | None, classes: int) -> list[list[str]]:
    if raw is None:
        return [[] for _ in range(classes)]
    rows = raw.tolist()
    if not isinstance(rows, list) or len(rows) != classes:
        raise StudyError(f"clicks_order: expected one list per class ({classes}), got {rows!r:.200}")
    order = []
    for k, row in enumerate(rows):
        if not isinstance(row, list) or any(kind not in CLICK_KINDS for kind in row):
            raise StudyError(f"clicks_order[{k}]: expected a list of 'fg'/'bg', got {row!r:.200}")
        order.append(list(row))
    return order


def _clicks(raw: np.ndarray | None, order_raw: np.ndarray | None, shape: tuple[int, ...]) -> list[list[Click]]:
    """Per class, its clicks in the order given: clicks_order says which list each next click comes from."""
    if raw is None:
        if order_raw is not None:
            raise StudyError("clicks_order without clicks")
        return []
    entries = raw.ravel().tolist()
    order = _order(order_raw, len(entries))
    per_class = []
    for k, (entry, kinds) in enumerate(zip(entries, order)):
        if not isinstance(entry, dict) or not set(entry) <= set(CLICK_KINDS):
            raise StudyError(f"clicks[{k}]: expected a dict with 'fg' and 'bg' lists, got {entry!r:.200}")
        points = {kind: list(entry.get(kind, [])) for kind in CLICK_KINDS}
        if [kinds.count(kind) for kind in CLICK_KINDS] != [len(points[kind]) for kind in CLICK_KINDS]:
            raise StudyError(f"clicks[{k}]: clicks_order {kinds} does not match its fg/bg click counts")
        taken = {kind: iter(points[kind]) for kind in CLICK_KINDS}
        clicks = []
        for kind in kinds:
            zyx = _coordinate(next(taken[kind]), f"clicks[{k}].{kind}")
            if not all(0 <= c < n for c, n in zip(zyx, shape)):
                raise StudyError(f"clicks[{k}]: click {list(zyx)} (z, y, x) lies outside the volume {shape}")
            clicks.append(Click(zyx, kind == "fg"))
        per_class.append(clicks)
    return per_class


def is_2025_npz(path: Path) -> bool:
    """An npz of the 2025 layout: `imgs` beside pickled `boxes`, or `clicks` (a clicks-only case)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "imgs.npy" not in names:
                return False
            if "clicks.npy" in names:
                return True
            if "boxes.npy" not in names:
                return False
            with archive.open("boxes.npy") as handle:
                major, _ = npy_format.read_magic(handle)
                header = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
                return bool(header(handle)[2].hasobject)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


def read_2025_npz(path: Path) -> Case2025:
    """Read and check one 2025-format npz; StudyError naming the file for anything it refuses."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name.removesuffix(".npy") for name in archive.namelist()}
            if "imgs" not in members:
                raise StudyError(f"lacks 'imgs' (has {sorted(members)})")
            arrays = {key: _member(archive, key) for key in sorted(members)}
    except StudyError as error:
        raise StudyError(f"{path.name}: {error}") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as error:
        raise StudyError(f"{path.name}: corrupt or truncated npz ({error})") from None
    imgs = arrays["imgs"]
    if imgs.ndim != 3:
        raise StudyError(f"{path.name}: a 2025 case is a (D, H, W) volume, got imgs of shape {imgs.shape}")
    try:
        boxes = _boxes(arrays["boxes"], imgs.shape[0]) if "boxes" in arrays else None
        clicks = _clicks(arrays.get("clicks"), arrays.get("clicks_order"), imgs.shape)
    except StudyError as error:
        raise StudyError(f"{path.name}: {error}") from None
    if boxes is None and not clicks:
        raise StudyError(f"{path.name}: neither boxes nor clicks: nothing says what to segment")
    if boxes is not None and clicks and len(clicks) != len(boxes):
        raise StudyError(f"{path.name}: {len(boxes)} boxes but clicks for {len(clicks)} classes")
    spacing = tuple(float(v) for v in np.asarray(arrays["spacing"]).ravel()) if "spacing" in arrays else None
    prev = arrays.get("prev_pred")
    if prev is not None and prev.shape != imgs.shape:
        raise StudyError(f"{path.name}: prev_pred shape {prev.shape} differs from imgs {imgs.shape}")
    return Case2025(imgs, spacing, boxes, clicks, prev)


def modality_of_2025(name: str) -> str:
    """`CT_AbdTumor_001` -> `CT`: the 2025 cases' names start with their modality."""
    token = name.split("_", 1)[0]
    if not token or token == name:
        raise StudyError(f"cannot read a modality from {name!r}: expected <Modality>_<dataset>_<id>.npz")
    return token


def study_from_2025(path: Path) -> Study:
    """A 2025 case as a study: class k -> label k + 1 (`segs` as for every npz), its box (the z range and its z_mid
    box) and its clicks in the order given (`clicks_order`), each the voxel (x, y, z) of the stored (z, y, x) index.
    The engine runs the box and then every click (worker.engine.labelwise), so `prev_pred` is not needed: the
    same run of the earlier steps gives it. A class with neither a box nor a foreground click is refused by the
    engine's validation, naming it."""
    path = Path(path)
    try:
        check_size_before_loading(path, max_voxels())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as error:
        if isinstance(error, StudyError):
            raise
        raise StudyError(f"{path.name}: corrupt or truncated npz ({error})") from None
    case = read_2025_npz(path)
    if not case.has_clicks and case.boxes is not None and all(box is not None for box in case.boxes):
        boxes = np.array([box.as_3d() for box in case.boxes if box is not None], dtype=np.int64).reshape(-1, 6)
        return Study(path.stem, modality_of_2025(path.stem), case.imgs, boxes, case.spacing)
    labels = []
    for k in range(case.classes):
        box = case.boxes[k] if case.boxes is not None and k < len(case.boxes) else None
        clicks = case.clicks[k] if k < len(case.clicks) else []
        labels.append(
            LabelPrompt(
                Box(tuple(int(v) for v in box.as_3d())) if box is not None else None,
                tuple(PromptClick((c.zyx[2], c.zyx[1], c.zyx[0]), c.positive) for c in clicks),
            )
        )
    return Study(path.stem, modality_of_2025(path.stem), case.imgs, Prompts(tuple(labels), 3, "<i8"), case.spacing)
