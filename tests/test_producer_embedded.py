"""`producer submit` / `producer demo` in-process: outputs, metrics lines, and per-study errors."""

import json
import zipfile

import numpy as np
from click.testing import CliRunner

import producer.cli as cli_module
from producer.cli import cli
from producer.phantoms import write_phantoms


def write_npz(path, **arrays):
    np.savez_compressed(path, **arrays)
    return path


def test_submit_writes_masks_and_metrics_and_isolates_bad_studies(echo_models_dir, tmp_path):
    studies = tmp_path / "in"
    studies.mkdir()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    write_npz(studies / "2DBox_CT_good.npz", imgs=image, boxes=np.array([[10, 10, 40, 50]]))
    write_npz(studies / "2DBox_CT_inverted.npz", imgs=image, boxes=np.array([[40, 10, 10, 50]]))
    write_npz(studies / "2DBox_CT_floaty.npz", imgs=image.astype(np.float32), boxes=np.array([[10, 10, 40, 50]]))
    write_npz(studies / "2DBox_CT_pickled.npz", imgs=np.array([{"a": 1}], dtype=object), boxes=np.array([[1, 1, 5, 5]]))
    (studies / "3DBox_CT_truncated.npz").write_bytes((studies / "2DBox_CT_good.npz").read_bytes()[:200])
    write_npz(
        studies / "3DBox_MR_good.npz",
        imgs=rng.integers(0, 255, (6, 32, 32), dtype=np.uint8),
        boxes=np.array([[4, 4, 1, 20, 20, 4]]),
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["submit", str(studies), "--out", str(out), "--models-dir", str(echo_models_dir)])
    assert result.exit_code == 0, result.output
    lines = {r["study"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    assert set(lines) == {
        "2DBox_CT_good",
        "2DBox_CT_inverted",
        "2DBox_CT_floaty",
        "2DBox_CT_pickled",
        "3DBox_CT_truncated",
        "3DBox_MR_good",
    }
    assert lines["2DBox_CT_good"]["status"] == "ok" and lines["3DBox_MR_good"]["status"] == "ok"
    assert "inverted" in lines["2DBox_CT_inverted"]["error"]
    assert "uint8" in lines["2DBox_CT_floaty"]["error"]
    assert "unreadable" in lines["2DBox_CT_pickled"]["error"]
    assert "corrupt or truncated" in lines["3DBox_CT_truncated"]["error"]
    with np.load(out / "2DBox_CT_good.npz", allow_pickle=False) as seg:
        assert seg["segs"].dtype == np.uint16 and seg["segs"].shape == (64, 80) and seg["segs"].max() == 1
    assert zipfile.is_zipfile(out / "3DBox_MR_good.npz") and not (out / "2DBox_CT_inverted.npz").exists()
    good = lines["3DBox_MR_good"]["metrics"]
    assert good["counts"]["slices_encoded"] == 4 and good["provenance"]["strategy"] == "propagate"
    assert good["times"]["write"] > 0 and good["times"]["total"] > 0


def test_demo_falls_back_to_phantoms_and_scores_them(echo_models_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_module, "SHARED_CASES", tmp_path / "no-such-cases")
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--models-dir", str(echo_models_dir)])
    assert result.exit_code == 0, result.output
    expected = {p.stem for p in write_phantoms(tmp_path / "expected")}
    assert {p.stem for p in out.glob("*.npz")} == expected
    assert "leaderboard" in result.output


def test_huge_image_is_rejected_from_its_header_before_loading(tmp_path, monkeypatch):
    import pytest

    from producer.formats import npz as npz_format
    from worker.contract.study import StudyError

    path = write_npz(
        tmp_path / "3DBox_CT_big.npz", imgs=np.zeros((10, 100, 100), np.uint8), boxes=np.array([[1, 1, 1, 5, 5, 5]])
    )
    assert npz_format.stored_shape(path, "imgs") == (10, 100, 100)
    monkeypatch.setenv(npz_format.MAX_VOXELS_ENV, "99999")
    loaded = []
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda self, key: loaded.append(key))
    with pytest.raises(StudyError, match="above the limit"):
        npz_format.load_npz_study(path)
    assert loaded == []  # refused before any array was read
