"""producer.formats.registry: one class per study kind, and the only place a source's kind becomes behaviour
(discovery, loading, outputs, and a gateway job's decisions)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from producer.discovery import StudySource, discover
from producer.formats.registry import FORMATS, format_of
from producer.formats.sidecar import parse_entry
from producer.gateway.pipeline import JobFailed, JobPipeline
from producer.outcome import StudyOutcome
from producer.outputs import METRICS_FILE, SUFFIXES, OutputWriter, output_path
from worker.contract.study import StudyError


def test_every_kind_is_one_registered_format_with_its_own_output():
    assert list(FORMATS) == ["npz", "nifti", "dicom"]  # DICOM last: it claims every file the others leave
    assert all(fmt.kind == kind for kind, fmt in FORMATS.items())
    assert SUFFIXES == {"npz": ".npz", "nifti": ".seg.nii.gz", "dicom": ".seg.dcm"}


def test_an_unknown_kind_is_that_studys_error_alone(tmp_path):
    source = StudySource("odd", tmp_path / "odd.bin", "tiff")
    try:
        format_of(source)
    except StudyError as error:
        assert "unknown study kind 'tiff'" in str(error)
    else:
        raise AssertionError("an unknown kind was accepted")
    writer = OutputWriter(tmp_path / "out")
    outcome = StudyOutcome("odd", labels=np.zeros((4, 4), np.uint16))
    writer.write(source, outcome)
    assert not outcome.ok and "unknown study kind" in outcome.error
    record = json.loads((tmp_path / "out" / METRICS_FILE).read_text())
    assert record["study"] == "odd" and record["status"] == "error"


def test_each_format_loads_and_writes_what_it_found(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "2DBox_CT_x.npz", imgs=image, boxes=np.array([[4, 4, 20, 20]]))
    (tmp_path / "notes.json").write_text("{}")  # a sidecar, never a study
    found = discover(tmp_path)
    assert [(s.name, s.kind) for s in found.studies] == [("2DBox_CT_x", "npz")] and not found.skipped
    source = found.studies[0]
    study, context = format_of(source).load(source)
    assert study.image.shape == image.shape and context.kind == "npz"
    labels = np.zeros(image.shape[:2], np.uint16)
    labels[4:21, 4:21] = 1
    OutputWriter(tmp_path / "out").write(source, StudyOutcome(source.name, labels=labels, context=context))
    with np.load(output_path(tmp_path / "out", source)) as written:
        np.testing.assert_array_equal(written["segs"], labels)


def test_a_jobs_decisions_are_its_formats(tmp_path):
    """The gateway asks the format where a job's prompts go, whether they are needed, whether a SEG can be stored,
    and which files the job offers: no branch on the kind's string."""
    assert [name for name, fmt in FORMATS.items() if fmt.boxes_in_sidecar] == ["nifti", "dicom"]
    assert [name for name, fmt in FORMATS.items() if fmt.gives_seg] == ["dicom"]

    volume = np.zeros((16, 16, 4), np.float32)
    volume[4:12, 4:12, 1:3] = 200
    nifti_dir = tmp_path / "nifti"
    nifti_dir.mkdir()
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.5, 1.0])), str(nifti_dir / "scan.nii.gz"))
    with pytest.raises(JobFailed, match="prompts are required for NIfTI studies"):
        JobPipeline._find_study(nifti_dir, None)
    prompts = parse_entry({"modality": "CT", "boxes": [{"label": "organ", "voxel": [4, 4, 1, 11, 11, 2]}]}, "prompts")
    source = JobPipeline._find_study(nifti_dir, prompts)
    assert source.kind == "nifti"
    assert sorted(path.name for path in nifti_dir.iterdir()) == ["scan.nii.gz"]  # the prompts stay in memory

    with pytest.raises(StudyError, match="no box prompts"):
        format_of(source).load(source)  # the sidecar path: there is none
    study, context = format_of(source).load(source, prompts)
    assert context.segment_labels == ("organ",) and study.modality == "CT"
    labels = np.zeros(study.image.shape[:3], np.uint16)
    labels[1:3, 4:12, 4:12] = 1
    writer = OutputWriter(tmp_path / "nifti_out")
    outcome = StudyOutcome(source.name, labels=labels, context=context)
    writer.write(source, outcome)
    assert format_of(source).downloads(writer.folder, source, outcome) == {"nifti": "scan.seg.nii.gz"}

    npz_dir = tmp_path / "npz"
    npz_dir.mkdir()
    np.savez(npz_dir / "2DBox_CT_x.npz", imgs=np.zeros((8, 8, 3), np.uint8), boxes=np.array([[1, 1, 5, 5]]))
    with pytest.raises(JobFailed, match="an npz upload carries its own boxes"):
        JobPipeline._find_study(npz_dir, prompts)
    source = JobPipeline._find_study(npz_dir, None)
    assert format_of(source).downloads(writer.folder, source, outcome) == {}
