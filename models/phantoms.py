"""Deterministic synthetic studies in the challenge npz layout (REFERENCE.md, "The challenge case format"), as
arrays: the project's own images, with no data set to download.

They are the default calibration set of the INT8 encoder (models.quantize) and, written to files by
producer.phantoms, the demo studies and the tests' cases. Four small studies, about 85 encoded slices in all (PET
counted for all three tri-view axes):

- `2DBox_CT_phantom`: 320x384 RGB slice, a body disc with three organ-like ellipses of different grey levels.
- `3DBox_CT_phantom`: 24x160x160, three ellipsoid organs of different contrast inside a body cylinder.
- `3DBox_MR_phantom`: 20x128x128, one bright lesion in a head-like ellipsoid.
- `3DBox_PET_phantom`: 40x96x96, low background uptake and two hot spheres, blurred like a PET PSF.

Images are blurred label maps plus mild noise (smooth edges, strong contrast); ground truth is the crisp label
map, label k+1 for box k; boxes are the tight boxes of the labels (2D: plus a small margin, clipped). Each study
comes from its own fixed seed, so every run gives identical arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SEED = 20240617
BOX_MARGIN_2D = 3  # px, like the challenge's slightly loose 2D boxes


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipse/ellipsoid in array index order, with its mean grey level."""

    center: tuple[float, ...]
    radii: tuple[float, ...]
    level: float


@dataclass(frozen=True)
class Phantom:
    name: str
    imgs: np.ndarray  # uint8 (H, W, 3) or (D, H, W)
    gts: np.ndarray  # uint8 label map, (H, W) or (D, H, W)
    spacing: np.ndarray | None  # float64 (3,), x, y, z order; None for 2D

    @property
    def boxes(self) -> np.ndarray:
        return tight_boxes(self.gts, BOX_MARGIN_2D if self.gts.ndim == 2 else 0)


def ellipsoid_mask(shape: tuple[int, ...], center: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii))
    return distance <= 1.0


def tight_boxes(gts: np.ndarray, margin: int = 0) -> np.ndarray:
    """Inclusive boxes of labels 1..max: 2D [x0, y0, x1, y1], 3D [x0, y0, z0, x1, y1, z1], int64.

    `margin` widens each box on every in-plane side, clipped to the image.
    """
    rows = []
    for label, found in enumerate(ndimage.find_objects(gts), start=1):
        if found is None:
            raise ValueError(f"label {label} is absent from the label map")
        lo = [s.start for s in found][::-1]  # array order (z,) y, x -> x, y (, z)
        hi = [s.stop - 1 for s in found][::-1]
        limits = gts.shape[::-1]
        for axis in range(2):  # x and y only
            lo[axis] = max(lo[axis] - margin, 0)
            hi[axis] = min(hi[axis] + margin, limits[axis] - 1)
        rows.append(lo + hi)
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2 * gts.ndim)


def _render(
    shape: tuple[int, ...],
    body: Ellipsoid,
    objects: list[Ellipsoid],
    rng: np.random.Generator,
    blur: float,
    noise: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Grey image (uint8) and label map (uint8, label k+1 = objects[k]) of a body with objects inside."""
    intensity = np.zeros(shape, np.float64)
    intensity[ellipsoid_mask(shape, body.center, body.radii)] = body.level
    gts = np.zeros(shape, np.uint8)
    for label, obj in enumerate(objects, start=1):
        mask = ellipsoid_mask(shape, obj.center, obj.radii)
        intensity[mask] = obj.level
        gts[mask] = label
    intensity = ndimage.gaussian_filter(intensity, blur)
    intensity += rng.normal(0.0, noise, shape) * (intensity > 0.5)  # the background stays 0, as after windowing
    return np.clip(np.rint(intensity), 0, 255).astype(np.uint8), gts


def _ct_2d(rng: np.random.Generator) -> Phantom:
    shape = (320, 384)
    body = Ellipsoid((160, 192), (135, 175), 70)  # fat / soft tissue, CT window 40/400
    organs = [
        Ellipsoid((140, 120), (60, 75), 150),  # liver-like
        Ellipsoid((150, 280), (32, 22), 200),  # kidney-like
        Ellipsoid((245, 195), (22, 24), 245),  # vertebra-like
    ]
    grey, gts = _render(shape, body, organs, rng, blur=1.2, noise=3.0)
    return Phantom("2DBox_CT_phantom", np.repeat(grey[:, :, None], 3, axis=2), gts, None)


def _ct_3d(rng: np.random.Generator) -> Phantom:
    shape = (24, 160, 160)
    body = Ellipsoid((11.5, 80, 80), (1e6, 64, 74), 70)  # a cylinder through every slice
    organs = [
        Ellipsoid((12, 72, 58), (7, 30, 36), 150),
        Ellipsoid((11, 78, 120), (5, 15, 11), 200),
        Ellipsoid((12, 124, 82), (6, 12, 12), 245),
    ]
    imgs, gts = _render(shape, body, organs, rng, blur=1.0, noise=3.0)
    return Phantom("3DBox_CT_phantom", imgs, gts, np.array([0.9, 0.9, 2.5]))


def _mr_3d(rng: np.random.Generator) -> Phantom:
    shape = (20, 128, 128)
    head = Ellipsoid((9.5, 64, 64), (14, 54, 46), 95)
    lesion = [Ellipsoid((10, 54, 74), (4, 14, 16), 235)]
    imgs, gts = _render(shape, head, lesion, rng, blur=1.2, noise=4.0)
    return Phantom("3DBox_MR_phantom", imgs, gts, np.array([1.2, 1.2, 3.0]))


def _pet_3d(rng: np.random.Generator) -> Phantom:
    # Hot spheres apart along every axis, so each tri-view axis encodes two short, separate ranges.
    shape = (40, 96, 96)
    body = Ellipsoid((19.5, 48, 48), (1e6, 38, 42), 30)
    spheres = [Ellipsoid((12, 40, 35), (5, 5, 5), 230), Ellipsoid((27, 58, 62), (4, 4, 4), 255)]
    imgs, gts = _render(shape, body, spheres, rng, blur=1.0, noise=2.0)
    return Phantom("3DBox_PET_phantom", imgs, gts, np.array([4.0, 4.0, 4.0]))


_BUILDERS = (_ct_2d, _ct_3d, _mr_3d, _pet_3d)


def build_phantoms() -> list[Phantom]:
    """All demo phantoms, each from its own fixed seed (adding one never changes the others)."""
    return [build(np.random.default_rng((SEED, index))) for index, build in enumerate(_BUILDERS)]
