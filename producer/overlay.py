"""`producer overlay`: PNG overlays of predicted vs ground-truth masks, for visual QA.

Per chosen case and slice one PNG, panels side by side at the image's own size:
  [ground truth over the image | prediction over the image | agreement]   (with --gts)
  [prediction over the image]                                              (without)
Label k is blended in its palette colour (producer.formats.structures; alpha 0.5 by default); in the agreement
panel a pixel is green where prediction and ground truth carry the same non-zero label, red where only the
prediction (or a different label) is, blue where only the ground truth is. Background pixels show the image unchanged.

3D cases: by default 3 axial slices at 25 %, 50 % and 75 % of the labelled z-range (ground truth when given, else
the prediction); choose others with --slice. Files: OUT/<case>.png (2D) or OUT/<case>_z<index>.png (3D).
PNGs are written with matplotlib (imported only when overlays are made).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from producer.evaluate import load_array
from producer.formats.structures import palette_colour
from worker.contract.files import atomic_path

AGREE, PRED_ONLY, GT_ONLY = (0, 200, 0), (230, 0, 0), (0, 90, 255)


def label_colour(label: int) -> tuple[int, int, int]:
    """Colour of a label (>= 1); the palette repeats past its end."""
    return palette_colour(label)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """uint8 (H, W, 3) -> RGB PNG (matplotlib's writer), written atomically."""
    from matplotlib import image as mpl_image

    with atomic_path(path) as partial, partial.open("xb") as handle:
        mpl_image.imsave(handle, np.ascontiguousarray(rgb, dtype=np.uint8), format="png")


def read_png(path: Path) -> np.ndarray:
    """A PNG back as uint8 (H, W, 3), for tests and checks."""
    from matplotlib import image as mpl_image

    pixels = mpl_image.imread(path)[..., :3]
    return np.round(pixels * 255).astype(np.uint8) if pixels.dtype.kind == "f" else pixels


def as_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2).astype(np.uint8)
    return image[..., :3].astype(np.uint8)


def blend(rgb: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    out = rgb.astype(np.float32)
    for label in np.unique(labels):
        if label == 0:
            continue
        mask = labels == label
        out[mask] = (1 - alpha) * out[mask] + alpha * np.array(label_colour(label), np.float32)
    return np.rint(out).astype(np.uint8)


def agreement(rgb: np.ndarray, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    out = rgb.copy()
    out[(pred == gt) & (gt > 0)] = AGREE
    out[(pred > 0) & (pred != gt)] = PRED_ONLY
    out[(gt > 0) & (pred == 0)] = GT_ONLY
    return out


def render(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None, alpha: float = 0.5) -> np.ndarray:
    """One slice (2D image or 3D slice) -> the panels side by side, uint8 (H, W * panels, 3)."""
    rgb = as_rgb(image)
    if gt is None:
        return blend(rgb, pred, alpha)
    return np.concatenate([blend(rgb, gt, alpha), blend(rgb, pred, alpha), agreement(rgb, pred, gt)], axis=1)


def default_slices(labels: np.ndarray, count: int = 3) -> list[int]:
    """Slices at evenly spaced quantiles of the labelled z-range (the middle slice if nothing is labelled)."""
    present = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    if present.size == 0:
        return [labels.shape[0] // 2]
    lo, hi = int(present[0]), int(present[-1])
    picks = [lo + (hi - lo) * (i + 1) / (count + 1) for i in range(count)]
    return sorted({int(round(p)) for p in picks})


def _load(path: Path, key: str) -> np.ndarray:
    try:
        return load_array(path, key)
    except ValueError as error:
        raise click.ClickException(str(error)) from error


def overlay_case(
    image_path: Path,
    segs_path: Path,
    gt_path: Path | None,
    out_dir: Path,
    slices: list[int] | None = None,
    alpha: float = 0.5,
) -> list[Path]:
    """Write the overlay PNG(s) of one case; returns their paths."""
    image, pred = _load(image_path, "imgs"), _load(segs_path, "segs")
    gt = _load(gt_path, "gts") if gt_path is not None else None
    name = image_path.stem
    spatial = image.shape[:2] if pred.ndim == 2 else image.shape
    for what, array in (("segs", pred), ("gts", gt)):
        if array is not None and array.shape != spatial:
            raise click.ClickException(f"{name}: {what} shape {array.shape} does not match the image {spatial}")
    if pred.ndim == 2:
        path = out_dir / f"{name}.png"
        write_png(path, render(image, pred, gt, alpha))
        return [path]
    chosen = slices or default_slices(gt if gt is not None else pred)
    written = []
    for z in chosen:
        if not 0 <= z < image.shape[0]:
            raise click.ClickException(f"{name}: slice {z} is outside 0..{image.shape[0] - 1}")
        path = out_dir / f"{name}_z{z:03d}.png"
        write_png(path, render(image[z], pred[z], None if gt is None else gt[z], alpha))
        written.append(path)
    return written


_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command("overlay")
@click.option("--imgs", "imgs_dir", required=True, type=_DIR, help="Directory of input *.npz (imgs).")
@click.option("--segs", "segs_dir", required=True, type=_DIR, help="Directory of segmentation *.npz (segs).")
@click.option("--gts", "gts_dir", type=_DIR, default=None, help="Directory of ground truth *.npz (gts), optional.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--case", "cases", multiple=True, help="Case name (file stem); repeatable. Default: every segs file.")
@click.option("--slice", "slices", type=int, multiple=True, help="Axial slice index for 3D cases; repeatable.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Label opacity.")
def overlay_command(
    imgs_dir: Path,
    segs_dir: Path,
    gts_dir: Path | None,
    out_dir: Path,
    cases: tuple[str, ...],
    slices: tuple[int, ...],
    alpha: float,
) -> None:
    """Write PNG overlays of predicted (and ground-truth) masks for visual QA."""
    names = list(cases) or sorted(p.stem for p in segs_dir.glob("*.npz"))
    if not names:
        raise click.ClickException(f"no *.npz segmentations in {segs_dir}")
    total = 0
    for name in names:
        image_path, segs_path = imgs_dir / f"{name}.npz", segs_dir / f"{name}.npz"
        for path in (image_path, segs_path):
            if not path.is_file():
                raise click.ClickException(f"{name}: {path} not found")
        gt_path = gts_dir / f"{name}.npz" if gts_dir is not None else None
        if gt_path is not None and not gt_path.is_file():
            gt_path = None
        written = overlay_case(image_path, segs_path, gt_path, out_dir, list(slices) or None, alpha)
        total += len(written)
        for path in written:
            click.echo(str(path))
    click.echo(f"wrote {total} overlay PNG(s) to {out_dir}")
