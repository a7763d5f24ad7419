"""Discovery over a hospital-style folder: one study per real study, a clear note for everything else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from dicom_factory import SeriesSpec, ramp_volume, write_raw_dataset, write_series, write_sr, write_xray
from producer.discovery import discover, find_studies
from producer.loading import load_study
from producer.outcome import StudyOutcome
from producer.outputs import OutputWriter, output_path
from worker.contract.study import StudyError


def write_npz(path: Path) -> Path:
    image = np.zeros((4, 16, 16), np.uint8)
    image[1:3, 4:10, 4:10] = 200
    np.savez_compressed(path, imgs=image, boxes=np.array([[4, 4, 1, 9, 9, 2]]), spacing=np.array([1.0, 1.0, 2.0]))
    return path


def write_nifti(path: Path, prompts: dict) -> Path:
    data = np.zeros((24, 20, 5), np.float32)
    data[5:15, 4:12, 1:4] = 300.0
    data += np.arange(24)[:, None, None]
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(path))
    path.with_name(path.name.split(".nii")[0] + ".prompts.json").write_text(json.dumps(prompts))
    return path


def reasons(found) -> dict[str, str]:
    return {note.path.name: note.reason for note in found.skipped}


@pytest.fixture()
def mixed(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    ct = SeriesSpec(stored=ramp_volume(6, 24, 24) + 1024, intercept=-1024.0, series_number=2)
    write_series(root / "patient" / "ct", ct)
    (root / "patient" / "ct" / "prompts.json").write_text(
        json.dumps({"boxes": [{"label": "liver", "voxel": [2, 2, 1, 15, 15, 4]}]})
    )
    mr = SeriesSpec(stored=ramp_volume(5, 20, 20), modality="MR", study_uid=ct.study_uid, series_number=5)
    write_series(root / "patient" / "mr", mr, prefix="MR")
    (root / "patient" / "mr" / "prompts.json").write_text(json.dumps({"boxes": [{"voxel": [1, 1, 0, 10, 10, 4]}]}))
    write_sr(root / "patient" / "mr" / "report.dcm", study_uid=ct.study_uid)
    (root / "patient" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    (root / "README.txt").write_text("exported by the PACS\n")
    write_npz(root / "3DBox_CT_demo.npz")
    (root / "research").mkdir()
    write_nifti(root / "research" / "t1.nii.gz", {"modality": "MR", "boxes": [{"voxel": [4, 3, 1, 15, 12, 3]}]})
    return root


def test_one_study_per_real_study_and_notes_for_the_rest(mixed: Path):
    found = discover(mixed)
    assert [(s.name, s.kind) for s in found.studies] == [
        ("3DBox_CT_demo", "npz"),
        ("patient_ct", "dicom"),
        ("patient_mr", "dicom"),
        ("research_t1", "nifti"),
    ]
    notes = reasons(found)
    assert set(notes) == {"report.dcm", "broken.dcm", "README.txt"}
    assert "Comprehensive SR Storage (Modality SR) is not an image" in notes["report.dcm"]
    assert "corrupt" in notes["broken.dcm"]
    assert "not a DICOM, NIfTI or challenge npz file" in notes["README.txt"]
    studies = {source.name: load_study(source) for source in found.studies}
    assert {name: study.modality for name, study in studies.items()} == {
        "3DBox_CT_demo": "CT",
        "patient_ct": "CT",
        "patient_mr": "MR",
        "research_t1": "MR",
    }
    assert studies["patient_ct"].image.shape == (6, 24, 24) and studies["patient_mr"].image.shape == (5, 20, 20)
    assert studies["research_t1"].image.shape == (5, 20, 24)
    assert find_studies(mixed) == found.studies


def test_series_side_by_side_are_keyed_by_uid(tmp_path: Path):
    folder = tmp_path / "flat"
    ct = SeriesSpec(stored=ramp_volume(4, 12, 12), series_number=3)
    mr = SeriesSpec(stored=ramp_volume(4, 12, 12), modality="MR", series_number=7)
    write_series(folder, ct, prefix="CT")
    write_series(folder, mr, prefix="MR")
    entry = {"boxes": [{"voxel": [1, 1, 0, 8, 8, 3]}]}
    (folder / "prompts.json").write_text(json.dumps(entry))
    names = [s.name for s in find_studies(tmp_path)]
    assert names == ["flat_CT3", "flat_MR7"]
    with pytest.raises(StudyError, match="serves several studies in its folder: key its entries"):
        load_study(find_studies(tmp_path)[0])

    (folder / "prompts.json").write_text(json.dumps({"series": {mr.series_uid: entry}}))
    found = discover(tmp_path)
    assert [s.name for s in found.studies] == ["flat_MR7"]
    assert load_study(found.studies[0]).modality == "MR"
    assert any("flat_CT3 is not listed in prompts.json" in note.reason for note in found.skipped)


def test_separate_2d_images_of_one_series_are_separate_studies(tmp_path: Path):
    folder = tmp_path / "chest"
    folder.mkdir()
    uid = pydicom.uid.generate_uid()
    first, second = (
        write_xray(folder / "pa.dcm", np.ones((20, 24), np.uint16)),
        write_xray(folder / "lat.dcm", np.ones((22, 18), np.uint16)),
    )
    for path in (first, second):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = uid
        ds.save_as(path)
    sops = {p.name: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (first, second)}
    (folder / "prompts.json").write_text(
        json.dumps(
            {
                "instances": {
                    sops["pa.dcm"]: {"boxes": [{"label": "heart", "voxel": [2, 2, 12, 15]}]},
                    sops["lat.dcm"]: {"boxes": [{"voxel": [1, 1, 10, 10]}]},
                }
            }
        )
    )
    found = discover(tmp_path)
    assert [s.name for s in found.studies] == ["chest_DX3_1", "chest_DX3_2"]
    images = {s.files[0].name: load_study(s).image.shape for s in found.studies}
    assert images == {"lat.dcm": (22, 18, 3), "pa.dcm": (20, 24, 3)}


def test_duplicates_raw_files_and_our_own_outputs(tmp_path: Path):
    folder = tmp_path / "ct"
    spec = SeriesSpec(stored=ramp_volume(4, 12, 12))
    paths = write_series(folder, spec)
    shutil.copy(paths[0], folder / "copy-of-first")
    write_raw_dataset(folder / "raw-extra", paths[1])
    paths[1].unlink()  # the raw copy (no preamble) now carries that slice
    (folder / "prompts.json").write_text(json.dumps({"boxes": [{"voxel": [1, 1, 0, 8, 8, 3]}]}))
    found = discover(tmp_path)
    assert len(found.studies) == 1 and len(found.studies[0].files) == 4
    assert reasons(found)["copy-of-first"].startswith(f"duplicate of {paths[0]} (same SOPInstanceUID)")
    assert load_study(found.studies[0]).image.shape == (4, 12, 12)

    labels = np.zeros((4, 12, 12), np.uint16)
    labels[1, 2:6, 2:6] = 1
    OutputWriter(folder / "results").write(found.studies[0], StudyOutcome(name="ct", labels=labels))
    again = discover(tmp_path)
    assert [s.name for s in again.studies] == ["ct"]
    assert "Segmentation Storage" in reasons(again)["ct.seg.dcm"]


def test_challenge_layout_reads_imgs_and_notes_the_rest(tmp_path: Path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "gts").mkdir()
    write_npz(tmp_path / "imgs" / "3DBox_CT_a.npz")
    write_npz(tmp_path / "imgs" / "2DBox_US_b.npz")
    write_npz(tmp_path / "gts" / "3DBox_CT_a.npz")
    found = discover(tmp_path)
    assert [(s.name, s.kind, s.path.parent.name) for s in found.studies] == [
        ("2DBox_US_b", "npz", "imgs"),
        ("3DBox_CT_a", "npz", "imgs"),
    ]
    assert [note.reason for note in found.skipped] == [
        "1 .npz file(s) ignored: challenge npz are read from the top folder, or its imgs/ when the top folder has none"
    ]


def test_end_to_end_with_the_echo_model(tmp_path: Path, echo_models_dir: Path, mixed: Path):
    from producer.embedded import EmbeddedRunner
    from worker.engine.engine import EngineSettings

    runner = EmbeddedRunner(EngineSettings(models_dir=echo_models_dir))
    writer = OutputWriter(tmp_path / "out")
    outcomes = {}
    for source in find_studies(mixed):
        outcome = runner.run_one(source)
        writer.write(source, outcome)
        assert outcome.ok, (source.name, outcome.error)
        outcomes[source.name] = (source, outcome)

    source, outcome = outcomes["patient_ct"]
    assert outcome.labels.shape == (6, 24, 24) and outcome.labels[2, 8, 8] == 1  # inside the prompt box
    seg = hd.seg.segread(output_path(tmp_path / "out", source))
    layout_uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in source.files]
    from producer.formats.dicom import read_layout

    ordered = list(read_layout(source.files).slice_uids)
    assert sorted(ordered) == sorted(layout_uids)
    decoded = seg.get_pixels_by_source_instance(ordered, combine_segments=True)
    np.testing.assert_array_equal(decoded, outcome.labels)
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert outcome.metrics["provenance"]["model_sha256"] in str(algorithm.AlgorithmParameters)
    assert seg.SegmentSequence[0].SegmentLabel == "liver"

    source, outcome = outcomes["research_t1"]
    back = nib.load(str(output_path(tmp_path / "out", source)))
    np.testing.assert_array_equal(back.affine, nib.load(str(source.path)).affine)
    np.testing.assert_array_equal(np.transpose(np.asarray(back.dataobj), (2, 1, 0)), outcome.labels)
    assert (tmp_path / "out" / "3DBox_CT_demo.npz").is_file()
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["study"] for r in records) == sorted(outcomes)


def test_submit_prints_the_skipped_files(tmp_path: Path, echo_models_dir: Path, mixed: Path):
    from click.testing import CliRunner

    from producer.cli import cli

    result = CliRunner().invoke(
        cli, ["submit", str(mixed), "--out", str(tmp_path / "out"), "--models-dir", str(echo_models_dir)]
    )
    assert result.exit_code == 0, result.output
    output = "".join(result.output.split())  # rich folds long lines anywhere
    assert "report.dcm:ComprehensiveSRStorage(ModalitySR)isnotanimage" in output
    assert "broken.dcm:corrupt" in output and "README.txt:notaDICOM" in output
    assert "4ok,0failed,3file(s)skipped" in output
