"""Derived evaluation cases: deterministic, in the challenge layout, labels renumbered, boxes tight."""

from __future__ import annotations

import numpy as np

from models.phantoms import tight_boxes
from producer.derived import derive_cases, keep_labels, write_cases
from producer.phantoms import write_phantoms


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
