"""Checks a study before any work is spent on it; each failure is a StudyError naming what is wrong."""

from __future__ import annotations

import numpy as np

from worker.contract.prompts import BOX_WIDTH_2D, BOX_WIDTH_3D, VOXEL, Prompts
from worker.contract.study import Study, StudyError

MAX_BOXES = 65535  # labels are uint16 and 0 is background
DEFAULT_MAX_VOXELS = 512 * 1024 * 1024  # 512 Mi voxels of uint8 input; configurable by callers


def check_image(image: np.ndarray, max_voxels: int = DEFAULT_MAX_VOXELS) -> None:
    if not isinstance(image, np.ndarray):
        raise StudyError(f"image is {type(image).__name__}, expected a numpy array")
    if image.dtype != np.uint8:
        raise StudyError(f"image dtype is {image.dtype}, expected uint8 (the challenge's 8-bit input)")
    if image.ndim not in (2, 3):
        raise StudyError(f"image has {image.ndim} dimensions, expected (H, W, 3) for 2D or (D, H, W) for 3D")
    if 0 in image.shape:
        raise StudyError(f"image is empty: shape {image.shape}")
    if image.size > max_voxels:
        raise StudyError(f"image has {image.size} voxels, above the limit of {max_voxels}")


def check_boxes(boxes: np.ndarray, image_shape: tuple[int, ...], is_3d: bool) -> None:
    width = BOX_WIDTH_3D if is_3d else BOX_WIDTH_2D
    if not isinstance(boxes, np.ndarray) or boxes.dtype.kind not in "iuf":
        raise StudyError("boxes must be a numeric array")
    if boxes.ndim != 2 or boxes.shape[1] != width:
        raise StudyError(f"boxes have shape {boxes.shape}, expected (N, {width}) for a {'3D' if is_3d else '2D'} image")
    if len(boxes) == 0:
        raise StudyError("no boxes: nothing to segment")
    if len(boxes) > MAX_BOXES:
        raise StudyError(f"{len(boxes)} boxes, more than the {MAX_BOXES} labels uint16 can hold")
    if not np.all(np.isfinite(boxes)):
        raise StudyError("boxes contain NaN or infinity")
    if is_3d:
        depth, height, width_px = image_shape
        lo, hi, limits = boxes[:, :3], boxes[:, 3:], np.array([width_px, height, depth])
    else:
        height, width_px = image_shape[:2]
        lo, hi, limits = boxes[:, :2], boxes[:, 2:], np.array([width_px, height])
    for index in range(len(boxes)):
        _check_one_box(index, lo[index], hi[index], limits, is_3d)


def _check_one_box(index: int, lo: np.ndarray, hi: np.ndarray, limits: np.ndarray, is_3d: bool) -> None:
    if np.any(lo < 0) or np.any(hi > limits):
        raise StudyError(
            f"box {index} {np.r_[lo, hi].tolist()} lies outside the image (x, y{', z' if is_3d else ''} "
            f"limits {limits.tolist()})"
        )
    if np.any(hi[:2] <= lo[:2]):
        raise StudyError(f"box {index} {np.r_[lo, hi].tolist()} is inverted or has zero area")
    if is_3d and hi[2] < lo[2]:
        raise StudyError(f"box {index} {np.r_[lo, hi].tolist()} has z_max < z_min")


def check_runnable(prompts: Prompts) -> None:
    """The engine runs voxel prompts: per label a box, clicks, or both (a label without a box needs a foreground
    click to start from); mm boxes and clicks (which a format maps to voxels) are refused by name, never dropped."""
    if len(prompts) == 0:
        raise StudyError("no boxes or clicks: nothing to segment")
    for index, label in enumerate(prompts.labels):
        if label.box is not None and label.box.space != VOXEL:
            raise StudyError(f"label {index + 1}: its box is in {label.box.space}; the engine takes voxel boxes")
        if any(click.space != VOXEL for click in label.clicks):
            raise StudyError(f"label {index + 1}: a click is in mm; the engine takes voxel clicks")
        if label.box is None and not label.foreground:
            raise StudyError(f"label {index + 1} has neither a box nor a foreground click: nothing says where it is")


def check_clicks(prompts: Prompts, image_shape: tuple[int, ...], is_3d: bool) -> None:
    """Every click on a voxel of the image (x, y[, z] within its columns, rows[, slices])."""
    limits = np.array([image_shape[2], image_shape[1], image_shape[0]] if is_3d else [image_shape[1], image_shape[0]])
    for index, label in enumerate(prompts.labels):
        for click in label.clicks:
            point = np.asarray(click.point, dtype=np.float64)
            if not np.all(np.isfinite(point)):
                raise StudyError(f"label {index + 1}: a click holds NaN or infinity")
            rounded = np.rint(point)
            if np.any(rounded < 0) or np.any(rounded >= limits):
                raise StudyError(
                    f"label {index + 1}: click {point.tolist()} lies outside the image "
                    f"(x, y{', z' if is_3d else ''} limits {limits.tolist()})"
                )


def check_study(study: Study, max_voxels: int = DEFAULT_MAX_VOXELS) -> None:
    check_image(study.image, max_voxels)
    is_3d = study.prompts.is_3d  # the prompts say which; the image must agree (Study.is_3d once checked)
    if is_3d and study.image.ndim != 3:
        raise StudyError(f"3D prompts given for an image of shape {study.image.shape}")
    if not is_3d and study.image.ndim == 3 and study.image.shape[-1] != 3:
        raise StudyError(f"2D prompts given for a volume of shape {study.image.shape} (2D images are (H, W, 3))")
    check_runnable(study.prompts)
    if len(study.prompts) > MAX_BOXES:
        raise StudyError(f"{len(study.prompts)} boxes or labels, more than the {MAX_BOXES} labels uint16 can hold")
    boxed = Prompts(
        tuple(label for label in study.prompts.labels if label.box is not None),
        study.prompts.dims,
        study.prompts.box_dtype,
    )
    if len(boxed):
        check_boxes(boxed.box_array(), study.image.shape, is_3d)
    check_clicks(study.prompts, study.image.shape, is_3d)
