"""The challenge's official metrics (REFERENCE.md, "The official metrics"); the `evaluate` command is
producer.evaluate.

Per case:
- DSC: mean over the labels present in the ground truth (0 excluded) of 2|A∩B| / (|A| + |B|).
- NSD: surface Dice at a 2 mm tolerance (2 px in 2D), mean over the same labels, computed only when the
  case's DSC > 0.2, else 0. In 3D the stored spacing is passed as stored, as the challenge did (it is in
  x, y, z order while the array is z, y, x). A 2D case is scored as the official script does: as a volume of
  one slice (H, W, 1) with spacing (1, 1, 1), so its flat top and bottom faces count as surface too. (Scored as
  a true 2D contour, 2DBox_CT_amos000475 would get NSD 0.71 instead of the 0.93 the official evaluation gives.)
Leaderboard: the mean of the per-modality means (modality = second underscore token of the file name).
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from surface_distance import compute_surface_dice_at_tolerance, compute_surface_distances

NSD_TOLERANCE = 2.0
NSD_MIN_DSC = 0.2  # NSD is only computed for cases whose DSC is above this


@dataclass(frozen=True)
class CaseScore:
    """One case's scores; `missing` marks a case whose segmentation file was absent (scored 0 / 0)."""

    name: str
    modality: str
    dsc: float
    nsd: float
    missing: bool = False


def modality_of(name: str) -> str:
    """`3DBox_CT_tssm.npz` -> `CT` (the second underscore-separated token)."""
    tokens = Path(name).name.removesuffix(".npz").split("_")
    return tokens[1] if len(tokens) >= 2 else "unknown"


def _gt_labels(gts: np.ndarray) -> np.ndarray:
    labels = np.unique(gts)
    return labels[labels != 0]


def _dice(gt: np.ndarray, seg: np.ndarray) -> float:
    # gt is never empty here (its label comes from the ground truth), so the denominator is > 0.
    return 2.0 * np.count_nonzero(gt & seg) / (np.count_nonzero(gt) + np.count_nonzero(seg))


def _surface_dice(gt: np.ndarray, seg: np.ndarray, spacing: tuple[float, ...]) -> float:
    # An empty prediction scores 0. surface-distance would give the same, but its empty-mask branch uses
    # `np.Inf`, which numpy 2 removed, so that case must never reach it.
    if not seg.any():
        return 0.0
    with warnings.catch_warnings():
        # surface-distance imports from scipy.ndimage's deprecated sub-namespaces.
        warnings.simplefilter("ignore", DeprecationWarning)
        distances = compute_surface_distances(gt, seg, spacing)
    return float(compute_surface_dice_at_tolerance(distances, NSD_TOLERANCE))


def _check_inputs(gts: np.ndarray, segs: np.ndarray, spacing: tuple | None) -> tuple[float, ...]:
    """Validate shapes and return the spacing to use (ones when None)."""
    if gts.shape != segs.shape:
        raise ValueError(f"segs shape {segs.shape} does not match gts shape {gts.shape}")
    if gts.ndim not in (2, 3):
        raise ValueError(f"expected a 2D (H, W) or 3D (D, H, W) label map, got shape {gts.shape}")
    if spacing is None:
        return (1.0,) * gts.ndim
    spacing = tuple(float(s) for s in np.asarray(spacing).ravel())
    if len(spacing) != gts.ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} entries for a {gts.ndim}D label map")
    return spacing


def _label_masks(gts: np.ndarray, segs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    labels = _gt_labels(gts)
    if labels.size == 0:
        raise ValueError("ground truth has no foreground label")
    return [(gts == label, segs == label) for label in labels]


def dsc_case(gts: np.ndarray, segs: np.ndarray) -> float:
    """The case's DSC alone (the official per-case mean over the ground truth's labels), without NSD."""
    _check_inputs(gts, segs, None)
    return float(np.mean([_dice(gt, seg) for gt, seg in _label_masks(gts, segs)]))


def score_case(gts: np.ndarray, segs: np.ndarray, spacing: tuple | None = None) -> tuple[float, float]:
    """(DSC, NSD) of one case; `spacing` as stored in the case (None: 1 per axis, as for 2D cases)."""
    spacing = _check_inputs(gts, segs, spacing)
    masks = _label_masks(gts, segs)
    dsc = float(np.mean([_dice(gt, seg) for gt, seg in masks]))
    if dsc <= NSD_MIN_DSC:
        return dsc, 0.0
    if gts.ndim == 2:  # the official evaluation's 2D convention, see the module docstring
        masks, spacing = [(gt[..., None], seg[..., None]) for gt, seg in masks], (1.0, 1.0, 1.0)
    nsd = float(np.mean([_surface_dice(gt, seg, spacing) for gt, seg in masks]))
    return dsc, nsd


def load_array(path: Path, key: str) -> np.ndarray:
    """One array of an npz, without pickle; ValueError naming the file when the key is missing."""
    with np.load(path, allow_pickle=False) as data:
        if key not in data.files:
            raise ValueError(f"{path}: no '{key}' array (found {sorted(data.files)})")
        return data[key]


def _load_gt(path: Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Ground truth and, for 3D cases, the stored spacing (None for 2D or when absent)."""
    with np.load(path, allow_pickle=False) as data:
        if "gts" not in data.files:
            raise ValueError(f"{path}: no 'gts' array (found {sorted(data.files)})")
        gts = data["gts"]
        has_spacing = gts.ndim == 3 and "spacing" in data.files
        spacing = tuple(float(s) for s in data["spacing"]) if has_spacing else None
    return gts, spacing


def evaluate_dirs(gts_dir: Path, segs_dir: Path) -> list[CaseScore]:
    """Score every `gts_dir/*.npz` against the same-named file in `segs_dir`.

    A missing segmentation scores 0 / 0 and is flagged `missing`; a shape mismatch raises ValueError
    naming the case.
    """
    scores = []
    for gt_path in sorted(Path(gts_dir).glob("*.npz")):
        name, modality = gt_path.stem, modality_of(gt_path.name)
        seg_path = Path(segs_dir) / gt_path.name
        if not seg_path.is_file():
            scores.append(CaseScore(name, modality, 0.0, 0.0, missing=True))
            continue
        gts, spacing = _load_gt(gt_path)
        try:
            dsc, nsd = score_case(gts, load_array(seg_path, "segs"), spacing)
        except ValueError as err:
            raise ValueError(f"{gt_path.name}: {err}") from err
        scores.append(CaseScore(name, modality, dsc, nsd))
    return scores


def modality_means(scores: list[CaseScore]) -> dict[str, tuple[float, float]]:
    """Mean (DSC, NSD) per modality, in sorted modality order."""
    by_modality: dict[str, list[CaseScore]] = {}
    for score in scores:
        by_modality.setdefault(score.modality, []).append(score)
    return {
        modality: (float(np.mean([s.dsc for s in group])), float(np.mean([s.nsd for s in group])))
        for modality, group in sorted(by_modality.items())
    }


def leaderboard(scores: list[CaseScore]) -> tuple[float, float]:
    """The challenge's average: the mean of the per-modality means (not of the cases)."""
    if not scores:
        raise ValueError("no scores to average")
    means = list(modality_means(scores).values())
    return float(np.mean([m[0] for m in means])), float(np.mean([m[1] for m in means]))


def write_csv(scores: list[CaseScore], path: Path) -> None:
    """One row per case: case, modality, dsc, nsd, missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "modality", "dsc", "nsd", "missing"])
        for s in scores:
            writer.writerow([s.name, s.modality, f"{s.dsc:.6f}", f"{s.nsd:.6f}", int(s.missing)])
