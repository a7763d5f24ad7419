"""`producer overlay` writes real PNGs of the right size, with the label colours exactly at the mask pixels."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from producer.overlay import AGREE, GT_ONLY, PRED_ONLY, default_slices, label_colour, overlay_command, read_png


def blended(grey: int, label: int, alpha: float = 0.5) -> np.ndarray:
    return np.rint((1 - alpha) * grey + alpha * np.array(label_colour(label), np.float32)).astype(np.uint8)


@pytest.fixture()
def case_dirs(tmp_path):
    imgs, segs, gts = (tmp_path / d for d in ("imgs", "segs", "gts"))
    for d in (imgs, segs, gts):
        d.mkdir()
    # 2D: 40 x 60 RGB of constant grey 100; GT label 1 at [5:15, 5:20], label 2 at [20:30, 30:50]
    image2d = np.full((40, 60, 3), 100, np.uint8)
    gt2d = np.zeros((40, 60), np.uint16)
    gt2d[5:15, 5:20], gt2d[20:30, 30:50] = 1, 2
    pred2d = gt2d.copy()
    pred2d[5:15, 15:25] = 1  # 5 columns too far right: [5:15, 20:25] is prediction-only
    pred2d[20:30, 30:35] = 0  # [20:30, 30:35] is ground-truth-only
    np.savez(imgs / "2DBox_CT_t.npz", imgs=image2d, boxes=np.array([[5, 5, 19, 14]]))
    np.savez(segs / "2DBox_CT_t.npz", segs=pred2d)
    np.savez(gts / "2DBox_CT_t.npz", gts=gt2d)
    # 3D: 10 x 32 x 24 grey 50, label 3 in slices 2..6
    volume = np.full((10, 32, 24), 50, np.uint8)
    gt3d = np.zeros(volume.shape, np.uint16)
    gt3d[2:7, 4:12, 6:18] = 3
    np.savez(imgs / "3DBox_MR_t.npz", imgs=volume, boxes=np.array([[6, 4, 2, 17, 11, 6]]))
    np.savez(segs / "3DBox_MR_t.npz", segs=gt3d)
    np.savez(gts / "3DBox_MR_t.npz", gts=gt3d)
    return tmp_path


def run(*args) -> str:
    result = CliRunner().invoke(overlay_command, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_2d_overlay_panels_size_and_colours(case_dirs):
    out = case_dirs / "out"
    run(
        "--imgs",
        case_dirs / "imgs",
        "--segs",
        case_dirs / "segs",
        "--gts",
        case_dirs / "gts",
        "--out",
        out,
        "--case",
        "2DBox_CT_t",
    )
    png = out / "2DBox_CT_t.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rgb = read_png(png)
    assert rgb.shape == (40, 3 * 60, 3)
    gt_panel, pred_panel, diff = rgb[:, :60], rgb[:, 60:120], rgb[:, 120:]
    assert (gt_panel[5:15, 5:20] == blended(100, 1)).all() and (gt_panel[20:30, 30:50] == blended(100, 2)).all()
    assert (gt_panel[0, 0] == 100).all() and (pred_panel[35, 55] == 100).all()  # background untouched
    assert (pred_panel[5:15, 20:25] == blended(100, 1)).all() and (pred_panel[20:30, 30:35] == 100).all()
    assert (diff[5:15, 5:15] == AGREE).all() and (diff[5:15, 20:25] == PRED_ONLY).all()
    assert (diff[20:30, 30:35] == GT_ONLY).all() and (diff[20:30, 36:50] == AGREE).all()
    assert label_colour(1) != label_colour(2)


def test_png_is_readable_by_an_independent_decoder(case_dirs):
    image_module = pytest.importorskip("PIL.Image", reason="Pillow not installed")
    out = case_dirs / "out"
    run("--imgs", case_dirs / "imgs", "--segs", case_dirs / "segs", "--out", out, "--case", "2DBox_CT_t")
    with image_module.open(out / "2DBox_CT_t.png") as im:
        decoded = np.asarray(im.convert("RGB"))
    assert decoded.shape == (40, 60, 3)  # no --gts: the prediction panel alone
    assert np.array_equal(decoded, read_png(out / "2DBox_CT_t.png"))
    assert (decoded[5:15, 20:25] == blended(100, 1)).all()


def test_3d_default_slices_cover_the_labelled_range(case_dirs):
    out = case_dirs / "out"
    output = run(
        "--imgs",
        case_dirs / "imgs",
        "--segs",
        case_dirs / "segs",
        "--gts",
        case_dirs / "gts",
        "--out",
        out,
        "--case",
        "3DBox_MR_t",
    )
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["3DBox_MR_t_z003.png", "3DBox_MR_t_z004.png", "3DBox_MR_t_z005.png"]
    assert "wrote 3 overlay PNG(s)" in output
    rgb = read_png(out / "3DBox_MR_t_z004.png")
    assert rgb.shape == (32, 3 * 24, 3)
    assert (rgb[4:12, 6:18] == blended(50, 3)).all() and (rgb[4:12, 48 + 6 : 48 + 18] == AGREE).all()


def test_explicit_slice_and_bad_slice(case_dirs):
    out = case_dirs / "out"
    run(
        "--imgs", case_dirs / "imgs", "--segs", case_dirs / "segs", "--out", out, "--case", "3DBox_MR_t", "--slice", "0"
    )
    assert (read_png(out / "3DBox_MR_t_z000.png") == 50).all()  # nothing labelled there
    result = CliRunner().invoke(
        overlay_command,
        ["--imgs", str(case_dirs / "imgs"), "--segs", str(case_dirs / "segs"), "--out", str(out), "--slice", "99"],
    )
    assert result.exit_code != 0 and "outside" in result.output


def test_default_slices_of_an_empty_volume_is_the_middle():
    assert default_slices(np.zeros((9, 4, 4), np.uint16)) == [4]
