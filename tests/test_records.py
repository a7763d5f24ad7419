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
    "segment_colours": [None, [10, 200, 30]],
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
    assert context.segment_labels == ("liver", "box 2") and context.segment_colours == (None, (10, 200, 30))
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


# ----------------------------------------------------------------------------------------------- batch manifest

# the meta and study entry the hand-written dicts stored (before the manifest had a version)
OLD_META = {
    "batch_id": "20261204-120000-abcd1234",
    "created_at": 1733313600.0,
    "study_dir": "/data/studies",
    "total": 1,
    "sealed": True,
    "force": False,
    "queue": "",
    "producer": "host",
    "dicom_formats": ["seg"],
    "split": True,
    "submitted_at": 1733313601.0,
}


def test_the_manifest_records_round_trip_with_their_version():
    import json

    from worker.contract.manifest import MANIFEST_VERSION, BatchMeta, StudyEntry

    meta = BatchMeta.model_validate({**OLD_META, "version": MANIFEST_VERSION})
    assert BatchMeta.from_json(meta.to_json(), "meta") == meta and json.loads(meta.to_json())["version"] == 1
    entry = StudyEntry(source={"name": "ct", "path": "/data/ct", "kind": "dicom"}, enqueued_at=1.0, task_id="t")
    assert StudyEntry.from_json(entry.to_json().encode(), "entry") == entry


@pytest.mark.parametrize(
    ("record", "refusal"),
    [
        (OLD_META, "was written before manifests had versions; this producer reads manifest version 1 only"),
        ({**OLD_META, "version": 2, "shards": 4}, "was written as manifest version 2; this producer reads manifest"),
    ],
)
def test_a_manifest_of_another_version_is_refused_by_name(record, refusal):
    import json

    from worker.contract.manifest import BatchMeta, ManifestError

    with pytest.raises(ManifestError, match="the manifest of batch b1 " + refusal) as caught:
        BatchMeta.from_json(json.dumps(record), "the manifest of batch b1")
    assert "submit the studies again (stored results are reused)" in str(caught.value)


def test_a_manifest_record_that_does_not_fit_says_what_in_one_line():
    import json

    from worker.contract.manifest import BatchMeta, ManifestError, StudyEntry

    with pytest.raises(ManifestError, match=r"^meta does not fit: total: Input should be a valid integer"):
        BatchMeta.from_json(json.dumps({**OLD_META, "version": 1, "total": "many"}), "meta")
    with pytest.raises(ManifestError, match="entry does not fit: colour: Extra inputs are not permitted"):
        StudyEntry.from_json(json.dumps({"version": 1, "colour": "red"}), "entry")
    with pytest.raises(ManifestError, match="entry is not a JSON object"):
        StudyEntry.from_json("[1]", "entry")


def test_producer_status_refuses_a_batch_of_an_older_manifest(slot):
    import json

    from producer import api
    from worker.contract.keys import Keys
    from worker.contract.settings import FleetSettings

    settings = FleetSettings(broker_url=slot.url, namespace=f"{slot.namespace}-manifest")
    slot.client.set(Keys(settings.namespace).batch_meta("b-old"), json.dumps(OLD_META))
    with pytest.raises(api.UnknownBatch, match="the manifest of batch b-old was written before manifests had"):
        api.status("b-old", settings=settings)
    with pytest.raises(api.UnreadableBatch):
        api.results("b-old", settings=settings, wait=False)
