"""The CVPR 2025 npz: read with a restricted unpickler (a malicious pickle is refused, nothing runs), a file written
the way the challenge's evaluation script writes it is read as stored, and `producer submit`'s npz kind claims it."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from producer.discovery import discover
from producer.formats.npz2025 import (
    Box2025,
    Click,
    is_2025_npz,
    read_2025_npz,
    restricted_loads,
    study_from_2025,
)
from producer.formats.registry import format_of
from worker.contract.study import StudyError

SHAPE = (6, 20, 24)  # (D, H, W)
BOXES = [
    {"z_min": 1, "z_max": 4, "z_mid": 2, "z_mid_x_min": 3, "z_mid_y_min": 4, "z_mid_x_max": 10, "z_mid_y_max": 12},
    {"z_min": 0, "z_max": 5, "z_mid": 3, "z_mid_x_min": 12, "z_mid_y_min": 2, "z_mid_x_max": 20, "z_mid_y_max": 9},
]


def volume() -> np.ndarray:
    return np.arange(np.prod(SHAPE), dtype=np.int64).reshape(SHAPE).astype(np.uint8)


def script_click(mask: np.ndarray) -> list:
    """A click as the script stores it: list(tuple(np.argwhere(...)[i])), numpy int64 scalars in (z, y, x)."""
    return list(tuple(np.argwhere(mask)[0]))


def write_like_the_script(path, clicks=True, boxes=True):
    """np.savez_compressed with lists of dicts and lists, as CVPR25_iter_eval.py writes each step's input."""
    fg = np.zeros(SHAPE, bool)
    fg[2, 7, 5] = True
    bg = np.zeros(SHAPE, bool)
    bg[3, 5, 15] = True
    arrays = {"imgs": volume(), "spacing": np.array([0.8, 0.8, 2.5])}
    if clicks:
        second_fg = np.zeros(SHAPE, bool)
        second_fg[4, 8, 18] = True
        arrays["clicks"] = [
            {"fg": [script_click(fg), script_click(second_fg)], "bg": []},
            {"fg": [script_click(second_fg)], "bg": [script_click(bg)]},
        ]
        # one click per class per step: equal lengths, so numpy stores a (2, 2) unicode array (ragged lists
        # would make np.savez_compressed raise in numpy >= 1.24)
        arrays["clicks_order"] = [["fg", "fg"], ["bg", "fg"]]
        arrays["prev_pred"] = np.zeros(SHAPE, np.uint8)
    if boxes:
        arrays["boxes"] = BOXES
    np.savez_compressed(path, **arrays)
    return path


class Marker:
    """Unpickling this runs a shell command that creates a file: what np.load(allow_pickle=True) would do."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_a_file_written_like_the_script_reads_as_stored(tmp_path):
    path = write_like_the_script(tmp_path / "CT_Abdomen_001.npz")
    with np.load(path, allow_pickle=False) as data, pytest.raises(ValueError):
        data["boxes"]  # what the rest of the project does: refused, the members are pickles
    assert is_2025_npz(path)
    case = read_2025_npz(path)
    assert case.imgs.shape == SHAPE and np.array_equal(case.imgs, volume())
    assert case.spacing == (0.8, 0.8, 2.5)
    assert case.boxes == [Box2025(1, 4, 2, 3, 4, 10, 12), Box2025(0, 5, 3, 12, 2, 20, 9)]
    assert [box.as_dict() for box in case.boxes if box] == BOXES
    # stored order is the array index (z, y, x), whatever the script's text says ([x, y, z])
    assert case.clicks == [
        [Click((2, 7, 5), True), Click((4, 8, 18), True)],
        [Click((3, 5, 15), False), Click((4, 8, 18), True)],
    ]
    assert case.prev_pred is not None and case.prev_pred.shape == SHAPE


def test_ragged_click_orders_as_an_object_array_read_the_same(tmp_path):
    path = tmp_path / "MR_Brain_002.npz"
    order = np.empty(2, dtype=object)
    order[0], order[1] = ["fg"], []  # a class without an error got no click this step
    np.savez_compressed(
        path,
        imgs=volume(),
        boxes=BOXES,
        clicks=[{"fg": [[1, 2, 3]], "bg": []}, {"fg": [], "bg": []}],
        clicks_order=order,
    )
    case = read_2025_npz(path)
    assert case.clicks == [[Click((1, 2, 3), True)], []]


def test_a_step_zero_case_is_a_box_study_claimed_by_the_npz_kind(tmp_path):
    write_like_the_script(tmp_path / "CT_Abdomen_001.npz", clicks=False)
    found = discover(tmp_path)
    assert [s.name for s in found.studies] == ["CT_Abdomen_001"]
    study, _ = format_of(found.studies[0]).load(found.studies[0])
    assert study.modality == "CT" and study.spacing == (0.8, 0.8, 2.5)
    assert study.boxes.tolist() == [[3, 4, 1, 10, 12, 4], [12, 2, 0, 20, 9, 5]]  # [x0, y0, z0, x1, y1, z1]


def test_cases_with_clicks_become_prompts_with_clicks_in_the_stored_order(tmp_path):
    from worker.contract.prompts import Click as PromptClick

    study = study_from_2025(write_like_the_script(tmp_path / "CT_Abdomen_001.npz"))
    case = read_2025_npz(tmp_path / "CT_Abdomen_001.npz")
    for label, box, clicks in zip(study.prompts.labels, case.boxes, case.clicks):
        assert label.box.coords == tuple(box.as_3d())
        assert label.clicks == tuple(PromptClick((c.zyx[2], c.zyx[1], c.zyx[0]), c.positive) for c in clicks)
    assert study.prompts.has_clicks
    path = tmp_path / "CT_Vessels_003.npz"
    np.savez_compressed(path, imgs=volume(), clicks=[{"fg": [[1, 2, 3]], "bg": []}], clicks_order=[["fg"]])
    assert read_2025_npz(path).boxes is None
    alone = study_from_2025(path).prompts.labels
    assert len(alone) == 1 and alone[0].box is None and alone[0].clicks == (PromptClick((3, 2, 1), True),)


def test_a_malicious_pickle_is_refused_by_name_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = np.empty(2, dtype=object)
    evil[0] = BOXES[0]
    evil[1] = {"z_min": Marker(marker)}  # nested inside a dict, as an attacker would hide it
    path = tmp_path / "CT_Evil_001.npz"
    np.savez_compressed(path, imgs=volume(), boxes=evil)
    assert is_2025_npz(path)  # it looks like a 2025 file...
    with pytest.raises(StudyError, match=r"boxes.*refused to load posix\.system|boxes.*refused to load os\.system"):
        read_2025_npz(path)  # ...and is refused on the global it names
    with pytest.raises(StudyError):
        study_from_2025(path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        restricted_loads(pickle.dumps(eval, protocol=4))
    with np.load(path, allow_pickle=True) as data:  # the control: the file really is malicious
        data["boxes"]
    assert marker.exists()


def test_an_object_member_other_than_the_prompts_is_refused(tmp_path):
    path = tmp_path / "CT_Odd_001.npz"
    np.savez_compressed(path, imgs=np.array([volume(), None], dtype=object), boxes=BOXES)
    with pytest.raises(StudyError, match="'imgs' holds Python objects"):
        read_2025_npz(path)


@pytest.mark.parametrize(
    "boxes, clicks, order, message",
    [
        ([{"z_min": 0}], None, None, "expected a dict with keys"),
        ([{**BOXES[0], "z_max": 9}], None, None, "inconsistent box"),
        ([{**BOXES[0], "z_min": "1"}], None, None, "expected an integer"),
        (BOXES, [{"fg": [[1, 2]], "bg": []}, {"fg": [], "bg": []}], [["fg"], []], "3-element coordinate"),
        (BOXES, [{"fg": [[9, 2, 3]], "bg": []}, {"fg": [], "bg": []}], [["fg"], []], "outside the volume"),
        (BOXES, [{"fg": [[1, 2, 3]], "bg": []}, {"fg": [], "bg": []}], [["bg"], []], "does not match"),
        (BOXES, [{"fg": [[1, 2, 3]], "bg": []}], [["fg"]], "2 boxes but clicks for 1"),
    ],
)
def test_malformed_prompts_get_a_clear_error(tmp_path, boxes, clicks, order, message):
    path = tmp_path / "CT_Bad_001.npz"
    arrays = {"imgs": volume(), "boxes": np.array(boxes + [None], dtype=object)[:-1]}
    if clicks is not None:
        arrays["clicks"] = np.array(clicks + [None], dtype=object)[:-1]
        arrays["clicks_order"] = np.array(order + [None], dtype=object)[:-1]
    np.savez_compressed(path, **arrays)
    with pytest.raises(StudyError, match=message) as error:
        read_2025_npz(path)
    assert "CT_Bad_001.npz" in str(error.value)


def test_a_truncated_pickle_is_refused(tmp_path):
    path = tmp_path / "CT_Cut_001.npz"
    buffer = io.BytesIO()
    np.save(buffer, np.array(BOXES, dtype=object), allow_pickle=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("imgs.npy", _npy(volume()))
        archive.writestr("boxes.npy", buffer.getvalue()[:-20])
    with pytest.raises(StudyError, match="boxes.*truncated"):
        read_2025_npz(path)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_clicks_are_read_in_the_order_stored_not_the_order_documented(tmp_path):
    """The script's text says [x, y, z]; it stores the (z, y, x) index. In a (6, 20, 24) volume, [4, 8, 18] is a
    voxel only as (z, y, x) and [20, 3, 2] only as (x, y, z): the first is read, the second refused."""
    for stored, readable in (([4, 8, 18], True), ([20, 3, 2], False)):
        path = tmp_path / f"CT_Order_{stored[0]}.npz"
        np.savez_compressed(
            path, imgs=volume(), boxes=BOXES[:1], clicks=[{"fg": [stored], "bg": []}], clicks_order=[["fg"]]
        )
        if readable:
            assert read_2025_npz(path).clicks == [[Click((4, 8, 18), True)]]
        else:
            with pytest.raises(StudyError, match=r"\[20, 3, 2\] \(z, y, x\) lies outside the volume"):
                read_2025_npz(path)
