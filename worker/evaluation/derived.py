"""Evaluation cases derived from cases with ground truth, so a verdict is checked on more than it was tuned on.

A precision gate or an overlap rule chosen on the eight dev cases is a hypothesis; these cases test it on data
those choices never saw: other slices of the dev volumes as 2D cases, sub-volumes and crops as 3D cases, and
wide / tall crops of the 2D cases. Everything is deterministic (no randomness), written in the challenge layout
(`imgs/` with imgs, boxes[, spacing]; `gts/` with gts[, spacing]), so `producer submit` and `evaluate` read it.

- 2D from a 3D volume: axial slices at 1/5 .. 4/5 of the labelled z-range (not its middle slice, where the 3D
  propagation starts), grey repeated to (H, W, 3).
- 3D sub-volumes: z-windows (depth min(D // 2, 24), at least 8) at the start, centre and end of the labelled
  z-range, and the centre window cropped in-plane to its central 3/4.
- 2D crops of a 2D case: the top and bottom 3/4 (wide images) and the left and right 2/3 (tall ones).
Per derived case, labels keep only structures with at least MIN_PIXELS_2D pixels (MIN_VOXELS_3D voxels) inside,
renumbered 1..n in their original order; boxes are their tight inclusive boxes, as in the dev cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.phantoms import tight_boxes
from models.quantize_accuracy import spread
from worker.contract.arrays import write_npz
from worker.contract.prompts import Prompts
from worker.contract.study import is_3d

MIN_PIXELS_2D = 20
MIN_VOXELS_3D = 50
SLICE_FRACTIONS = (0.2, 0.4, 0.6, 0.8)


@dataclass(frozen=True)
class DerivedCase:
    name: str  # e.g. 2DBox_CT_tssm-z07 (no suffix); the modality stays the second token
    imgs: np.ndarray  # uint8 (H, W, 3) or (D, H, W)
    boxes: np.ndarray  # int64 (N, 4) or (N, 6)
    gts: np.ndarray  # uint16 labels 1..N
    spacing: np.ndarray | None  # (x, y, z) as stored in the source, 3D only

    @property
    def is_3d(self) -> bool:
        """As the study made of it is (worker.contract.study.is_3d, the one decision)."""
        return is_3d(self.imgs, Prompts.from_boxes(self.boxes))


def keep_labels(gts: np.ndarray, min_size: int) -> np.ndarray:
    """Labels with at least min_size voxels, renumbered 1..n in their original order (uint16)."""
    counts = np.bincount(gts.ravel().astype(np.int64))
    kept = [label for label in range(1, counts.size) if counts[label] >= min_size]
    lookup = np.zeros(counts.size, dtype=np.uint16)
    lookup[kept] = np.arange(1, len(kept) + 1, dtype=np.uint16)
    return lookup[gts]


def _case(name: str, imgs: np.ndarray, gts: np.ndarray, spacing, min_size: int) -> DerivedCase | None:
    labels = keep_labels(gts, min_size)
    if not labels.any():
        return None
    return DerivedCase(
        name,
        np.ascontiguousarray(imgs),
        tight_boxes(labels),
        labels,
        None if spacing is None else np.asarray(spacing, dtype=np.float64),
    )


def _z_range(gts: np.ndarray) -> tuple[int, int]:
    z = np.flatnonzero(gts.reshape(gts.shape[0], -1).any(axis=1))
    return int(z[0]), int(z[-1])


def from_volume(stem: str, imgs: np.ndarray, gts: np.ndarray, spacing) -> list[DerivedCase]:
    """2D slices and 3D sub-volumes of one 3D case (stem like `CT_tssm`)."""
    cases: list[DerivedCase | None] = []
    lo, hi = _z_range(gts)
    for fraction in SLICE_FRACTIONS:
        z = int(round(lo + fraction * (hi - lo)))
        grey = imgs[z]
        cases.append(
            _case(f"2DBox_{stem}-z{z:03d}", np.repeat(grey[:, :, None], 3, axis=-1), gts[z], None, MIN_PIXELS_2D)
        )
    depth = min(max(imgs.shape[0] // 2, 8), 24, imgs.shape[0])
    starts = sorted({lo, max(0, (lo + hi + 1 - depth) // 2), max(0, hi + 1 - depth)})
    starts = [min(start, imgs.shape[0] - depth) for start in starts]
    for k, start in enumerate(dict.fromkeys(starts)):
        window = slice(start, start + depth)
        cases.append(_case(f"3DBox_{stem}-w{k}", imgs[window], gts[window], spacing, MIN_VOXELS_3D))
    centre = slice(starts[len(starts) // 2], starts[len(starts) // 2] + depth)
    h, w = imgs.shape[1:]
    rows, cols = slice(h // 8, h - h // 8), slice(w // 8, w - w // 8)
    cases.append(_case(f"3DBox_{stem}-crop", imgs[centre, rows, cols], gts[centre, rows, cols], spacing, MIN_VOXELS_3D))
    return [case for case in cases if case is not None]


def from_image(stem: str, imgs: np.ndarray, gts: np.ndarray) -> list[DerivedCase]:
    """Wide and tall crops of one 2D case."""
    h, w = gts.shape
    crops = {
        "top": (slice(0, h - h // 4), slice(0, w)),
        "bottom": (slice(h // 4, h), slice(0, w)),
        "left": (slice(0, h), slice(0, w - w // 3)),
        "right": (slice(0, h), slice(w // 3, w)),
    }
    cases = [
        _case(f"2DBox_{stem}-{name}", imgs[rows, cols], gts[rows, cols], None, MIN_PIXELS_2D)
        for name, (rows, cols) in crops.items()
    ]
    return [case for case in cases if case is not None]


def derive_cases(cases_dir: Path, names: list[str] | None = None) -> list[DerivedCase]:
    """Derived cases of every case in cases_dir/imgs with ground truth in cases_dir/gts (or of `names`)."""
    cases_dir = Path(cases_dir)
    derived: list[DerivedCase] = []
    for image_path in sorted((cases_dir / "imgs").glob("*.npz")):
        gt_path = cases_dir / "gts" / image_path.name
        if not gt_path.is_file() or (names is not None and image_path.stem not in names):
            continue
        kind, stem = image_path.stem.split("_", 1)
        with np.load(image_path, allow_pickle=False) as image, np.load(gt_path, allow_pickle=False) as gt:
            imgs, gts = image["imgs"], gt["gts"]
            spacing = gt["spacing"] if "spacing" in gt.files else image.get("spacing")
        if kind == "3DBox":
            derived += from_volume(stem, imgs, gts, spacing)
        elif kind == "2DBox":
            derived += from_image(stem, imgs, gts)
    return derived


def free_runs(depth: int, avoid: set[int]) -> list[tuple[int, int]]:
    """Maximal runs [start, stop) of 0 .. depth - 1 holding no index in `avoid`."""
    runs, start = [], None
    for z in range(depth + 1):
        free = z < depth and z not in avoid
        if free and start is None:
            start = z
        elif not free and start is not None:
            runs.append((start, z))
            start = None
    return runs


def _window(name: str, imgs: np.ndarray, gts: np.ndarray, spacing, *region: slice) -> DerivedCase | None:
    return _case(name, imgs[region], gts[region], spacing, MIN_VOXELS_3D)


def cases_outside(cases_dir: Path, avoid: dict[str, set[int]], per_kind: int = 6, depth: int = 8) -> list[DerivedCase]:
    """More evaluation cases from the 3D cases of cases_dir, none holding a slice listed in `avoid` (per source
    file stem, e.g. "3DBox_MR_brats01646" -> the z indices a model was calibrated or chosen on): per volume up to
    `per_kind` 2D slices (labelled, evenly spread over the free ones; named as derive_cases names its slices) and
    up to `per_kind` 3D sub-volumes of `depth` slices inside the free runs (starts `depth // 2` apart, evenly
    spread), then their central in-plane 3/4 crops while fewer than `per_kind`. Deterministic."""
    cases_dir = Path(cases_dir)
    out: list[DerivedCase] = []
    for image_path in sorted((cases_dir / "imgs").glob("3DBox_*.npz")):
        gt_path = cases_dir / "gts" / image_path.name
        if not gt_path.is_file():
            continue
        stem = image_path.stem.split("_", 1)[1]
        with np.load(image_path, allow_pickle=False) as image, np.load(gt_path, allow_pickle=False) as gt:
            imgs, gts = image["imgs"], gt["gts"]
            spacing = gt["spacing"] if "spacing" in gt.files else image.get("spacing")
        if imgs.ndim != 3:
            continue
        blocked = avoid.get(image_path.stem, set())
        labelled = gts.reshape(gts.shape[0], -1).any(axis=1)
        planes = spread(per_kind, [z for z in range(gts.shape[0]) if labelled[z] and z not in blocked])
        flat = [
            _case(f"2DBox_{stem}-z{z:03d}", np.repeat(imgs[z][:, :, None], 3, axis=-1), gts[z], None, MIN_PIXELS_2D)
            for z in planes
        ]
        starts = [
            begin
            for first, stop in free_runs(gts.shape[0], blocked)
            for begin in range(first, stop - depth + 1, max(depth // 2, 1))
            if labelled[begin : begin + depth].any()
        ]
        windows = [
            (begin, case)
            for begin in starts
            if (case := _window(f"3DBox_{stem}-s{begin:03d}d{depth}", imgs, gts, spacing, slice(begin, begin + depth)))
        ]
        windows = [windows[i] for i in spread(per_kind, list(range(len(windows))))]
        h, w = imgs.shape[1:]
        crop = (slice(h // 8, h - h // 8), slice(w // 8, w - w // 8))
        crops = [
            _window(f"{case.name}-crop", imgs, gts, spacing, slice(begin, begin + depth), *crop)
            for begin, case in windows
        ]
        volumes = [case for _, case in windows]
        volumes += [case for case in crops if case is not None][: max(per_kind - len(volumes), 0)]
        out += [case for case in flat if case is not None] + volumes
    return out


def boxes_in_window(boxes: np.ndarray, start: int, stop: int) -> np.ndarray:
    """(N, 6) box prompts of a volume -> those of its slices start .. stop - 1: the boxes that reach the window,
    their z-range clipped to it and counted from its first slice (for a sub-volume without ground truth)."""
    lo = np.maximum(boxes[:, 2], start) - start
    hi = np.minimum(boxes[:, 5], stop - 1) - start
    keep = lo <= hi
    window = boxes[keep].copy()
    window[:, 2], window[:, 5] = lo[keep], hi[keep]
    return window


def write_cases(cases: list[DerivedCase], out_dir: Path) -> Path:
    """Write cases in the challenge layout (out_dir/imgs, out_dir/gts); returns out_dir."""
    out_dir = Path(out_dir)
    (out_dir / "imgs").mkdir(parents=True, exist_ok=True)
    (out_dir / "gts").mkdir(parents=True, exist_ok=True)
    for case in cases:
        image = {"imgs": case.imgs, "boxes": case.boxes}
        gt = {"gts": case.gts}
        if case.spacing is not None:
            image["spacing"] = gt["spacing"] = case.spacing
        write_npz(out_dir / "imgs" / f"{case.name}.npz", image)
        write_npz(out_dir / "gts" / f"{case.name}.npz", gt)
    return out_dir
