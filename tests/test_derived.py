"""Derived evaluation cases: deterministic, in the challenge layout, labels renumbered, boxes tight."""

from __future__ import annotations

import numpy as np

from models.phantoms import tight_boxes
from producer.derived import DerivedCase, derive_cases, keep_labels, write_cases
from producer.phantoms import write_phantoms
from worker.evaluation.derived import cases_outside, free_runs


def test_keep_labels_drops_small_structures_and_renumbers():
    gts = np.zeros((10, 10), dtype=np.uint8)
    gts[0:5, 0:5] = 2  # 25 px
    gts[8, 8] = 3  # 1 px: dropped
    gts[6:10, 0:6] = 5  # 24 px
    kept = keep_labels(gts, 20)
    assert kept.dtype == np.uint16
    assert sorted(np.unique(kept).tolist()) == [0, 1, 2]
    assert (kept[0:5, 0:5] == 1).all() and (kept[6:10, 0:6] == 2).all() and kept[8, 8] == 0


def test_derived_cases_from_phantoms(tmp_path):
    source = tmp_path / "src"
    write_phantoms(source)
    cases = derive_cases(source)
    assert cases, "no derived case"
    names = [case.name for case in cases]
    assert len(names) == len(set(names))
    assert any(case.is_3d for case in cases) and any(not case.is_3d for case in cases)
    for case in cases:
        assert case.gts.max() == len(case.boxes)
        np.testing.assert_array_equal(case.boxes, tight_boxes(case.gts))
        if case.is_3d:
            assert case.imgs.shape == case.gts.shape and case.spacing is not None
        else:
            assert case.imgs.shape == (*case.gts.shape, 3)
    again = derive_cases(source)
    assert [c.name for c in again] == names and all(np.array_equal(a.imgs, b.imgs) for a, b in zip(cases, again))
    out = write_cases(cases, tmp_path / "derived")
    first = cases[0]
    with np.load(out / "imgs" / f"{first.name}.npz", allow_pickle=False) as data:
        np.testing.assert_array_equal(data["boxes"], first.boxes)
    with np.load(out / "gts" / f"{first.name}.npz", allow_pickle=False) as data:
        np.testing.assert_array_equal(data["gts"], first.gts)


def _volume_case(folder, stem: str, depth: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A 3D case whose every slice is distinct (slice z holds the value z in one corner), labelled on z 4..35."""
    imgs = np.zeros((depth, 48, 48), dtype=np.uint8)
    imgs[:, 0, 0] = np.arange(depth)
    imgs[:, 10:40, 10:40] = 100
    gts = np.zeros(imgs.shape, dtype=np.uint8)
    gts[4:36, 16:34, 16:34] = 1
    write_cases([DerivedCase(f"3DBox_{stem}", imgs, tight_boxes(gts), gts, np.ones(3))], folder)
    return imgs, gts


def test_free_runs_are_the_gaps_between_avoided_slices():
    assert free_runs(10, {0, 4, 5, 9}) == [(1, 4), (6, 9)]
    assert free_runs(5, set()) == [(0, 5)]
    assert free_runs(3, {0, 1, 2}) == []


def test_cases_outside_never_hold_an_avoided_slice(tmp_path):
    imgs, gts = _volume_case(tmp_path, "MR_vol")
    avoid = {"3DBox_MR_vol": {5, 6, 20, 30, 33}}
    cases = cases_outside(tmp_path, avoid, per_kind=4, depth=8)
    flat = [case for case in cases if not case.is_3d]
    volumes = [case for case in cases if case.is_3d]
    assert len(flat) == 4 and len(volumes) == 4
    for case in cases:
        first = int(case.imgs[0, 0, 0])
        held = set(range(first, first + (case.imgs.shape[0] if case.is_3d else 1)))
        if case.name.endswith("-crop"):  # the crop loses the corner: find the slices by the name
            start = int(case.name.split("-s")[1][:3])
            held = set(range(start, start + 8))
            assert case.imgs.shape == (8, 36, 36)
        else:
            np.testing.assert_array_equal(case.imgs if case.is_3d else case.imgs[..., 0], imgs[sorted(held)].squeeze())
        assert not held & avoid["3DBox_MR_vol"], case.name
        assert held <= set(range(4, 36)) or case.is_3d  # 2D slices are labelled ones
        assert case.gts.max() == len(case.boxes) and case.gts.any()
    # of the free runs (0..4, 7..19, 21..29, 31..32, 34..39) 8-slice windows (4 apart) fit at 7, 11 and 21 only:
    # one crop makes the fourth
    assert [case.name for case in volumes] == [
        "3DBox_MR_vol-s007d8",
        "3DBox_MR_vol-s011d8",
        "3DBox_MR_vol-s021d8",
        "3DBox_MR_vol-s007d8-crop",
    ]
    again = cases_outside(tmp_path, avoid, per_kind=4, depth=8)
    assert [case.name for case in again] == [case.name for case in cases]
