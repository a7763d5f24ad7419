"""DICOM objects judged by tools the project did not write (issue 21): dicom3tools' `dciodvfy -new` on every SEG and
RTSTRUCT written for the test series, the anonymised series, the odd-DICOM corpus and pydicom's own test files
(an error counts as ours only when the source does not have it too), highdicom reading every SEG back voxel for
voxel, segment codes and colours, and RTSTRUCT contours that enclose an area."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from bad_inputs import _odd_dicom_corpus
from dicom_factory import SeriesSpec, ramp_volume, write_series, write_xray
from producer.discovery import discover
from producer.formats import modality as modalities
from producer.formats.dicom import read_layout, volume_of
from producer.formats.dicom_files import read_dataset
from producer.formats.structures import PALETTE, known_structure, label_colours, segment_structure
from producer.outcome import StudyOutcome
from producer.outputs import OutputWriter
from test_dicom_anonymised import PYDICOM_TEST_FILES, _centre_box_folder, anonymise
from test_rtstruct import dice, rasterise

PROVENANCE = {"model": "litemedsam", "package_version": "0.1.0"}
needs_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy not installed (Debian package dicom3tools; .ci/run installs it)"
)


def dciodvfy_errors(path: Path) -> set[str]:
    """The error lines of `dciodvfy -new`, with a value's position in a sequence kept (it names the attribute)."""
    run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
    return {
        re.sub(r"\s+", " ", line.strip()) for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")
    }


def errors_of_ours(output: Path, sources: list[Path]) -> set[str]:
    inherited = set().union(*(dciodvfy_errors(source) for source in sources))
    return dciodvfy_errors(output) - inherited


def labels_with_small_parts(shape: tuple[int, int, int]) -> np.ndarray:
    """Three labels: a block with a hole, isolated pixels and one-pixel-wide lines (straight and diagonal) that
    trace to one- and two-point contours, and one label left empty."""
    labels = np.zeros(shape, np.uint16)
    depth, height, width = shape
    labels[1 : depth - 1, 4:20, 4:20] = 1
    labels[1 : depth - 1, 9:14, 9:14] = 0
    labels[1, 25, 25] = 3  # an isolated pixel
    labels[2, 25, 22:34] = 3  # a horizontal one-pixel line
    for step in range(8):  # a diagonal one-pixel line
        labels[3, 24 + step, 4 + step] = 3
    labels[2, 30, 10] = 3
    labels[2, 30:36, 38] = 3  # a vertical one-pixel line
    return labels


def write_outputs(
    folder: Path, out: Path, labels: np.ndarray, names: list[str], formats: tuple[str, ...] = ("seg", "rtstruct")
) -> Path:
    (folder / "prompts.json").write_text(
        json.dumps({"boxes": [{"label": n, "voxel": [0, 0, 0, 1, 1, 1]} for n in names]})
    )
    source = discover(folder.parent).studies[0]
    outcome = StudyOutcome(name=source.name, labels=labels, metrics={"provenance": PROVENANCE})
    OutputWriter(out, formats).write(source, outcome)
    assert outcome.ok, outcome.error
    return out / source.name


def read_back(seg_path: Path, source_files: list[Path]) -> np.ndarray:
    uids = list(read_layout(source_files).slice_uids)
    return hd.seg.segread(seg_path).get_pixels_by_source_instance(uids, combine_segments=True)


@needs_dciodvfy
@pytest.mark.parametrize("anonymised", [False, True], ids=["series", "anonymised"])
def test_seg_and_rtstruct_of_a_ct_series_are_valid_and_read_back(tmp_path: Path, anonymised: bool):
    spec = SeriesSpec(stored=ramp_volume(6, 40, 44), pixel_spacing=(0.5, 0.8))
    folder = tmp_path / "in" / "ct"
    paths = write_series(folder, spec)
    if anonymised:
        for path in paths:
            anonymise(path)
    labels = labels_with_small_parts((6, 40, 44))
    stem = write_outputs(folder, tmp_path / "out", labels, ["liver", "nothing", "specks"])
    files = sorted(p for p in folder.iterdir() if p.name != "prompts.json")
    for output in (stem.with_suffix(".seg.dcm"), stem.with_suffix(".rtstruct.dcm")):
        assert errors_of_ours(output, files[:1]) == set(), output.name
    np.testing.assert_array_equal(read_back(stem.with_suffix(".seg.dcm"), files), labels)

    ds = pydicom.dcmread(stem.with_suffix(".rtstruct.dcm"))
    source = pydicom.dcmread(files[0])
    assert ds.FrameOfReferenceUID == ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    assert ds.AccessionNumber == source.AccessionNumber and ds.ReferringPhysicianName == ""
    assert "ContourSequence" not in ds.ROIContourSequence[1]  # the empty ROI: no contour, no empty sequence
    assert all(
        int(c.NumberOfContourPoints) >= 3 for roi in ds.ROIContourSequence for c in roi.get("ContourSequence", [])
    )
    geometry = volume_of(read_layout(files)).geometry
    assert dice(rasterise(ds, 1, geometry, labels.shape), labels == 1) >= 0.95  # a 16-pixel block with a hole
    # grown one- and two-point contours give back exactly their pixels: nothing lost, no neighbour added
    np.testing.assert_array_equal(rasterise(ds, 3, geometry, labels.shape), labels == 3)


@needs_dciodvfy
def test_outputs_of_the_odd_dicom_corpus_add_no_error(tmp_path: Path):
    _odd_dicom_corpus(tmp_path / "corpus")
    checked = 0
    for name in ("dicom_signed", "dicom_monochrome1", "dicom_nonsquare", "dicom_mixedsyntax"):
        folder = tmp_path / "corpus" / name
        (tmp_path / "one" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder, tmp_path / "one" / name / name)
        files = sorted(p for p in (tmp_path / "one" / name / name).iterdir() if p.name != "prompts.json")
        labels = np.zeros((5, 12, 12), np.uint16)
        labels[1:4, 1:7, 1:7] = 1
        labels[1, 9, 9] = labels[2, 9, 6:11] = 3  # an isolated pixel, a one-pixel line
        stem = write_outputs(tmp_path / "one" / name / name, tmp_path / "out" / name, labels, ["a", "b", "c"])
        for output in (stem.with_suffix(".seg.dcm"), stem.with_suffix(".rtstruct.dcm")):
            assert errors_of_ours(output, files) == set(), (name, output.name)
            checked += 1
        np.testing.assert_array_equal(read_back(stem.with_suffix(".seg.dcm"), files), labels)
    assert checked == 8


def _corpus_folder(source: Path, folder: Path) -> bool:
    """test_dicom_anonymised's folder for one pydicom test file (a centre box), with an override where its modality
    routes nowhere (secondary captures, NM): the SEGs of images without patient geometry are the point here."""
    if not _centre_box_folder(source, folder):
        return False
    document = json.loads((folder / "prompts.json").read_text())
    document["boxes"][0]["label"] = "liver"
    try:
        modalities.from_dicom_tag(str(read_dataset(source, pixels=False).get("Modality", "")))
    except Exception:
        document["modality"] = "Endoscopy"
    (folder / "prompts.json").write_text(json.dumps(document))
    return True


@needs_dciodvfy
def test_segs_of_pydicom_test_files_are_valid_and_read_back_including_images_without_geometry(
    echo_models_dir, tmp_path: Path
):
    from test_dicom_anonymised import run_submit

    for path in sorted(PYDICOM_TEST_FILES.glob("*.dcm")):
        _corpus_folder(path, tmp_path / "in" / path.stem)
    lines = run_submit(tmp_path / "in", tmp_path / "out", echo_models_dir, "--dicom-format", "seg,rtstruct")
    ok = [name for name, line in lines.items() if line["status"] == "ok"]
    assert len(ok) >= 25, {name: line["error"] for name, line in lines.items() if line["status"] != "ok"}
    sources = {study.name: study.files[0] for study in discover(tmp_path / "in").studies}
    without_geometry = 0
    for name in ok:
        seg_path, source = tmp_path / "out" / f"{name}.seg.dcm", sources[name]
        assert errors_of_ours(seg_path, [source]) == set(), name
        seg = hd.seg.segread(seg_path)
        if "ImagePositionPatient" not in pydicom.dcmread(source, stop_before_pixels=True):
            without_geometry += 1
            assert "PatientOrientation" in seg, name
        rtstruct = tmp_path / "out" / f"{name}.rtstruct.dcm"
        if rtstruct.exists():
            assert errors_of_ours(rtstruct, [source]) == set(), name
    assert without_geometry >= 15


def test_known_structures_and_the_rest():
    assert known_structure("Liver").type.value == "10200004"
    assert known_structure("Kidney_L").type.value == "64033007"
    assert known_structure("gall bladder").type.value == "28231008"
    assert known_structure("postcava").type.value == "64131007"
    tumour = known_structure("liver tumour")
    assert tumour is not None and tumour.type.value == "108369006" and tumour.category.value == "49755003"
    assert known_structure("box 1") is None and known_structure("deliver") is None and known_structure("") is None
    other = segment_structure(3, "target")
    assert other.type.value == other.category.value == "85756007" and other.rgb == PALETTE[2]
    colours = label_colours(4, ["liver", "box 2"])
    assert colours[0].tolist() == [0, 0, 0]
    assert tuple(colours[1]) == known_structure("liver").rgb and tuple(colours[2]) == PALETTE[1]
    assert tuple(colours[4]) == PALETTE[3] and len({tuple(c) for c in label_colours(19)[1:]}) == 19


def test_every_segment_and_roi_has_its_code_and_colour(tmp_path: Path):
    spec = SeriesSpec(stored=ramp_volume(6, 40, 44))
    folder = tmp_path / "in" / "ct"
    write_series(folder, spec)
    names = ["liver", "Kidney_R", "liver tumour", "box 4"]
    labels = np.zeros((6, 40, 44), np.uint16)
    for number in range(1, 5):
        labels[1:4, 4 + 8 * (number - 1) : 10 + 8 * (number - 1), 4:30] = number
    stem = write_outputs(folder, tmp_path / "out", labels, names)
    seg = hd.seg.segread(stem.with_suffix(".seg.dcm"))
    rtstruct = pydicom.dcmread(stem.with_suffix(".rtstruct.dcm"))
    lab = set()
    for number, name in enumerate(names, start=1):
        expected = segment_structure(number, name)
        description = seg.get_segment_description(number)
        assert description.segmented_property_type.value == expected.type.value
        assert description.segmented_property_category.value == expected.category.value
        colour = hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue)
        assert np.abs(np.array(colour.to_rgb()) - np.array(expected.rgb)).max() <= 1, name
        lab.add(tuple(description.RecommendedDisplayCIELabValue))
        roi = next(r for r in rtstruct.ROIContourSequence if int(r.ReferencedROINumber) == number)
        assert [int(v) for v in roi.ROIDisplayColor] == list(expected.rgb)
    assert len(lab) == 4


def test_a_radiograph_seg_keeps_its_patient_orientation(tmp_path: Path):
    (tmp_path / "in" / "dx").mkdir(parents=True)
    path = write_xray(tmp_path / "in" / "dx" / "dx.dcm", np.arange(600, dtype=np.uint16).reshape(30, 20))
    ds = pydicom.dcmread(path)
    ds.PatientOrientation = ["A", "F"]
    ds.save_as(path)
    labels = np.zeros((30, 20), np.uint16)
    labels[2:9, 2:9] = 1
    stem = write_outputs(tmp_path / "in" / "dx", tmp_path / "out", labels, ["lung"], ("seg",))
    seg = pydicom.dcmread(stem.with_suffix(".seg.dcm"))
    assert list(seg.PatientOrientation) == ["A", "F"]
    assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_array_equal(read_back(stem.with_suffix(".seg.dcm"), [path])[0], labels)
