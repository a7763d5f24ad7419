"""DICOM as it really arrives (issue 14, part 1): anonymised series without Study/Series/SOP UIDs in the data set,
pydicom's own odd test files, and the odd-input corpus; every computed mask leaves an output, and no raw Python
exception text reaches the user. Embedded runs with the box-echo model (geometry, not accuracy)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.pixels import get_encoder
from pydicom.uid import JPEG2000Lossless, RLELossless

from dicom_factory import SeriesSpec, ramp_volume, write_series
from producer.cli import cli
from producer.discovery import discover
from producer.formats.dicom import read_layout
from producer.formats.dicom_files import read_dataset

RAW_EXCEPTION_WORDS = (
    "Traceback",
    "AttributeError",
    "KeyError",
    "TypeError",
    "IndexError",
    "object has no attribute",
    "internal error",
)


def run_submit(folder: Path, out: Path, models_dir: Path, *extra: str) -> dict[str, dict]:
    result = CliRunner().invoke(
        cli, ["submit", str(folder), "--out", str(out), "--models-dir", str(models_dir), *extra]
    )
    assert result.exit_code in (0, 1), result.output
    return {r["study"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def anonymise(path: Path) -> None:
    """Blank the UIDs in the data set as research exports do; the file meta keeps its SOP Class/Instance UIDs."""
    ds = pydicom.dcmread(path)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        setattr(ds, keyword, "")
    ds.save_as(path)


def seg_labels(path: Path, source_files) -> np.ndarray:
    uids = list(read_layout(source_files).slice_uids)
    return hd.seg.segread(path).get_pixels_by_source_instance(uids, combine_segments=True)


def test_anonymised_compressed_series_is_one_study_and_its_seg_matches_the_full_series(echo_models_dir, tmp_path):
    syntax = JPEG2000Lossless if get_encoder(JPEG2000Lossless).is_available else RLELossless
    spec = SeriesSpec(stored=ramp_volume(20, 32, 32), intercept=-1024.0)
    full, anon = tmp_path / "full" / "ct", tmp_path / "anon" / "ct"  # apart: they share SOP Instance UIDs
    write_series(full, spec, transfer_syntax=syntax)
    shutil.copytree(full, anon)
    for path in anon.iterdir():
        anonymise(path)
    box = {"boxes": [{"label": "organ", "voxel": [4, 5, 3, 20, 22, 15]}]}
    for folder in (full, anon):
        (folder / "prompts.json").write_text(json.dumps(box))
    assert pydicom.dcmread(anon / "IM0000").file_meta.TransferSyntaxUID == syntax

    lines = {
        kind: run_submit(tmp_path / kind, tmp_path / f"out-{kind}", echo_models_dir)["ct"] for kind in ("full", "anon")
    }
    assert all(line["status"] == "ok" for line in lines.values()), lines  # one study each, not 20
    assert len(discover(tmp_path / "anon").studies) == 1
    notes = " ".join(lines["anon"]["notes"])
    assert "20 file(s) without a SeriesInstanceUID grouped as one series" in notes
    assert "StudyInstanceUID or SeriesInstanceUID: derived" in notes and "file meta" in notes
    assert lines["full"]["notes"] == []

    found = {kind: discover(tmp_path / kind).studies[0] for kind in ("full", "anon")}
    full_mask = seg_labels(tmp_path / "out-full" / "ct.seg.dcm", found["full"].files)
    anon_mask = seg_labels(tmp_path / "out-anon" / "ct.seg.dcm", found["anon"].files)
    assert full_mask.any()
    np.testing.assert_array_equal(anon_mask, full_mask)

    seg = pydicom.dcmread(tmp_path / "out-anon" / "ct.seg.dcm")
    meta_uids = {
        str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID)
        for p in found["anon"].files
    }
    referenced = {
        str(item.ReferencedSOPInstanceUID) for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == meta_uids
    assert seg.StudyInstanceUID and seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert "derived" in seg.SeriesDescription and "derived" in seg.ContentDescription
    assert seg.FrameOfReferenceUID == spec.frame_of_reference

    # the derived UIDs are deterministic: a second run writes the same study/series references
    again = run_submit(tmp_path / "anon", tmp_path / "out2", echo_models_dir)
    assert again["ct"]["status"] == "ok"
    second = pydicom.dcmread(tmp_path / "out2" / "ct.seg.dcm")
    assert second.StudyInstanceUID == seg.StudyInstanceUID
    assert second.ReferencedSeriesSequence[0].SeriesInstanceUID == seg.ReferencedSeriesSequence[0].SeriesInstanceUID


PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _centre_box_folder(source: Path, folder: Path) -> bool:
    """One folder per pydicom test file, with a centre box sized from its header; False if it is no image."""
    try:
        ds = read_dataset(source, pixels=False)
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception:
        return False
    folder.mkdir(parents=True)
    shutil.copy(source, folder / source.name)
    box = [columns // 4, rows // 4, 3 * columns // 4, 3 * rows // 4]
    if frames > 1:
        box = [box[0], box[1], 0, box[2], box[3], frames - 1]
    (folder / "prompts.json").write_text(json.dumps({"boxes": [{"voxel": box}]}))
    return True


def test_pydicom_test_files_are_segmented_or_refused_with_a_reason_and_no_mask_is_lost(echo_models_dir, tmp_path):
    prepared = [
        path.stem
        for path in sorted(PYDICOM_TEST_FILES.glob("*.dcm"))
        if _centre_box_folder(path, tmp_path / "in" / path.stem)
    ]
    assert len(prepared) > 30
    lines = run_submit(tmp_path / "in", tmp_path / "out", echo_models_dir)
    outputs = {p.name for p in (tmp_path / "out").iterdir()}
    ok = [name for name, line in lines.items() if line["status"] == "ok"]
    assert len(ok) >= 7, {name: line["error"] for name, line in lines.items()}
    for name, line in lines.items():
        text = line["error"] + " ".join(line["notes"])
        assert not any(word in text for word in RAW_EXCEPTION_WORDS), (name, text)
        if line["status"] == "ok":  # every computed mask leaves an output
            assert f"{name}.seg.dcm" in outputs or {f"{name}.labels.nii.gz", f"{name}.labels.npz"} & outputs, name
        else:
            assert len(line["error"]) > 20, (name, line["error"])
    for name in ok:
        if f"{name}.seg.dcm" in outputs:
            hd.seg.segread(tmp_path / "out" / f"{name}.seg.dcm")
    assert all(f"{name}.seg.dcm" in outputs for name in ok), sorted(outputs)  # today every one gets its SEG


def test_a_seg_that_cannot_be_built_leaves_the_label_map_and_a_note(tmp_path):
    from dataclasses import replace

    from producer.loading import context_of
    from producer.outcome import StudyOutcome
    from producer.outputs import OutputWriter

    spec = SeriesSpec(stored=ramp_volume(4, 12, 12))
    write_series(tmp_path / "in" / "ct", spec)
    (tmp_path / "in" / "ct" / "prompts.json").write_text(json.dumps({"boxes": [{"voxel": [1, 1, 0, 6, 6, 3]}]}))
    source = discover(tmp_path / "in").studies[0]
    labels = np.zeros((4, 12, 12), np.uint16)
    labels[1:3, 2:7, 3:9] = 1
    context = replace(
        context_of(source), dicom=None, notes=("the source's DICOM headers hold values that cannot be copied",)
    )
    outcome = StudyOutcome(name=source.name, labels=labels, context=context, notes=list(context.notes))
    OutputWriter(tmp_path / "out").write(source, outcome)
    assert outcome.ok and not (tmp_path / "out" / "ct.seg.dcm").exists()
    assert any("DICOM SEG not written" in note for note in outcome.notes)
    assert "the label map was written to ct.labels.nii.gz instead" in outcome.notes
    import nibabel as nib

    back = nib.load(str(tmp_path / "out" / "ct.labels.nii.gz"))
    np.testing.assert_array_equal(np.transpose(np.asarray(back.dataobj), (2, 1, 0)), labels)
    # the grid is the series' own: voxel (0, 0, 0) sits at the first slice's position (LPS -> RAS)
    np.testing.assert_allclose(back.affine[:3, 3], np.array(spec.origin) * [-1, -1, 1])


@pytest.mark.parametrize(
    "name",
    ["dicom_signed", "dicom_monochrome1", "dicom_nonsquare", "dicom_mixedsyntax", "dicom_duplicate", "dicom_split"],
)
def test_odd_but_valid_series_of_the_corpus_are_read_correctly(tmp_path, name):
    """The corpus' real-world oddities that must be segmented: each is read back as the volume it stores."""
    from bad_inputs import _odd_dicom_corpus, odd_series_spec
    from producer.formats.dicom import load_dicom_volume

    _odd_dicom_corpus(tmp_path)
    found = discover(tmp_path / name)
    assert len(found.studies) == 1, [s.name for s in found.studies]
    source = found.studies[0]
    spec = odd_series_spec(name)
    volume = load_dicom_volume(source.files)
    expected = spec.stored.astype(np.float32)
    if name == "dicom_monochrome1":  # inverted so that high values are bright
        expected = expected.max() + expected.min() - expected
    np.testing.assert_array_equal(volume.values, expected)
    assert volume.spacing == pytest.approx((spec.pixel_spacing[1], spec.pixel_spacing[0], spec.step))
    if name == "dicom_signed":
        assert volume.values.min() < 0
    if name == "dicom_duplicate":
        assert len(source.files) == 5 and any("duplicate of" in s.reason for s in found.skipped)
    if name == "dicom_split":
        assert {p.parent.name for p in source.files} == {"a", "b"} and source.sidecar.path.parent.name == name
    if name == "dicom_mixedsyntax":
        syntaxes = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in source.files}
        assert len(syntaxes) == 2


def test_a_2d_ct_image_without_frame_of_reference_or_geometry_still_gets_its_seg(tmp_path):
    """A CT Image object (whose IOD requires a frame of reference) holding a lone 2D image without one."""
    from pydicom.uid import CTImageStorage

    from dicom_factory import write_xray
    from producer.outcome import StudyOutcome
    from producer.outputs import OutputWriter

    (tmp_path / "in").mkdir()
    path = write_xray(tmp_path / "in" / "scout.dcm", np.arange(600, dtype=np.uint16).reshape(30, 20), modality="CT")
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.save_as(path)
    (tmp_path / "in" / "prompts.json").write_text(json.dumps({"boxes": [{"voxel": [1, 1, 10, 10]}]}))
    source = discover(tmp_path / "in").studies[0]
    labels = np.zeros((30, 20), np.uint16)
    labels[2:9, 2:9] = 1
    outcome = StudyOutcome(name=source.name, labels=labels)
    OutputWriter(tmp_path / "out").write(source, outcome)
    assert outcome.ok, outcome.error
    assert any("a frame of reference and a nominal axial plane" in note for note in outcome.notes), outcome.notes
    seg = hd.seg.segread(tmp_path / "out" / f"{source.name}.seg.dcm")
    assert seg.FrameOfReferenceUID and "FrameOfReferenceUID" in seg.SeriesDescription
    uid = str(ds.SOPInstanceUID)
    np.testing.assert_array_equal(seg.get_pixels_by_source_instance([uid], combine_segments=True)[0], labels)
