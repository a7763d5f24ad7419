"""The challenge's npz format (REFERENCE.md): `imgs` + `boxes` (+ `spacing`) in, `segs` out."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from producer.formats import modality as modalities
from worker.contract.files import atomic_path
from worker.contract.prompts import Prompts
from worker.contract.settings import max_voxels, variable
from worker.contract.study import Study, StudyError

MAX_VOXELS_ENV = variable("max_voxels")

PREFIXES = ("2DBox_", "3DBox_")


def modality_from_name(name: str) -> str:
    """`3DBox_CT_tssm` -> `CT` (the second underscore token, as the challenge defines it)."""
    parts = name.split("_")
    if len(parts) < 3 or not parts[1]:
        raise StudyError(f"cannot read a modality from {name!r}: expected 2DBox_<Modality>_<id>.npz")
    return parts[1]


def is_challenge_npz(path: Path) -> bool:
    return path.suffix == ".npz" and path.name.startswith(PREFIXES)


def stored_shape(path: Path, key: str) -> tuple[int, ...]:
    """The shape of array `key` from its .npy header, without reading (or allocating) the data."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
        major, _ = npy_format.read_magic(member)
        read_header = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
        shape, _, _ = read_header(member)
    return tuple(int(n) for n in shape)


def check_size_before_loading(path: Path, limit: int) -> None:
    voxels = int(np.prod(stored_shape(path, "imgs"), dtype=np.int64))
    if voxels > limit:
        raise StudyError(
            f"{path.name}: image has {voxels} voxels, above the limit of {limit} "
            f"(set {MAX_VOXELS_ENV} to change it); not loaded"
        )


def load_npz_study(path: Path) -> Study:
    name = path.stem
    try:
        with np.load(path, allow_pickle=False) as data:
            if "imgs" in data.files:
                check_size_before_loading(path, max_voxels())
            missing = {"imgs", "boxes"} - set(data.files)
            if missing:
                raise StudyError(f"{path.name} lacks key(s) {sorted(missing)} (has {sorted(data.files)})")
            image, boxes = data["imgs"], data["boxes"]
            spacing = tuple(float(v) for v in data["spacing"]) if "spacing" in data.files else None
    except StudyError:
        raise
    except ValueError as error:  # np.load refuses object arrays without allow_pickle
        raise StudyError(f"{path.name}: unreadable npz ({error})") from error
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as error:
        raise StudyError(f"{path.name}: corrupt or truncated npz ({error})") from error
    if name.startswith("3DBox_") and image.ndim != 3:
        raise StudyError(f"{path.name}: a 3DBox study needs a (D, H, W) volume, got shape {image.shape}")
    return Study(
        study_id=name,
        modality=modality_from_name(name),
        image=image,
        prompts=Prompts.from_boxes(boxes),
        spacing=spacing,
    )


def load_npz_image(path: Path, modality: str | None = None) -> Study:
    """An npz's `imgs` (and `spacing`) without prompts: an interactive session's image. 2D: (H, W, 3) or grey
    (H, W); 3D: (D, H, W); uint8 as the challenge stores them. The modality: `modality`, else the file name's."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "imgs" not in data.files:
                raise StudyError(f"{path.name} has no 'imgs' array (has {sorted(data.files)})")
            check_size_before_loading(path, max_voxels())
            image = data["imgs"]
            spacing = tuple(float(v) for v in data["spacing"]) if "spacing" in data.files else None
    except StudyError:
        raise
    except ValueError as error:
        raise StudyError(f"{path.name}: unreadable npz ({error})") from error
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as error:
        raise StudyError(f"{path.name}: corrupt or truncated npz ({error})") from error
    if image.dtype != np.uint8:
        raise StudyError(f"{path.name}: imgs is {image.dtype}; the challenge layout is uint8")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    is_3d = image.ndim == 3 and image.shape[-1] != 3
    if image.ndim != 3:
        raise StudyError(f"{path.name}: imgs of shape {image.shape} is neither (H, W[, 3]) nor (D, H, W)")
    chosen = modalities.normalise(modality) if modality else modality_from_name(path.stem)
    return Study(path.stem, chosen, np.ascontiguousarray(image), Prompts((), 3 if is_3d else 2), spacing)


def write_segs(path: Path, labels: np.ndarray) -> None:
    """Write `segs` (uint16, compressed) atomically: a reader never sees half a file."""
    with atomic_path(path) as partial, partial.open("xb") as handle:
        np.savez_compressed(handle, segs=labels.astype(np.uint16, copy=False))
