"""The synthetic demo studies (models.phantoms) written as challenge npz files: `imgs/` and `gts/`.

So the demo and the tests run without the shared developer cases. Files are written with fixed zip timestamps,
so every run produces identical bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.phantoms import build_phantoms
from worker.contract.arrays import write_npz
from worker.contract.files import atomic_path


def save_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps (byte-identical reruns), written atomically."""
    with atomic_path(path) as partial:
        write_npz(partial, arrays)


def write_phantoms(out_dir: Path, with_gts: bool = True) -> list[Path]:
    """Write the phantoms to `out_dir/imgs/` (and ground truth to `out_dir/gts/`); return the image paths."""
    out_dir = Path(out_dir)
    (out_dir / "imgs").mkdir(parents=True, exist_ok=True)
    if with_gts:
        (out_dir / "gts").mkdir(parents=True, exist_ok=True)
    paths = []
    for phantom in build_phantoms():
        spacing = {} if phantom.spacing is None else {"spacing": phantom.spacing.astype(np.float64)}
        image_path = out_dir / "imgs" / f"{phantom.name}.npz"
        save_npz_deterministic(image_path, {"imgs": phantom.imgs, "boxes": phantom.boxes, **spacing})
        if with_gts:
            save_npz_deterministic(out_dir / "gts" / f"{phantom.name}.npz", {"gts": phantom.gts, **spacing})
        paths.append(image_path)
    return paths


def demo_dir_or_phantoms(shared_cases: Path, scratch: Path) -> Path:
    """`shared_cases` if it holds `imgs/*.npz`, else phantoms written into `scratch` (returned)."""
    shared_cases = Path(shared_cases)
    if any((shared_cases / "imgs").glob("*.npz")):
        return shared_cases
    write_phantoms(Path(scratch))
    return Path(scratch)
