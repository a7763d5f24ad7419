"""The challenge metrics on analytic cases, and the `evaluate` command end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from producer.evaluate import (
    CaseScore,
    evaluate_command,
    evaluate_dirs,
    leaderboard,
    modality_means,
    modality_of,
    score_case,
)

pytestmark = pytest.mark.filterwarnings("error")  # no NaN / divide / deprecation warnings may escape


def cube(shape=(20, 24, 28), start=(5, 7, 9), size=10, label=1) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    z, y, x = start
    out[z : z + size, y : y + size, x : x + size] = label
    return out


def shifted(mask: np.ndarray, voxels: int, axis: int) -> np.ndarray:
    return np.roll(mask, voxels, axis=axis)


def test_identical_masks_score_one():
    gts = cube()
    gts[1:3, 1:4, 1:5] = 2
    assert score_case(gts, gts.copy(), (1.0, 1.0, 1.0)) == (1.0, 1.0)


def test_identical_2d_masks_score_one():
    gts = np.zeros((40, 50), np.uint16)
    gts[5:20, 5:30] = 1
    gts[25:35, 10:45] = 2
    assert score_case(gts, gts.copy(), None) == (1.0, 1.0)


def test_empty_predicted_label_halves_dsc():
    gts = cube()
    gts[1:3, 1:4, 1:5] = 2
    segs = np.where(gts == 1, 1, 0).astype(np.uint16)  # label 2 never predicted
    dsc, nsd = score_case(gts, segs, (1.0, 1.0, 1.0))
    assert dsc == pytest.approx(0.5)
    assert nsd == pytest.approx(0.5)  # DSC > 0.2, so NSD is mean(1, 0)


def test_labels_are_those_present_in_gts():
    gts = np.zeros((30, 30), np.uint8)
    gts[2:10, 2:10] = 1
    gts[15:25, 15:25] = 3  # label 2 absent from the ground truth
    segs = gts.copy()
    segs[0:2, 20:30] = 2  # a spurious label 2 is not scored
    assert score_case(gts, segs, None) == (1.0, 1.0)


def test_one_voxel_shift_is_within_tolerance():
    gts = cube()
    dsc, nsd = score_case(gts, shifted(gts, 1, axis=2), (1.0, 1.0, 1.0))
    assert dsc == pytest.approx(0.9)  # 9 of 10 slabs overlap
    assert nsd == pytest.approx(1.0)


def test_four_voxel_shift_is_beyond_tolerance():
    gts = cube()
    dsc, nsd = score_case(gts, shifted(gts, 4, axis=2), (1.0, 1.0, 1.0))
    assert dsc == pytest.approx(0.6)
    assert 0.3 < nsd < 0.8


def test_2d_shift_uses_pixel_tolerance():
    gts = np.zeros((40, 40), np.uint8)
    gts[10:25, 10:25] = 1
    assert score_case(gts, shifted(gts, 2, axis=1), None)[1] == pytest.approx(1.0)
    assert score_case(gts, shifted(gts, 5, axis=1), None)[1] < 0.9


def test_2d_nsd_is_scored_as_a_one_slice_volume_like_the_official_script():
    gts = np.zeros((40, 40), np.uint8)
    gts[10:25, 10:25] = 1
    segs = shifted(gts, 5, axis=1)
    as_volume = score_case(gts[..., None], segs[..., None], (1.0, 1.0, 1.0))
    assert score_case(gts, segs, None) == pytest.approx(as_volume)
    # a pure 2D contour comparison would be far lower: the slab's flat faces count as surface
    assert as_volume[1] > 0.8


@pytest.mark.parametrize("shift", [8, 9])
def test_nsd_is_zero_when_dsc_at_most_0_2(shift):
    gts = cube()
    dsc, nsd = score_case(gts, shifted(gts, shift, axis=2), (1.0, 1.0, 1.0))
    assert dsc == pytest.approx((10 - shift) / 10)
    assert dsc <= 0.2
    assert nsd == 0.0  # the surfaces touch, so a computed NSD would be > 0


def test_nsd_is_computed_just_above_threshold():
    gts = cube()
    dsc, nsd = score_case(gts, shifted(gts, 7, axis=2), (1.0, 1.0, 1.0))
    assert dsc == pytest.approx(0.3)
    assert nsd > 0.0


def test_spacing_is_applied_as_stored():
    # Stored spacing is (x, y, z) but the array is (z, y, x); the challenge passes it as stored, so
    # spacing[0] scales array axis 0.
    gts = cube()
    along_axis0, along_axis2 = shifted(gts, 1, axis=0), shifted(gts, 1, axis=2)
    large_first = (3.0, 1.0, 1.0)
    assert score_case(gts, along_axis0, large_first)[1] < 0.9  # 3 mm step > 2 mm tolerance
    assert score_case(gts, along_axis2, large_first)[1] == pytest.approx(1.0)
    large_last = (1.0, 1.0, 3.0)
    assert score_case(gts, along_axis0, large_last)[1] == pytest.approx(1.0)
    assert score_case(gts, along_axis2, large_last)[1] < 0.9


def test_input_errors():
    gts = cube()
    with pytest.raises(ValueError, match="shape"):
        score_case(gts, gts[:-1], (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        score_case(gts, gts, (1.0, 1.0))
    with pytest.raises(ValueError, match="no foreground"):
        score_case(np.zeros_like(gts), gts, None)


def test_modality_is_second_token():
    assert modality_of("3DBox_CT_tssm.npz") == "CT"
    assert modality_of("2DBox_X-Ray_chest_01.npz") == "X-Ray"
    assert modality_of("2DBox_Dermoscopy") == "Dermoscopy"


def test_leaderboard_is_mean_of_modality_means():
    scores = [
        CaseScore("3DBox_CT_a", "CT", 1.0, 0.9),
        CaseScore("3DBox_CT_b", "CT", 0.6, 0.5),
        CaseScore("3DBox_MR_c", "MR", 0.2, 0.1),
    ]
    means = modality_means(scores)
    assert means["CT"] == pytest.approx((0.8, 0.7))
    assert means["MR"] == pytest.approx((0.2, 0.1))
    assert leaderboard(scores) == pytest.approx((0.5, 0.4))  # the mean of cases would be (0.6, 0.5)


def write_case(root: Path, name: str, gts: np.ndarray, segs: np.ndarray | None, spacing=None) -> None:
    (root / "gts").mkdir(exist_ok=True)
    (root / "segs").mkdir(exist_ok=True)
    extra = {} if spacing is None else {"spacing": np.asarray(spacing, np.float64)}
    np.savez_compressed(root / "gts" / name, gts=gts, **extra)
    if segs is not None:
        np.savez_compressed(root / "segs" / name, segs=segs)


@pytest.fixture()
def case_dirs(tmp_path: Path) -> Path:
    gts3d = cube()
    write_case(tmp_path, "3DBox_CT_shift1.npz", gts3d, shifted(gts3d, 1, 0).astype(np.uint16), (1.0, 1.0, 1.0))
    # The same shift with a 3 mm stored first spacing entry leaves the tolerance.
    write_case(tmp_path, "3DBox_MR_coarse.npz", gts3d, shifted(gts3d, 1, 0).astype(np.uint16), (3.0, 1.0, 1.0))
    gts2d = np.zeros((32, 32), np.uint8)
    gts2d[4:12, 4:12], gts2d[20:28, 20:28] = 1, 2
    write_case(tmp_path, "2DBox_CT_half.npz", gts2d, np.where(gts2d == 1, 1, 0).astype(np.uint16))
    write_case(tmp_path, "2DBox_US_absent.npz", gts2d, None)
    return tmp_path


def test_evaluate_dirs_scores_and_flags(case_dirs: Path):
    scores = {s.name: s for s in evaluate_dirs(case_dirs / "gts", case_dirs / "segs")}
    assert sorted(scores) == ["2DBox_CT_half", "2DBox_US_absent", "3DBox_CT_shift1", "3DBox_MR_coarse"]
    assert scores["3DBox_CT_shift1"].nsd == pytest.approx(1.0)
    assert scores["3DBox_MR_coarse"].dsc == pytest.approx(0.9)
    assert scores["3DBox_MR_coarse"].nsd < 0.9
    assert (scores["2DBox_CT_half"].dsc, scores["2DBox_CT_half"].nsd) == pytest.approx((0.5, 0.5))
    assert scores["2DBox_US_absent"] == CaseScore("2DBox_US_absent", "US", 0.0, 0.0, missing=True)


def test_evaluate_dirs_names_the_case_on_shape_mismatch(case_dirs: Path):
    write_case(case_dirs, "3DBox_CT_bad.npz", cube(), cube()[:, :-1], (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="3DBox_CT_bad.npz.*shape"):
        evaluate_dirs(case_dirs / "gts", case_dirs / "segs")


def test_cli_writes_csv(case_dirs: Path):
    out = case_dirs / "report" / "scores.csv"
    args = ["--gts", str(case_dirs / "gts"), "--segs", str(case_dirs / "segs"), "--csv", str(out)]
    result = CliRunner().invoke(evaluate_command, args)
    assert result.exit_code == 0, result.output
    assert "leaderboard" in result.output and "2DBox_US_absent" in result.output
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["2DBox_CT_half", "2DBox_US_absent", "3DBox_CT_shift1", "3DBox_MR_coarse"]
    by_case = {r["case"]: r for r in rows}
    assert by_case["2DBox_CT_half"]["modality"] == "CT"
    assert float(by_case["2DBox_CT_half"]["dsc"]) == pytest.approx(0.5)
    assert float(by_case["3DBox_CT_shift1"]["nsd"]) == pytest.approx(1.0)
    assert by_case["2DBox_US_absent"]["missing"] == "1"
    assert by_case["3DBox_MR_coarse"]["missing"] == "0"


def test_cli_reports_shape_mismatch(case_dirs: Path):
    write_case(case_dirs, "3DBox_CT_bad.npz", cube(), cube()[:, :-1], (1.0, 1.0, 1.0))
    result = CliRunner().invoke(evaluate_command, ["--gts", str(case_dirs / "gts"), "--segs", str(case_dirs / "segs")])
    assert result.exit_code != 0
    assert "3DBox_CT_bad.npz" in result.output
