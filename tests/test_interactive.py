"""The 2025 protocol: click placement and AUC arithmetic on small synthetic masks (expected values worked out by
hand), the box dict from the ground truth, and the whole protocol on a small derived case with the real model,
through `producer evaluate --interactive`."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner

from models.phantoms import build_phantoms
from producer.cli import cli
from producer.derived import from_volume, write_cases
from producer.interactive import (
    InteractiveCase,
    box_of_class,
    box_step,
    click_auc,
    error_centre,
    load_cases,
    run_protocol,
)
from worker.engine.engine import Engine, EngineSettings
from worker.engine.refine import CANDIDATES, ClickPrompt


def test_auc_is_the_trapezoid_over_the_five_click_steps():
    # the box step (first value) is left out; 4 unit intervals: (0.5+0.6)/2 + (0.6+0.7)/2 + (0.7+0.8)/2 + (0.8+0.9)/2
    assert click_auc([0.1, 0.5, 0.6, 0.7, 0.8, 0.9]) == pytest.approx(2.8)
    assert click_auc([0.0, 1, 1, 1, 1, 1]) == pytest.approx(4.0)  # the most a case can score
    assert click_auc([0.9, 0.0, 0.0, 0.0, 0.0, 1.0]) == pytest.approx(0.5)


def test_the_click_goes_to_the_centre_of_the_largest_error_component():
    gt = np.zeros((12, 12), bool)
    gt[1:6, 1:6] = True  # 5x5 object, entirely missed (25 px of error)
    pred = np.zeros_like(gt)
    pred[8:11, 8:11] = True  # 3x3 false positive (9 px)
    # the largest error is the missed square; its centre (3, 3) is 3 px from the nearest non-error pixel, the
    # only pixel that far: a foreground click there
    assert error_centre(gt, pred) == ClickPrompt((0, 3, 3), positive=True)
    pred[1:6, 1:6] = True  # now only the false positive is wrong: a background click at its centre
    assert error_centre(gt, pred) == ClickPrompt((0, 9, 9), positive=False)
    assert error_centre(gt, gt) is None


def test_equally_central_voxels_are_chosen_with_numpy_seed_42():
    gt = np.zeros((8, 8), bool)
    gt[3:5, 2:6] = True  # 2x4 block: all 8 pixels are 1 px from its edge
    # candidates in C order (3,2) (3,3) (3,4) (3,5) (4,2) (4,3) (4,4) (4,5); RandomState(42).choice(8) == 6
    assert error_centre(gt, np.zeros_like(gt)) == ClickPrompt((0, 4, 4), positive=True)


def test_errors_are_26_connected_in_3d_and_clicks_are_z_y_x_indices():
    gt = np.zeros((6, 10, 12), bool)
    diagonal = [(1, 1, 1), (2, 2, 2), (3, 3, 3)]  # one component of 3 when 26-connected, 3 of 1 when 6-connected
    for index in diagonal:
        gt[index] = True
    gt[1, 6, 6] = gt[1, 6, 7] = True  # face-connected pair: the largest component under 6-connectivity
    click = error_centre(gt, np.zeros_like(gt))
    assert click is not None and click.positive and click.zyx in diagonal
    assert click.zyx == diagonal[2]  # three equally central voxels: RandomState(42).choice(3) == 2


class FixedWidening:
    def integers(self, low, high, size):
        assert (low, high, size) == (0, 6, 4)  # 0..5 px at 256 scale, per side
        return np.array([1, 2, 3, 5])


def test_the_box_dict_takes_the_median_voxels_slice_and_widens_its_box():
    gt = np.zeros((8, 100, 200), bool)  # longest side 200: 1 px at 256 scale is 200/256 px here
    gt[2, 50, 60] = gt[3, 50, 60] = True
    gt[6, 40:45, 100:110] = True  # 50 voxels on slice 6: the median foreground voxel lies there
    box = box_of_class(gt, FixedWidening())
    assert (box.z_min, box.z_max, box.z_mid) == (2, 6, 6)
    # tight box on z_mid: x 100..109, y 40..44; widened by (1, 2, 3, 5) * 200/256 = 0.78, 1.56, 2.34, 3.91 px,
    # truncated to whole pixels: 99.2 -> 99, 38.4 -> 38, 111.3 -> 111, 47.9 -> 47
    assert (box.x_min, box.y_min, box.x_max, box.y_max) == (99, 38, 111, 47)


@pytest.fixture(scope="module")
def derived_cases(tmp_path_factory):
    """Derived cases of the CT phantom (no dev data needed): one of its 2D slices and its cropped 3D sub-volume,
    each in a folder of its own in the challenge layout."""
    phantom = next(p for p in build_phantoms() if p.name == "3DBox_CT_phantom")
    cases = from_volume("CT_phantom", phantom.imgs, phantom.gts, phantom.spacing)
    picked = {
        "2d": next(c for c in cases if not c.is_3d),
        "3d": next(c for c in cases if c.is_3d and "crop" in c.name),
    }
    return {kind: write_cases([case], tmp_path_factory.mktemp(kind)) for kind, case in picked.items()}


@pytest.fixture(scope="module")
def engine(real_models_dir):
    return Engine(EngineSettings(real_models_dir, threads=2))


def test_the_protocol_on_a_small_derived_3d_case(engine, derived_cases):
    [case] = load_cases(derived_cases["3d"] / "imgs", derived_cases["3d"] / "gts")
    first = box_step(engine, case)
    score = run_protocol(engine, case, CANDIDATES["guarded"], first=first)
    assert len(score.dsc) == len(score.nsd) == len(score.seconds) == 6
    assert score.dsc_auc == pytest.approx(click_auc(score.dsc)) and 0 < score.dsc_auc <= 4.0
    assert score.nsd_auc == pytest.approx(click_auc(score.nsd))
    assert all(0.0 <= v <= 1.0 for v in score.dsc + score.nsd) and all(t > 0 for t in score.seconds)
    assert score.dsc[0] > 0.5, score.dsc  # the box step works on a phantom
    # one click per class per step where the class still has an error, each a (z, y, x) index in the volume
    assert all(len(placed) <= score.classes for placed in score.clicks) and any(score.clicks)
    assert all(0 <= c < n for placed in score.clicks for click in placed for c, n in zip(click.zyx, case.gts.shape))
    # the guards: on this case no click costs more than a sliver, and five clicks gain
    assert min(np.diff(score.dsc)) > -0.01 and score.dsc[-1] > score.dsc[0], score.dsc
    none = run_protocol(engine, case, CANDIDATES["none"], first=first)
    assert none.dsc == [score.dsc[0]] * 6  # clicks ignored: flat at the same box step


def test_evaluate_interactive_prints_the_table_and_draws_the_plot(real_models_dir, derived_cases, tmp_path):
    derived_case_dir = derived_cases["2d"]
    plot, table = tmp_path / "dsc.png", tmp_path / "steps.csv"
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--interactive",
            "--gts",
            str(derived_case_dir / "gts"),
            "--imgs",
            str(derived_case_dir / "imgs"),
            "--plot",
            str(plot),
            "--csv",
            str(table),
            "--models-dir",
            str(real_models_dir),
            "--threads",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "DSC_AUC" in result.output and "guarded" in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 1
    for row in rows:
        dsc = [float(row[f"dsc_{k}"]) for k in range(6)]
        assert float(row["dsc_auc"]) == pytest.approx(click_auc(dsc), abs=1e-5)
        assert float(row["dsc_final"]) == pytest.approx(dsc[-1], abs=1e-6)


def test_evaluate_interactive_needs_images_and_a_known_candidate(derived_cases):
    derived_case_dir = derived_cases["2d"]
    runner = CliRunner()
    missing = runner.invoke(cli, ["evaluate", "--interactive", "--gts", str(derived_case_dir / "gts")])
    assert missing.exit_code != 0 and "--imgs" in missing.output
    unknown = runner.invoke(
        cli,
        [
            "evaluate",
            "--interactive",
            "--gts",
            str(derived_case_dir / "gts"),
            "--imgs",
            str(derived_case_dir / "imgs"),
            "--refine",
            "magic",
        ],
    )
    assert unknown.exit_code != 0 and "magic" in unknown.output


def test_a_2d_case_is_one_slice(engine):
    phantom = next(p for p in build_phantoms() if p.name == "2DBox_CT_phantom")
    case = InteractiveCase("2DBox_CT_phantom", phantom.imgs, phantom.gts, None)
    score = run_protocol(engine, case, CANDIDATES["guarded"], steps=2)
    assert len(score.dsc) == 3 and all(c.zyx[0] == 0 for placed in score.clicks for c in placed)
