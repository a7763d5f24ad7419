"""NIfTI in (axis order, spacing, affine, scaling, modality from the sidecar) and the label map out."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from producer.discovery import find_studies
from producer.formats import intensity
from producer.formats.nifti import load_nifti_volume
from producer.loading import load_study
from producer.outcome import StudyOutcome
from producer.outputs import OutputWriter, output_path
from worker.contract.study import StudyError


def oblique_flipped_affine(zooms=(0.9, 1.1, 3.0)) -> np.ndarray:
    """A rotated grid with the i axis flipped, so index order and world order disagree."""
    angle = 0.35
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    axes = rotation @ np.diag([-1.0, 1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = axes * np.asarray(zooms)[None, :]
    affine[:3, 3] = [80.0, -110.0, -40.0]
    return affine


def indexed_data(shape=(20, 16, 6)) -> np.ndarray:
    """data[i, j, k] = 1 + i + 100 j + 10000 k: every voxel tells where it is."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (1 + i + 100 * j + 10000 * k).astype(np.int32)


def save(path: Path, data: np.ndarray, affine: np.ndarray, sidecar: dict | None = None, codes=(1, 1), **header) -> Path:
    """codes: (sform_code, qform_code); a zero code leaves that transform unset."""
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine if codes[0] else None, code=codes[0])
    image.set_qform(affine if codes[1] else None, code=codes[1])
    for key, value in header.items():
        image.header[key] = value
    nib.save(image, str(path))
    if sidecar is not None:
        stem = path.name.split(".nii")[0]
        path.with_name(stem + ".prompts.json").write_text(json.dumps(sidecar))
    return path


def test_axis_order_spacing_and_affine(tmp_path: Path):
    data, affine = indexed_data(), oblique_flipped_affine()
    volume = load_nifti_volume(save(tmp_path / "ct.nii.gz", data, affine))
    assert volume.values.shape == (6, 16, 20)  # (D, H, W) = (k, j, i)
    for i, j, k in [(0, 0, 0), (19, 15, 5), (7, 3, 2)]:
        assert volume.values[k, j, i] == data[i, j, k]
    assert volume.spacing == pytest.approx((0.9, 1.1, 3.0))
    np.testing.assert_allclose(volume.geometry.affine, affine)
    assert volume.geometry.frame == "RAS" and volume.modality_tag is None


def test_scaled_data_gets_slope_and_intercept(tmp_path: Path):
    data = indexed_data((6, 5, 4)).astype(np.int16)
    path = save(tmp_path / "s.nii", data, np.eye(4), scl_slope=0.5, scl_inter=-100.0)
    np.testing.assert_allclose(load_nifti_volume(path).values, np.transpose(data * 0.5 - 100.0, (2, 1, 0)))


def test_study_needs_modality_from_the_sidecar(tmp_path: Path):
    path = save(tmp_path / "brain.nii.gz", indexed_data(), np.eye(4), {"boxes": [{"voxel": [1, 1, 0, 9, 9, 3]}]})
    with pytest.raises(StudyError, match='no modality.*set "modality" in its prompts sidecar'):
        load_study(find_studies(tmp_path)[0])
    path.with_name("brain.prompts.json").write_text(
        json.dumps({"modality": "MR", "boxes": [{"voxel": [1, 1, 0, 9, 9, 3]}]})
    )
    study = load_study(find_studies(tmp_path)[0])
    assert study.modality == "MR" and study.study_id == "brain" and study.is_3d
    assert study.image.shape == (6, 16, 20) and study.image.dtype == np.uint8
    expected = intensity.scale_percentiles(np.transpose(indexed_data(), (2, 1, 0)).astype(np.float32))
    np.testing.assert_array_equal(study.image, expected)
    assert study.spacing == (1.0, 1.0, 1.0)


def test_missing_sidecar_names_the_file_to_write(tmp_path: Path):
    save(tmp_path / "scan.nii.gz", indexed_data(), np.eye(4))
    with pytest.raises(StudyError, match=r"no box prompts: write .*scan\.prompts\.json"):
        load_study(find_studies(tmp_path)[0])


def test_bids_sidecar_modality_is_the_fallback(tmp_path: Path):
    save(tmp_path / "sub-01_pet.nii.gz", indexed_data(), np.eye(4), {"boxes": [{"voxel": [1, 1, 0, 9, 9, 3]}]})
    (tmp_path / "sub-01_pet.json").write_text(json.dumps({"Modality": "PT", "TracerName": "FDG"}))
    assert load_study(find_studies(tmp_path)[0]).modality == "PET"


def test_ct_nifti_uses_the_window(tmp_path: Path):
    hu = np.array([-1000, -160, 40, 240, 1000], np.int16)[:, None, None] * np.ones((5, 4, 3), np.int16)
    save(tmp_path / "ct.nii", hu, np.eye(4), {"modality": "CT", "boxes": [{"voxel": [0, 0, 0, 3, 2, 2]}]})
    study = load_study(find_studies(tmp_path)[0])
    assert study.image[0, 0].tolist() == [0, 0, 127, 255, 255]  # x runs along i


def test_mm_boxes_in_ras_world(tmp_path: Path):
    affine = oblique_flipped_affine()
    world = lambda i, j, k: (affine @ [i, j, k, 1])[:3].tolist()  # noqa: E731
    boxes = [
        {"label": "tumour", "mm": [world(15, 12, 4), world(2, 3, 1)]},
        {"mm": [world(2.4, 12.3, 1.45), world(15.2, 2.6, 4.1)]},
    ]
    save(tmp_path / "t1.nii.gz", indexed_data(), affine, {"modality": "MR", "boxes": boxes})
    assert load_study(find_studies(tmp_path)[0]).boxes.tolist() == [[2, 3, 1, 15, 12, 4]] * 2


def test_box_outside_the_volume_is_named(tmp_path: Path):
    save(
        tmp_path / "t1.nii.gz",
        indexed_data(),
        np.eye(4),
        {"modality": "MR", "boxes": [{"label": "lesion", "voxel": [1, 1, 0, 9, 9, 6]}]},
    )
    with pytest.raises(StudyError, match=r"box #1 \(lesion\) .* outside the image .*z 0\.\.5"):
        load_study(find_studies(tmp_path)[0])


def test_2d_nifti_is_a_2d_study(tmp_path: Path):
    data = indexed_data((30, 20, 1))[:, :, 0].astype(np.float32)
    save(tmp_path / "xr.nii.gz", data, np.eye(4), {"modality": "X-Ray", "boxes": [{"voxel": [2, 3, 25, 15]}]})
    study = load_study(find_studies(tmp_path)[0])
    assert study.image.shape == (20, 30, 3) and not study.is_3d and study.boxes.tolist() == [[2, 3, 25, 15]]
    source = find_studies(tmp_path)[0]
    labels = np.zeros((20, 30), np.uint16)
    labels[3:16, 2:26] = 1
    OutputWriter(tmp_path / "out").write(source, StudyOutcome(name=source.name, labels=labels))
    back = nib.load(str(output_path(tmp_path / "out", source)))
    assert back.shape == (30, 20)
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels.T)


def test_time_series_is_refused(tmp_path: Path):
    save(
        tmp_path / "fmri.nii.gz",
        np.zeros((4, 4, 3, 5), np.int16),
        np.eye(4),
        {"modality": "MR", "boxes": [{"voxel": [0, 0, 0, 2, 2, 1]}]},
    )
    with pytest.raises(StudyError, match="not a single 2D or 3D image"):
        load_study(find_studies(tmp_path)[0])
    save(tmp_path / "fmri.nii.gz", np.ones((4, 4, 3, 1), np.int16), np.eye(4))
    assert load_study(find_studies(tmp_path)[0]).image.shape == (3, 4, 4)


def test_corrupt_nifti_is_a_study_error(tmp_path: Path):
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 20)
    (tmp_path / "bad.prompts.json").write_text(json.dumps({"modality": "MR", "boxes": [{"voxel": [0, 0, 1, 1]}]}))
    with pytest.raises(StudyError, match="unreadable NIfTI"):
        load_study(find_studies(tmp_path)[0])


@pytest.mark.parametrize("codes", [(1, 1), (0, 1), (2, 0)], ids=["sform+qform", "qform only", "sform only"])
def test_label_map_output_keeps_the_affine(tmp_path: Path, codes):
    affine = oblique_flipped_affine()
    (tmp_path / "in").mkdir()
    path = save(
        tmp_path / "in" / "liver.nii.gz",
        indexed_data(),
        affine,
        {"modality": "CT", "boxes": [{"voxel": [1, 1, 0, 9, 9, 3]}, {"voxel": [10, 2, 1, 18, 9, 5]}]},
        codes,
    )
    source = find_studies(tmp_path / "in")[0]
    labels = np.zeros((6, 16, 20), np.uint16)
    labels[0:4, 1:10, 1:10] = 1
    labels[1:6, 2:10, 10:19] = 2
    outcome = StudyOutcome(name=source.name, labels=labels, metrics={})
    OutputWriter(tmp_path / "out").write(source, outcome)
    assert outcome.ok, outcome.error
    out = output_path(tmp_path / "out", source)
    assert out.name == "liver.seg.nii.gz"
    back, original = nib.load(str(out)), nib.load(str(path))
    np.testing.assert_array_equal(back.affine, original.affine)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(back.header.get_sform(), original.header.get_sform())
    np.testing.assert_array_equal(back.header.get_qform(), original.header.get_qform())
    assert int(back.header["sform_code"]) == int(original.header["sform_code"])
    assert int(back.header["qform_code"]) == int(original.header["qform_code"])
    assert back.get_data_dtype() == np.uint16 and back.header.get_intent()[0] == "label"
    data = np.asarray(back.dataobj)
    assert data.shape == (20, 16, 6)
    np.testing.assert_array_equal(np.transpose(data, (2, 1, 0)), labels)
    assert not list((tmp_path / "out").glob(".partial*"))
