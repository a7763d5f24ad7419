"""Sidecar prompts -> the engine's voxel prompts (inclusive boxes and clicks), validated against the image.

A "mm" box gives two opposite corners in world millimetres. Each corner goes through the inverse of the image's
affine to continuous voxel indices (x, y, z) and is rounded to the nearest voxel centre (halves round up); the box
spans the two rounded corners on every axis, so corners may be given in any order and on oblique or reversed
grids alike. A 2D image is the plane z = 0: a corner must round to it (within half a slice thickness).
Checks (each a StudyError naming the box): every index inside the image, x1 > x0 and y1 > y0 (a box needs an
area, as the engine requires), z1 >= z0. A "mm" click is rounded to its nearest voxel the same way; every click must
land on a voxel of the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from producer.formats.sidecar import BoxPrompt, ClickEntryPrompt
from producer.formats.volume import VolumeGeometry
from worker.contract.prompts import Box, Click, LabelPrompt, Prompts
from worker.contract.study import StudyError


def _name(index: int, box: BoxPrompt) -> str:
    return f"box #{index + 1} ({box.label})"


def _voxel_corners(index: int, box: BoxPrompt, is_3d: bool) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(box.voxel, dtype=np.int64)
    if is_3d and len(values) != 6:
        raise StudyError(f"{_name(index, box)}: a 3D volume needs [x0, y0, z0, x1, y1, z1], got {list(box.voxel)}")
    if len(values) == 4:
        return np.array([values[0], values[1], 0]), np.array([values[2], values[3], 0])
    return values[:3], values[3:]


def _mm_corners(index: int, box: BoxPrompt, geometry: VolumeGeometry | None) -> tuple[np.ndarray, np.ndarray]:
    if geometry is None:
        raise StudyError(
            f'{_name(index, box)}: the image has no patient geometry, so "mm" boxes cannot be '
            'placed; give "voxel" indices'
        )
    voxels = np.floor(geometry.to_voxel(np.asarray(box.mm)) + 0.5).astype(np.int64)
    return voxels.min(axis=0), voxels.max(axis=0)


def _check(index: int, box: BoxPrompt, lo: np.ndarray, hi: np.ndarray, shape: tuple[int, int, int]) -> None:
    depth, height, width = shape
    limits = np.array([width, height, depth]) - 1
    span = f"[x {lo[0]}..{hi[0]}, y {lo[1]}..{hi[1]}, z {lo[2]}..{hi[2]}]"
    if np.any(lo < 0) or np.any(hi > limits):
        raise StudyError(
            f"{_name(index, box)} {span} lies outside the image (x 0..{limits[0]}, y 0..{limits[1]}, z 0..{limits[2]})"
        )
    if hi[0] <= lo[0] or hi[1] <= lo[1]:
        raise StudyError(f"{_name(index, box)} {span} is inverted or has no area (needs x1 > x0 and y1 > y0)")
    if hi[2] < lo[2]:
        raise StudyError(f"{_name(index, box)} {span} is inverted along z (z1 < z0)")


def _box_row(
    index: int, box: BoxPrompt, shape: tuple[int, int, int], geometry: VolumeGeometry | None, is_3d: bool
) -> np.ndarray:
    if box.voxel is not None:
        lo, hi = _voxel_corners(index, box, is_3d)
    else:
        lo, hi = _mm_corners(index, box, geometry)
    _check(index, box, lo, hi, shape)
    return np.concatenate([lo, hi]) if is_3d else np.array([lo[0], lo[1], hi[0], hi[1]])


def resolve_boxes(
    prompts: Sequence[BoxPrompt], shape: tuple[int, int, int], geometry: VolumeGeometry | None, is_3d: bool
) -> np.ndarray:
    """shape = (D, H, W). Returns int64 (N, 6) [x0, y0, z0, x1, y1, z1] for 3D, (N, 4) [x0, y0, x1, y1] for 2D."""
    rows = [_box_row(index, box, shape, geometry, is_3d) for index, box in enumerate(prompts)]
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), 6 if is_3d else 4)


def _click_voxel(
    index: int, box: BoxPrompt, click: ClickEntryPrompt, shape, geometry: VolumeGeometry | None, is_3d: bool
) -> tuple[int, ...]:
    if click.voxel is not None:
        point = np.asarray(click.voxel, dtype=np.int64)
        if len(point) != (3 if is_3d else 2):
            raise StudyError(f"{_name(index, box)}: a click on this image is [x, y{', z' if is_3d else ''}]")
        point = point if is_3d else np.array([point[0], point[1], 0])
    else:
        if geometry is None:
            raise StudyError(f'{_name(index, box)}: the image has no patient geometry, so "mm" clicks cannot be placed')
        point = np.floor(geometry.to_voxel(np.asarray([click.mm]))[0] + 0.5).astype(np.int64)
    depth, height, width = shape
    if np.any(point < 0) or np.any(point > np.array([width, height, depth]) - 1):
        raise StudyError(f"{_name(index, box)}: click {point.tolist()} lies outside the image")
    return tuple(int(v) for v in (point if is_3d else point[:2]))


def resolve_prompts(
    prompts: Sequence[BoxPrompt], shape: tuple[int, int, int], geometry: VolumeGeometry | None, is_3d: bool
) -> Prompts:
    """The engine's voxel Prompts: box-only sidecars as the int64 box array they always were (same result keys);
    with clicks, each label's box (or none) and its clicks in order."""
    if not any(box.clicks for box in prompts) and all(box.has_box for box in prompts):
        return Prompts.from_boxes(resolve_boxes(prompts, shape, geometry, is_3d))
    labels = []
    for index, box in enumerate(prompts):
        row = _box_row(index, box, shape, geometry, is_3d) if box.has_box else None
        clicks = tuple(
            Click(_click_voxel(index, box, click, shape, geometry, is_3d), click.positive) for click in box.clicks
        )
        labels.append(LabelPrompt(Box(tuple(int(v) for v in row)) if row is not None else None, clicks))
    return Prompts(tuple(labels), 3 if is_3d else 2, "<i8")
