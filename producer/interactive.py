"""The CVPR 2025 interactive protocol, run in-process on cases with ground truth (`producer evaluate --interactive`).

Per case (REFERENCE.md, "Interactive segmentation"; issue 23):
- step 0: the image and, per class of the ground truth, a box as the challenge's dict (z range of the class, its 2D
  box on z_mid, the slice of the median foreground voxel, widened by 0..5 px at 256 scale on each side, from a
  seeded generator); the engine segments with those boxes (the dict's z range and z_mid box as a 3D box);
- steps 1..5: per class, one click at the centre (largest Euclidean distance transform, ties broken by numpy's
  seed 42 as the script does) of the largest connected error component (26-connected in 3D, 8 in 2D): a background
  click where the prediction is on and the truth off, else a foreground click; the engine refines each class's
  mask with its newest click (worker.engine.refine), embeddings kept in the engine's cache between steps;
- per step DSC and NSD (producer.evaluate.score_case, over the ground truth's classes), seconds;
  DSC_AUC / NSD_AUC: the trapezoid over the five click steps (unit spacing, at most 4.0); final DSC / NSD.
A 2D case runs the same protocol on its one slice (the challenge's is 3D only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from producer.formats.npz2025 import Box2025
from worker.contract.study import Study
from worker.engine.engine import Engine
from worker.engine.refine import ClickPrompt, RefineSettings
from worker.evaluation.metrics import modality_of, score_case

CLICK_STEPS = 5
BOX_JITTER = 5  # px at 256 scale, the most a side of a box is widened by
TIME_PER_CLASS = 90.0  # seconds for all six steps, per class (the challenge's limit)
TIE_SEED = 42


def click_auc(values: list[float]) -> float:
    """Trapezoid over the last five steps (the click steps) at unit spacing: at most 4.0."""
    tail = np.asarray(values[-CLICK_STEPS:], dtype=np.float64)
    return float(np.sum((tail[1:] + tail[:-1]) / 2.0))


def error_centre(gt: np.ndarray, pred: np.ndarray) -> ClickPrompt | None:
    """The protocol's click for one class (bool masks, 2D or 3D), or None when the prediction is exact.

    The largest connected error component (full connectivity: 26 in 3D), its voxel farthest from any non-error
    voxel or the volume's edge (the distance transform of the component on its bounding box padded with zeros), one
    of several equally far ones drawn with numpy's seed 42; background where the prediction is on there."""
    error = gt != pred
    if not error.any():
        return None
    labelled, _ = ndimage.label(error, np.ones((3,) * error.ndim, bool))
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    largest = labelled == int(np.argmax(sizes))
    box = ndimage.find_objects(largest.astype(np.uint8))[0]
    crop = np.pad(largest[box], 1)
    distance = ndimage.distance_transform_edt(crop)[(slice(1, -1),) * crop.ndim]
    peaks = np.argwhere(distance == distance.max())
    chosen = peaks[np.random.RandomState(TIE_SEED).choice(len(peaks))]  # as np.random.seed(42); np.random.choice
    index = tuple(int(c + s.start) for c, s in zip(chosen, box))
    zyx = index if len(index) == 3 else (0, *index)
    return ClickPrompt((int(zyx[0]), int(zyx[1]), int(zyx[2])), positive=not bool(pred[index]))


def box_of_class(gt: np.ndarray, rng: np.random.Generator) -> Box2025:
    """The challenge's box dict of one class (bool (D, H, W) mask; a 2D mask is one slice)."""
    volume = gt if gt.ndim == 3 else gt[None]
    z_indices = np.nonzero(volume)[0]
    z_mid = int(z_indices[len(z_indices) // 2])
    rows = np.flatnonzero(volume[z_mid].any(axis=1))
    cols = np.flatnonzero(volume[z_mid].any(axis=0))
    h, w = volume.shape[1:]
    widen = rng.integers(0, BOX_JITTER + 1, size=4) * max(h, w) / 256.0
    x0, y0 = max(0, int(cols[0] - widen[0])), max(0, int(rows[0] - widen[1]))
    x1, y1 = min(w - 1, int(cols[-1] + widen[2])), min(h - 1, int(rows[-1] + widen[3]))
    return Box2025(int(z_indices.min()), int(z_indices.max()), z_mid, x0, y0, x1, y1)


@dataclass(frozen=True)
class InteractiveCase:
    name: str
    imgs: np.ndarray  # uint8 (H, W, 3) or (D, H, W)
    gts: np.ndarray  # labels, (H, W) or (D, H, W)
    spacing: tuple[float, ...] | None  # 3D: as stored (x, y, z)

    @property
    def classes(self) -> np.ndarray:
        values = np.unique(self.gts)
        return values[values != 0]


@dataclass
class InteractiveScore:
    name: str
    dsc: list[float] = field(default_factory=list)  # per step: 0 (boxes), 1..5 (clicks)
    nsd: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    classes: int = 0
    clicks: list[list[ClickPrompt]] = field(default_factory=list)  # per step 1..5: the clicks placed

    @property
    def dsc_auc(self) -> float:
        return click_auc(self.dsc)

    @property
    def nsd_auc(self) -> float:
        return click_auc(self.nsd)

    @property
    def over_time(self) -> bool:
        return sum(self.seconds) > TIME_PER_CLASS * self.classes


def case_study(case: InteractiveCase, seed: int = 0) -> tuple[Study, list[Box2025]]:
    """Step 0's study: class k's box (the challenge's dict) as box k (label k + 1)."""
    rng = np.random.default_rng(seed)
    boxes = [box_of_class(case.gts == value, rng) for value in case.classes]
    if case.gts.ndim == 3:
        prompts = np.array([box.as_3d() for box in boxes], dtype=np.int64)
    else:
        prompts = np.array([[b.x_min, b.y_min, b.x_max, b.y_max] for b in boxes], dtype=np.int64)
    return Study(case.name, modality_of(case.name), case.imgs, prompts, case.spacing), boxes


def box_step(engine: Engine, case: InteractiveCase, seed: int = 0) -> tuple[np.ndarray, float]:
    """Step 0: the engine's labels from the boxes (engine label k + 1 for the truth's k-th class), and its seconds."""
    study, _ = case_study(case, seed)
    started = time.perf_counter()
    labels = engine.segment(study).labels
    return labels, time.perf_counter() - started


def run_protocol(
    engine: Engine,
    case: InteractiveCase,
    settings: RefineSettings | None,
    steps: int = CLICK_STEPS,
    seed: int = 0,
    first: tuple[np.ndarray, float] | None = None,
) -> InteractiveScore:
    """Box step and `steps` click steps on one case; scores per step (labels mapped back to the truth's values).
    `first`: step 0's result (box_step) when several candidates are compared on one case."""
    from worker.engine.click_decoder import refine_study

    study, _ = case_study(case, seed)
    values = case.classes
    lookup = np.concatenate([[0], values]).astype(case.gts.dtype)  # engine label k + 1 -> the truth's k-th value
    score = InteractiveScore(case.name, classes=len(values))
    labels, seconds = first if first is not None else box_step(engine, case, seed)
    score.seconds.append(seconds)
    _score_step(score, case, lookup[labels])
    clicks: dict[int, list[ClickPrompt]] = {k + 1: [] for k in range(len(values))}
    for _ in range(steps):
        placed = []
        for k, value in enumerate(values):
            click = error_centre(case.gts == value, labels == k + 1)
            if click is not None:
                clicks[k + 1].append(click)
                placed.append(click)
        score.clicks.append(placed)
        started = time.perf_counter()
        newest = {label: items for label, items in clicks.items() if items and items[-1] in placed}
        labels, _ = refine_study(engine, study, labels, newest, settings)
        score.seconds.append(time.perf_counter() - started)
        _score_step(score, case, lookup[labels])
    return score


def _score_step(score: InteractiveScore, case: InteractiveCase, segs: np.ndarray) -> None:
    dsc, nsd = score_case(case.gts, segs, case.spacing if case.gts.ndim == 3 else None)
    score.dsc.append(dsc)
    score.nsd.append(nsd)


def load_cases(imgs_dir: Path, gts_dir: Path) -> list[InteractiveCase]:
    """Cases with ground truth: imgs_dir/*.npz (imgs) beside gts_dir/*.npz (gts[, spacing]), without pickle."""
    cases = []
    for gt_path in sorted(Path(gts_dir).glob("*.npz")):
        image_path = Path(imgs_dir) / gt_path.name
        if not image_path.is_file():
            raise ValueError(f"{gt_path.name}: no image in {imgs_dir}")
        with np.load(image_path, allow_pickle=False) as image, np.load(gt_path, allow_pickle=False) as gt:
            if "imgs" not in image.files or "gts" not in gt.files:
                raise ValueError(f"{gt_path.name}: needs imgs in {imgs_dir} and gts in {gts_dir}")
            imgs, gts = image["imgs"], gt["gts"]
            raw = gt["spacing"] if "spacing" in gt.files else (image["spacing"] if "spacing" in image.files else None)
        if imgs.shape[: gts.ndim] != gts.shape and imgs.shape != gts.shape:
            raise ValueError(f"{gt_path.name}: imgs {imgs.shape} and gts {gts.shape} differ in shape")
        if not np.any(gts):
            raise ValueError(f"{gt_path.name}: ground truth has no foreground label")
        spacing = None if raw is None or gts.ndim != 3 else tuple(float(v) for v in np.asarray(raw).ravel())
        cases.append(InteractiveCase(gt_path.stem, imgs, gts, spacing))
    return cases


def plot_dsc(scores: list[InteractiveScore], path: Path) -> Path:
    """DSC against step, one line per case (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for score in scores:
        axes.plot(range(len(score.dsc)), score.dsc, marker="o", label=score.name)
    axes.set_xticks(range(CLICK_STEPS + 1), ["box", *(f"click {k}" for k in range(1, CLICK_STEPS + 1))])
    axes.set_ylabel("DSC")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
