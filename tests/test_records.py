"""The JSON records are pydantic's: the output context a batch manifest stores keeps the JSON shape it had when
it was written by hand (old manifests still read), and a record that does not fit says what is wrong in one line
(worker.contract.errors.validation_message, the one helper every record and message uses)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from producer.formats.dicom_reference import DicomReference
from producer.formats.nifti import NiftiReference
from producer.formats.output_context import OutputContext
from worker.contract.errors import validation_message
from worker.contract.study import StudyError

# the JSON the hand-written OutputContext.to_json wrote (before pydantic did)
STORED = {
    "kind": "dicom",
    "segment_labels": ["liver", "box 2"],
    "dicom": {
        "header": {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Anon"}]}},
        "instances": [{"00080018": {"vr": "UI", "Value": ["1.2.3"]}}],
        "slices": [[0, None], [0, 1]],
        "notes": ["derived StudyInstanceUID"],
        "derived": ["StudyInstanceUID"],
    },
    "nifti": {
        "header": "AAAA",
        "affine": [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        "shape": [16, 16, 4],
        "version": 1,
    },
    "notes": ["grouped by series"],
}


def test_the_output_context_round_trips_in_the_shape_manifests_store():
    context = OutputContext.from_json(STORED)
    assert isinstance(context.dicom, DicomReference) and isinstance(context.nifti, NiftiReference)
    assert context.dicom.slices == ((0, None), (0, 1)) and context.nifti.shape == (16, 16, 4)
    assert context.segment_labels == ("liver", "box 2")
    assert context.to_json() == STORED
    minimal = OutputContext.from_json({"kind": "npz"})  # keys written later than the first manifests
    assert minimal == OutputContext("npz") and minimal.to_json()["dicom"] is None


def test_a_context_that_does_not_fit_is_a_study_error_naming_the_field():
    with pytest.raises(StudyError, match=r"output context does not fit: dicom.slices.0.0: .*integer"):
        OutputContext.from_json({**STORED, "dicom": {**STORED["dicom"], "slices": [["x", None]]}})
    with pytest.raises(StudyError, match="output_context: "):
        OutputContext.from_json("not a record")  # type: ignore[arg-type]


def test_validation_message_is_one_line_with_a_count_of_the_rest():
    class Record(BaseModel):
        a: int
        b: int
        c: int

    with pytest.raises(ValidationError) as caught:
        Record.model_validate({"a": "x", "b": "y", "c": "z"})
    message = validation_message(caught.value, limit=2)
    assert message.startswith("a: Input should be a valid integer") and message.endswith("(and 1 more)")
    assert "\n" not in message
    named = validation_message(caught.value, name=lambda loc: f"LITEMEDSAM_{str(loc[0]).upper()}")
    assert named.count("LITEMEDSAM_") == 3


def test_a_calibration_record_that_does_not_fit_is_ignored_and_a_bad_verdict_never_stored(tmp_path, caplog):
    from worker.calibration import read_record, record_path, write_verdict

    record_path(tmp_path).write_text('{"format": 1, "hosts": {"k": {"host": {}, "profiles": {"bf16": {}}}}}')
    with caplog.at_level("WARNING"):
        assert read_record(tmp_path) == {"format": 1, "hosts": {}}
    assert "hosts.k.calibrated_at: Field required" in caplog.text
    before = record_path(tmp_path).read_text()
    with pytest.raises(ValueError, match=r"not stored: .*profiles.bf16.passed: Input should be a valid boolean"):
        write_verdict(tmp_path, {"host": {}, "calibrated_at": "now", "profiles": {"bf16": {"passed": "maybe"}}})
    assert record_path(tmp_path).read_text() == before
    verdict = {
        "host": {"cpu": "x"},
        "calibrated_at": "now",
        "profiles": {"bf16": {"definition": {}, "passed": True, "equivalent_to_f32": False, "speedup": 1.5}},
        "cases": {"a": {"dsc_f32": 0.9}},  # kept as written
    }
    write_verdict(tmp_path, verdict)
    (stored,) = read_record(tmp_path)["hosts"].values()
    assert stored["cases"] == {"a": {"dsc_f32": 0.9}} and stored["profiles"]["bf16"]["speedup"] == 1.5
