"""RTSTRUCT output (issue 14, part 3): rt-utils contours of the label map, rasterised back here independently
(OpenCV fillPoly on the contour points mapped through the series' own geometry, holes by XOR) and compared per ROI
with the label map on real cases written as DICOM series, with non-square pixels and an oblique, reversed stack."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from dicom_factory import SeriesSpec, write_series
from producer.discovery import discover
from producer.formats.dicom import read_layout, volume_of
from producer.formats.dicom_reference import reference_of
from producer.formats.rtstruct import build_rtstruct
from producer.outcome import StudyOutcome
from producer.outputs import OutputWriter

CASES = Path(__file__).resolve().parents[1].parent.parent / "shared" / "data" / "cases"
if not CASES.is_dir():
    CASES = Path("/work/shared/data/cases")
PROVENANCE = {"model": "litemedsam", "package_version": "0.1.0"}
OBLIQUE_ROW = (np.cos(0.3), np.sin(0.3), 0.0)
OBLIQUE_COL = (-np.sin(0.3) * np.cos(0.4), np.cos(0.3) * np.cos(0.4), np.sin(0.4))


def rasterise(ds: pydicom.Dataset, roi_number: int, geometry, shape) -> np.ndarray:
    """The ROI's contours -> a (D, H, W) mask on the source grid: each closed polygon filled, polygons XORed."""
    mask = np.zeros(shape, np.uint8)
    item = next(i for i in ds.ROIContourSequence if int(i.ReferencedROINumber) == roi_number)
    for contour in getattr(item, "ContourSequence", []):
        points = geometry.to_voxel(np.asarray(contour.ContourData, float).reshape(-1, 3))
        z = np.rint(points[:, 2]).astype(int)
        assert np.all(z == z[0]) and np.allclose(points[:, 2], z[0], atol=1e-3)  # planar, on a slice
        canvas = np.zeros(shape[1:], np.uint8)
        cv2.fillPoly(canvas, [np.rint(points[:, :2]).astype(np.int32)], 1)
        mask[z[0]] ^= canvas
    return mask.astype(bool)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def write_case(folder: Path, image: np.ndarray, spec_kwargs: dict) -> SeriesSpec:
    spec = SeriesSpec(stored=image.astype(np.int16), **spec_kwargs)
    write_series(folder, spec)
    return spec


GEOMETRIES = {
    "nonsquare": {"pixel_spacing": (0.9, 0.6), "step": 2.0},
    "oblique-reversed": {"pixel_spacing": (0.7, 1.1), "step": -3.0, "row_dir": OBLIQUE_ROW, "col_dir": OBLIQUE_COL},
}


@pytest.mark.parametrize("case", ["3DBox_CT_tssm", "3DBox_MR_brats01646"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_rtstruct_rasterises_back_onto_the_label_map(tmp_path: Path, case: str, geometry: str):
    if not (CASES / "gts" / f"{case}.npz").is_file():
        pytest.skip(f"{case} not in {CASES}")
    image = np.load(CASES / "imgs" / f"{case}.npz")["imgs"]
    gts = np.load(CASES / "gts" / f"{case}.npz")["gts"].astype(np.uint16)
    spec = write_case(tmp_path / "ct", image, GEOMETRIES[geometry])
    layout = read_layout(sorted((tmp_path / "ct").iterdir()))
    volume = volume_of(layout)
    if spec.step < 0:  # volume order runs along the normal: stored slice k is volume slice D-1-k
        labels = np.ascontiguousarray(gts[::-1])
        np.testing.assert_array_equal(volume.values, image[::-1].astype(np.float32))
    else:
        labels = gts
    names = [f"organ {k}" for k in range(1, int(labels.max()) + 1)]
    ds = build_rtstruct(reference_of(layout), labels, names, PROVENANCE)

    assert ds.Modality == "RTSTRUCT" and [r.ROIName for r in ds.StructureSetROISequence] == names
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == spec.frame_of_reference
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == spec.series_uid
    assert {c.ReferencedSOPInstanceUID for c in series.ContourImageSequence} == set(layout.slice_uids)
    holes, scores = 0, []
    for number in range(1, int(labels.max()) + 1):
        truth = labels == number
        back = rasterise(ds, number, volume.geometry, labels.shape)
        scores.append(dice(back, truth))
        assert scores[-1] >= 0.98, (number, scores[-1])
        holes += sum(
            cv2.findContours(truth[z].astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)[1] is not None
            and (
                cv2.findContours(truth[z].astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)[1][0][:, 3] >= 0
            ).any()
            for z in range(truth.shape[0])
        )
    print(
        f"{case} {geometry}: {int(labels.max())} ROIs, {holes} ROI slices with holes, Dice min {min(scores):.4f} "
        f"median {float(np.median(scores)):.4f}"
    )


def test_submit_writes_seg_and_rtstruct_with_empty_rois_kept(tmp_path: Path):
    rng = np.random.default_rng(0)
    spec = SeriesSpec(stored=rng.integers(0, 200, (6, 40, 44)).astype(np.int16), pixel_spacing=(0.5, 0.8))
    folder = tmp_path / "in" / "ct"
    write_series(folder, spec)
    (folder / "prompts.json").write_text(
        json.dumps(
            {
                "boxes": [
                    {"label": "ring", "voxel": [2, 2, 1, 30, 30, 4]},
                    {"label": "nothing", "voxel": [35, 30, 0, 40, 38, 1]},
                    {"label": "two blobs", "voxel": [1, 1, 0, 43, 39, 5]},
                ]
            }
        )
    )
    labels = np.zeros((6, 40, 44), np.uint16)
    labels[1:5, 5:25, 5:25] = 1
    labels[1:5, 10:18, 10:18] = 0  # a hole in every slice
    labels[2:4, 30:36, 2:8] = 3
    labels[2:4, 30:36, 30:40] = 3  # two components per slice
    source = discover(tmp_path / "in").studies[0]
    outcome = StudyOutcome(name=source.name, labels=labels, metrics={"provenance": PROVENANCE})
    OutputWriter(tmp_path / "out", ("seg", "rtstruct")).write(source, outcome)
    assert outcome.ok and outcome.notes == [], (outcome.error, outcome.notes)
    assert (tmp_path / "out" / "ct.seg.dcm").is_file()
    ds = pydicom.dcmread(tmp_path / "out" / "ct.rtstruct.dcm")
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["ring", "nothing", "two blobs"]
    assert [int(r.ROINumber) for r in ds.StructureSetROISequence] == [1, 2, 3]
    assert ds.Manufacturer == "litemedsam-fleet"
    geometry = volume_of(read_layout(source.files)).geometry
    for number in (1, 3):
        assert dice(rasterise(ds, number, geometry, labels.shape), labels == number) >= 0.95
    assert not rasterise(ds, 2, geometry, labels.shape).any()
    first = ds.SOPInstanceUID
    OutputWriter(tmp_path / "out2", ("rtstruct",)).write(source, StudyOutcome(name=source.name, labels=labels))
    assert pydicom.dcmread(tmp_path / "out2" / "ct.rtstruct.dcm").SOPInstanceUID == first  # stable UIDs
    assert not (tmp_path / "out2" / "ct.seg.dcm").exists()


def test_rtstruct_of_a_2d_image_without_geometry_is_refused_and_the_seg_still_written(tmp_path: Path):
    from dicom_factory import write_xray

    (tmp_path / "in").mkdir()
    write_xray(tmp_path / "in" / "dx.dcm", np.arange(600, dtype=np.uint16).reshape(30, 20))
    (tmp_path / "in" / "prompts.json").write_text(json.dumps({"boxes": [{"voxel": [1, 1, 10, 10]}]}))
    source = discover(tmp_path / "in").studies[0]
    labels = np.zeros((30, 20), np.uint16)
    labels[2:9, 2:9] = 1
    outcome = StudyOutcome(name=source.name, labels=labels, metrics={"provenance": PROVENANCE})
    OutputWriter(tmp_path / "out", ("seg", "rtstruct")).write(source, outcome)
    assert outcome.ok and (tmp_path / "out" / f"{source.name}.seg.dcm").is_file()
    assert any("RTSTRUCT not written: an RTSTRUCT needs patient geometry" in n for n in outcome.notes), outcome.notes
    assert (tmp_path / "out" / f"{source.name}.labels.npz").is_file()
