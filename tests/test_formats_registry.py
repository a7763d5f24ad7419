"""producer.formats.registry: one class per study kind, and the only place a source's kind becomes behaviour."""

from __future__ import annotations

import json

import numpy as np

from producer.discovery import StudySource, discover
from producer.formats.registry import FORMATS, format_of
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
