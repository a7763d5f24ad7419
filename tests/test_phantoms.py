"""The synthetic demo studies: deterministic, in the challenge format, boxes matching the ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from models.phantoms import BOX_MARGIN_2D
from producer.phantoms import demo_dir_or_phantoms, write_phantoms

NAMES = ["2DBox_CT_phantom.npz", "3DBox_CT_phantom.npz", "3DBox_MR_phantom.npz", "3DBox_PET_phantom.npz"]
SLICE_BUDGET = 120


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    write_phantoms(out)
    return out


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def cases(root: Path):
    for name in NAMES:
        yield name, load(root / "imgs" / name), load(root / "gts" / name)


def test_returns_image_paths_and_writes_gts(tmp_path: Path):
    paths = write_phantoms(tmp_path)
    assert [p.name for p in paths] == NAMES
    assert all(p.parent == tmp_path / "imgs" and p.is_file() for p in paths)
    assert sorted(p.name for p in (tmp_path / "gts").iterdir()) == NAMES


def test_without_gts(tmp_path: Path):
    write_phantoms(tmp_path, with_gts=False)
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == NAMES
    assert not (tmp_path / "gts").exists()


def test_byte_identical_reruns(tmp_path: Path, phantom_dir: Path):
    write_phantoms(tmp_path)
    for sub in ("imgs", "gts"):
        for name in NAMES:
            assert (tmp_path / sub / name).read_bytes() == (phantom_dir / sub / name).read_bytes(), name


def test_2d_format(phantom_dir: Path):
    imgs, gts = load(phantom_dir / "imgs" / NAMES[0]), load(phantom_dir / "gts" / NAMES[0])
    assert set(imgs) == {"imgs", "boxes"} and set(gts) == {"gts"}
    h, w, c = imgs["imgs"].shape
    assert imgs["imgs"].dtype == np.uint8 and c == 3 and 256 <= min(h, w) and max(h, w) <= 512
    assert (imgs["imgs"][..., 0] == imgs["imgs"][..., 1]).all() and (imgs["imgs"][..., 0] == imgs["imgs"][..., 2]).all()
    assert gts["gts"].shape == (h, w) and gts["gts"].dtype in (np.uint8, np.uint16)
    assert imgs["boxes"].ndim == 2 and imgs["boxes"].shape[1] == 4
    assert np.issubdtype(imgs["boxes"].dtype, np.integer)


@pytest.mark.parametrize("name", NAMES[1:])
def test_3d_format(phantom_dir: Path, name: str):
    imgs, gts = load(phantom_dir / "imgs" / name), load(phantom_dir / "gts" / name)
    assert set(imgs) == {"imgs", "boxes", "spacing"} and set(gts) == {"gts", "spacing"}
    assert imgs["imgs"].dtype == np.uint8 and imgs["imgs"].ndim == 3
    assert gts["gts"].shape == imgs["imgs"].shape and gts["gts"].dtype in (np.uint8, np.uint16)
    assert imgs["boxes"].ndim == 2 and imgs["boxes"].shape[1] == 6
    assert np.issubdtype(imgs["boxes"].dtype, np.integer)
    assert imgs["spacing"].dtype == np.float64 and imgs["spacing"].shape == (3,)
    assert (imgs["spacing"] > 0).all() and np.array_equal(imgs["spacing"], gts["spacing"])


def tight_box(mask: np.ndarray) -> tuple[list[int], list[int]]:
    """(lo, hi) in x, y(, z) order, inclusive."""
    coords = np.nonzero(mask)
    return [int(c.min()) for c in coords][::-1], [int(c.max()) for c in coords][::-1]


def test_boxes_are_tight_boxes_of_labels(phantom_dir: Path):
    for name, imgs, gts in cases(phantom_dir):
        labels, boxes = gts["gts"], imgs["boxes"]
        n, dims = len(boxes), labels.ndim
        assert np.array_equal(np.unique(labels), np.arange(n + 1)), name  # background + labels 1..N
        limits = labels.shape[::-1]  # x, y(, z)
        for k, box in enumerate(boxes):
            lo, hi = tight_box(labels == k + 1)
            box_lo, box_hi = box[:dims].tolist(), box[dims:].tolist()
            margin = [BOX_MARGIN_2D] * 2 if dims == 2 else [0, 0, 0]
            for axis in range(dims):
                assert 0 <= box_lo[axis] <= box_hi[axis] < limits[axis], (name, k)
                assert lo[axis] - margin[axis] <= box_lo[axis] <= lo[axis], (name, k, axis)
                assert hi[axis] <= box_hi[axis] <= hi[axis] + margin[axis], (name, k, axis)
                # a margin is only ever cut short by the image border
                assert box_lo[axis] == max(lo[axis] - margin[axis], 0)
                assert box_hi[axis] == min(hi[axis] + margin[axis], limits[axis] - 1)


def test_structures_stand_out(phantom_dir: Path):
    for name, imgs, gts in cases(phantom_dir):
        image = imgs["imgs"][..., 0] if imgs["imgs"].ndim == 3 and name.startswith("2D") else imgs["imgs"]
        for label in range(1, int(gts["gts"].max()) + 1):
            mask = gts["gts"] == label
            ring = ndimage.binary_dilation(mask, iterations=4) & (gts["gts"] == 0)
            assert image[mask].mean() - image[ring].mean() > 50, (name, label)


def covered(ranges: list[tuple[int, int]]) -> int:
    return len(set().union(*(range(lo, hi + 1) for lo, hi in ranges)))


def test_encoder_budget(phantom_dir: Path):
    """Slices a box-propagation engine encodes; PET counted on all three tri-view axes."""
    total = 0
    for name, imgs, _ in cases(phantom_dir):
        boxes = imgs["boxes"]
        if boxes.shape[1] == 4:
            total += 1
            continue
        axes = (2, 1, 0) if "_PET_" in name else (2,)  # z; PET also y (coronal) and x (sagittal)
        total += sum(covered([(b[a], b[a + 3]) for b in boxes]) for a in axes)
    assert total < SLICE_BUDGET


def test_demo_dir_prefers_shared_cases(tmp_path: Path):
    shared, scratch = tmp_path / "shared", tmp_path / "scratch"
    (shared / "imgs").mkdir(parents=True)
    np.savez_compressed(shared / "imgs" / "2DBox_CT_x.npz", imgs=np.zeros((4, 4, 3), np.uint8))
    assert demo_dir_or_phantoms(shared, scratch) == shared
    assert not scratch.exists()


def test_demo_dir_falls_back_to_phantoms(tmp_path: Path):
    scratch = tmp_path / "scratch"
    assert demo_dir_or_phantoms(tmp_path / "nowhere", scratch) == scratch
    assert sorted(p.name for p in (scratch / "imgs").glob("*.npz")) == NAMES
    assert sorted(p.name for p in (scratch / "gts").glob("*.npz")) == NAMES
