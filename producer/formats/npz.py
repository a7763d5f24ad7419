"""The challenge's npz format (REFERENCE.md): `imgs` + `boxes` (+ `spacing`) in, `segs` out."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from worker.protocol import Study, StudyError

PREFIXES = ("2DBox_", "3DBox_")


def modality_from_name(name: str) -> str:
    """`3DBox_CT_tssm` -> `CT` (the second underscore token, as the challenge defines it)."""
    parts = name.split("_")
    if len(parts) < 3 or not parts[1]:
        raise StudyError(f"cannot read a modality from {name!r}: expected 2DBox_<Modality>_<id>.npz")
    return parts[1]


def is_challenge_npz(path: Path) -> bool:
    return path.suffix == ".npz" and path.name.startswith(PREFIXES)


def load_npz_study(path: Path) -> Study:
    name = path.stem
    try:
        with np.load(path, allow_pickle=False) as data:
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
    return Study(study_id=name, modality=modality_from_name(name), image=image, boxes=boxes, spacing=spacing)


def write_segs(path: Path, labels: np.ndarray) -> None:
    """Write `segs` (uint16, compressed) atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        np.savez_compressed(handle, segs=labels.astype(np.uint16, copy=False))
    partial.replace(path)
