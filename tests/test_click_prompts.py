"""Clicks in the prompts sidecar (issue 23, part 1): parsed, mapped from mm like boxes, refused by name where they
cannot be placed, and run by `producer submit` (box-echo model: the plumbing, not accuracy), equal to the engine's
labelwise run of the same prompts; box-only sidecars keep their box arrays and result keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dicom_factory import SeriesSpec, ramp_volume, write_series
from producer.cli import cli
from producer.discovery import discover
from producer.loading import load_study
from worker.contract.prompts import Click
from worker.contract.study import StudyError


def series(tmp_path: Path, entry: dict) -> Path:
    spec = SeriesSpec(stored=ramp_volume(6, 32, 32), pixel_spacing=(1.0, 1.0), step=2.0, origin=(0.0, 0.0, 0.0))
    write_series(tmp_path / "in" / "ct", spec)
    (tmp_path / "in" / "ct" / "prompts.json").write_text(json.dumps(entry))
    return tmp_path / "in"


def test_clicks_are_read_in_voxels_and_mm_and_box_only_sidecars_are_unchanged(tmp_path):
    entry = {
        "modality": "CT",
        "boxes": [
            {
                "label": "liver",
                "voxel": [2, 2, 1, 20, 20, 4],
                "clicks": [{"voxel": [5, 6, 2]}, {"mm": [10, 12, 6], "positive": False}],
            },
            {"label": "vessel", "clicks": [{"voxel": [25, 25, 3]}]},
        ],
    }
    study = load_study(discover(series(tmp_path, entry)).studies[0])
    liver, vessel = study.prompts.labels
    assert liver.box.coords == (2, 2, 1, 20, 20, 4)
    assert liver.clicks == (Click((5, 6, 2)), Click((10, 12, 3), foreground=False))  # z = 6 mm / 2 mm per slice
    assert vessel.box is None and vessel.clicks == (Click((25, 25, 3)),)
    plain = load_study(discover(series(tmp_path / "plain", {"boxes": [{"voxel": [2, 2, 1, 20, 20, 4]}]})).studies[0])
    assert plain.prompts.boxes_only and plain.boxes.dtype == np.int64


@pytest.mark.parametrize(
    "label, message",
    [
        ({"voxel": [2, 2, 1, 20, 20, 4], "clicks": [{"voxel": [40, 2, 1]}]}, "click .* lies outside the image"),
        ({"voxel": [2, 2, 1, 20, 20, 4], "clicks": [{"voxel": [4, 2]}]}, r"a click on this image is \[x, y, z\]"),
        ({"clicks": []}, 'or "clicks"'),
        ({"voxel": [2, 2, 1, 20, 20, 4], "clicks": [{"voxel": [1, 1, 1], "mm": [1, 1, 1]}]}, "exactly one"),
        ({"clicks": [{"voxel": [1, 1, 1], "positive": "yes"}]}, '"positive" must be true or false'),
    ],
)
def test_clicks_that_cannot_be_placed_are_named(tmp_path, label, message):
    folder = series(tmp_path, {"modality": "CT", "boxes": [label]})
    with pytest.raises(StudyError, match=message):
        load_study(discover(folder).studies[0])


def test_submit_runs_clicks_labelwise_and_equals_the_engine(echo_models_dir, tmp_path):
    from worker.engine.engine import Engine, EngineSettings

    entry = {
        "modality": "CT",
        "boxes": [
            {"label": "a", "voxel": [2, 2, 1, 20, 20, 4], "clicks": [{"voxel": [18, 18, 2], "positive": False}]},
            {"label": "b", "clicks": [{"voxel": [26, 26, 3]}]},
        ],
    }
    folder = series(tmp_path, entry)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["submit", str(folder), "--out", str(out), "--models-dir", str(echo_models_dir)])
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(text) for text in (out / "metrics.jsonl").read_text().splitlines()]
    assert line["status"] == "ok" and line["metrics"]["extra"]["labelwise"] is True
    study = load_study(discover(folder).studies[0])
    expected = Engine(EngineSettings(echo_models_dir)).segment(study).labels
    import highdicom as hd

    from producer.formats.dicom import read_layout

    uids = list(read_layout(sorted(p for p in (folder / "ct").iterdir() if p.suffix != ".json")).slice_uids)
    seg = hd.seg.segread(out / "ct.seg.dcm").get_pixels_by_source_instance(uids, combine_segments=True)
    np.testing.assert_array_equal(seg, expected)
    assert (expected == 2).any() and (expected == 1).any()
