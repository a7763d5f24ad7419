"""The fleet's parts without worker processes: store, content keys, messages, budgets, the job, the report.

Tests touching Redis use a private database (claimed empty, flushed after); the job runs the box-echo engine.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from fleet_support import worker_context
from producer.fleet import FleetClient, SubmitOptions
from producer.report import read_metrics_file, summarise
from worker.contract.arrays import StoreError, unpack_arrays
from worker.contract.budget import TimeBudget
from worker.contract.identity import EngineIdentity, image_digest
from worker.contract.keys import Keys
from worker.contract.manifest import StudyEntry
from worker.contract.messages import MessageError, Outcome, Progress, ResultRecord, TaskMessage, pack_image
from worker.contract.metrics import StudyMetrics
from worker.contract.settings import FleetSettings, parse_routes
from worker.contract.study import Study
from worker.job import run_study
from worker.job_context import MAX_DELIVERIES, Delivery, ProgressPublisher
from worker.ledger import BatchLedger
from worker.store import FileStore, open_store

RNG = np.random.default_rng(11)


# ----------------------------------------------------------------------------------------------- store


def test_blobs_refuse_pickled_arrays():
    buffer = io.BytesIO()
    np.savez(buffer, evil=np.array([{"a": 1}], dtype=object))
    with pytest.raises(StoreError, match="unreadable"):
        unpack_arrays(buffer.getvalue())


def test_redis_store_is_write_once_with_ttl(slot):
    store = open_store(slot.url, slot.namespace)
    assert store.put_once("result/k", b"first", 60)
    assert not store.put_once("result/k", b"second", 60)
    assert store.get("result/k") == b"first"
    assert 0 < store.client.ttl(f"{slot.namespace}:blob:result/k") <= 60
    assert store.touch("result/k", 600) and store.client.ttl(f"{slot.namespace}:blob:result/k") > 60
    assert store.get("result/missing") is None and not store.touch("result/missing", 10)


def test_file_store_is_write_once_and_expires(tmp_path):
    store = open_store(f"file://{tmp_path}", "ns")
    assert isinstance(store, FileStore)
    assert store.put_once("result/a", b"first", 60)
    assert not store.put_once("result/a", b"second", 60)
    assert store.get("result/a") == b"first"
    store.put("input/b", b"gone", -1)  # already expired
    assert store.get("input/b") is None and not store.exists("input/b")
    assert store.put_once("input/b", b"again", 60)  # an expired blob does not block a new one
    store.put("input/c", b"old", -1)
    assert store.sweep() == 1 and store.get("result/a") == b"first"
    assert not list((tmp_path / "ns").rglob(".staging-*"))
    with pytest.raises(ValueError):
        store.get("../escape")


# ------------------------------------------------------------------------------------- content addressing


def _identity(**changes) -> EngineIdentity:
    base = EngineIdentity(
        precision="f32",
        package_version="0.1.0",
        models={"litemedsam": "a" * 64},
        routing={
            "default": {"models": ["litemedsam"], "margin": 3.0},
            "modality": {"PET": {"strategy_3d": "triview"}, "MR": {}},
        },
    )
    return base.model_copy(update=changes)


def test_result_key_changes_with_everything_that_changes_masks():
    image = RNG.integers(0, 255, (20, 32, 32), dtype=np.uint8)
    boxes = np.array([[2, 2, 1, 20, 20, 10]])
    digest = image_digest(image)
    key = _identity().result_key(digest, boxes, "CT")
    assert key == _identity().result_key(image_digest(image.copy()), boxes.copy(), "CT")
    other_image = image.copy()
    other_image[0, 0, 0] ^= 1
    routing = _identity().routing
    no_margin = {**routing, "default": {**routing["default"], "margin": 0.0}}
    variants = [
        _identity().result_key(image_digest(other_image), boxes, "CT"),
        _identity().result_key(digest, boxes + np.array([[0, 0, 0, 1, 0, 0]]), "CT"),
        _identity().result_key(digest, boxes, "PET"),
        _identity(precision="bf16").result_key(digest, boxes, "CT"),
        _identity(models={"litemedsam": "b" * 64}).result_key(digest, boxes, "CT"),
        _identity(package_version="0.2.0").result_key(digest, boxes, "CT"),
        _identity(routing=no_margin).result_key(digest, boxes, "CT"),
    ]
    assert len({key, *variants}) == len(variants) + 1
    # a setting of another modality's route does not touch CT's results
    pet_margin = {**routing, "modality": {"PET": {"strategy_3d": "triview", "margin": 9.0}, "MR": {}}}
    assert _identity(routing=pet_margin).result_key(digest, boxes, "CT") == key


def test_engine_identity_survives_json_and_names_the_weights_that_run(echo_engine):
    from models.registry import load_registry

    identity = echo_engine.identity()
    assert EngineIdentity.model_validate_json(identity.model_dump_json()) == identity
    spec = load_registry(echo_engine.settings.models_dir)["litemedsam"]
    assert identity.models == {"litemedsam": spec.sha256} and identity.precision == "f32"
    assert identity.route_identity("Microscope")["model"] == "litemedsam"  # efficientvit-sam not registered
    assert identity.route_identity("PET")["strategy_3d"] == "triview"


def test_task_message_keeps_boxes_bit_exact_through_json():
    boxes = np.array([[10.1, 20.7, 30.3, 40.9]], dtype=np.float32)
    message = TaskMessage(
        batch_id="b",
        name="n",
        study_id="n",
        modality="CT",
        image_digest="d",
        image_shape=(8, 8, 3),
        boxes=boxes.tolist(),
        boxes_dtype=boxes.dtype.str,
        boxes_shape=boxes.shape,
        spacing=(1.0, 1.0, 2.5),
    )
    back = TaskMessage.from_wire(json.loads(json.dumps(message.to_wire())))
    assert back == message
    assert back.boxes_array().dtype == np.float32 and back.boxes_array().tobytes() == boxes.tobytes()
    with pytest.raises(MessageError, match="version"):
        TaskMessage.from_wire({**message.to_wire(), "version": 99})


@pytest.mark.parametrize(
    "payload, message",
    [
        ("not an object", "a task message is a JSON object"),
        ({"version": 2}, "batch_id: Field required"),
        (
            {
                "version": 2,
                "batch_id": "b",
                "name": "n",
                "study_id": "n",
                "modality": "CT",
                "image_digest": "d",
                "image_shape": [8, "x"],
                "boxes": [[1, 2, 3, 4]],
                "boxes_dtype": "<i8",
                "boxes_shape": [1, 4],
            },
            "image_shape.1: Input should be a valid integer",
        ),
        (
            {
                "version": 2,
                "batch_id": "b",
                "name": "n",
                "study_id": "n",
                "modality": "CT",
                "image_digest": "d",
                "image_shape": [8],
                "boxes": [],
                "boxes_dtype": "<i8",
                "boxes_shape": [0, 4],
                "colour": "red",
            },
            "colour: Extra inputs are not permitted",
        ),
    ],
)
def test_a_malformed_task_message_is_one_clear_line(payload, message):
    with pytest.raises(MessageError, match=message) as raised:
        TaskMessage.from_wire(payload)
    assert "\n" not in str(raised.value)


def test_progress_reads_the_positional_form_written_before_it_was_an_object():
    assert Progress.from_json('[3, 9, "w@h", 1.5]') == Progress(done=3, total=9, node="w@h", updated_at=1.5)
    assert Progress.from_json(Progress(done=1, total=2).model_dump_json()) == Progress(done=1, total=2)


def test_time_budget_scales_with_the_study_and_stays_below_its_ceiling():
    budget = TimeBudget(base=100, per_slice=10, per_box_slice=1, ceiling=21600)
    small, big = budget.limits(1, 3), budget.limits(90, 6)
    assert small[0] < small[1] < big[0] < big[1]
    assert budget.limits(90, 6, views=3)[0] > big[0]
    huge = budget.limits(5000, 50)
    assert huge[0] < huge[1] == 21600


@pytest.mark.parametrize(
    "namespace", ["", "a:b", "a*", "a?", "a[b]", "a/b", "..", ".hidden", "-x", "a b", "x" * 65, "ns\n"]
)
def test_a_namespace_must_be_a_plain_prefix(namespace):
    with pytest.raises(ValueError, match="LITEMEDSAM_NAMESPACE"):
        FleetSettings(namespace=namespace)


def test_celery_keeps_its_keys_under_the_namespace():
    from worker.app import celery_config, make_app
    from worker.lease import unacked_index_key

    for namespace in ("lms", "tenant-B.2", "t0123abcd-99"):
        settings = FleetSettings(namespace=namespace)
        options = celery_config(settings)["broker_transport_options"]
        assert options["global_keyprefix"] == f"{namespace}:celery:" == Keys(namespace).broker_prefix
        assert unacked_index_key(options) == f"{namespace}:celery:unacked_index"  # the leases follow the prefix
        assert Keys(namespace).queue("pet") == f"{namespace}:celery:pet"
        app = make_app(settings)
        assert app.conf.litemedsam_namespace == namespace
        with app.connection_for_write() as connection:  # what kombu's channel really uses
            assert connection.default_channel.global_keyprefix == f"{namespace}:celery:"


def test_acl_rules_confine_a_user_to_its_namespace():
    rules = Keys("tenantA").acl_rules(db=3)
    assert rules[:4] == ["resetkeys", "~tenantA:*", "resetchannels", "&tenantA:*"]
    # PSUBSCRIBE patterns are matched literally by Redis: kombu's, as it sends them on database 3
    assert {
        "&tenantA:celery:/3.celery.pidbox",
        "&tenantA:celery:/3.celeryev/worker.*",
        "&tenantA:celery:/3.celeryev/*",
    } <= set(rules)
    assert all(rule.startswith(("~tenantA:", "&tenantA:", "+", "-", "reset")) for rule in rules), rules


def _request(**fields):
    from celery.app.task import Context

    return Context(
        {
            "id": "task-1",
            "task": "litemedsam.segment",
            "retries": 2,
            "timelimit": (70, 60),
            "delivery_info": {"routing_key": "pet"},
            **fields,
        }
    )


def test_a_retried_message_keeps_its_namespace_header():
    from worker.contract.keys import NAMESPACE_HEADER
    from worker.tasks import segment

    request = _request(**{NAMESPACE_HEADER: "tenantA"})
    assert segment.signature_from_request(request, args=[{}], kwargs={}).options["headers"] == {
        NAMESPACE_HEADER: "tenantA"
    }  # Celery's retry republishes with these headers


def test_a_foreign_message_that_cannot_be_handed_back_is_kept_aside(slot, monkeypatch):
    import redis

    from worker import misrouted
    from worker.app import make_app
    from worker.contract.keys import NAMESPACE_HEADER

    keys = Keys(f"{slot.namespace}-parked")
    app = make_app(FleetSettings(broker_url=slot.url, namespace=keys.namespace))
    handed = []
    monkeypatch.setattr(misrouted, "hand_back", lambda *args: handed.append(args))
    payload = {"name": "study", "queue": "pet"}
    answer = misrouted.refuse(app, keys, slot.client, 60, payload, _request(**{NAMESPACE_HEADER: "tenantB"}), "n@h")
    assert answer == {"status": "handed back", "namespace": "tenantB", "queue": "pet"} and len(handed) == 1
    assert not slot.client.exists(keys.misrouted())

    def refused(*_):
        raise redis.exceptions.NoPermissionError("this user has no permissions to access one of the keys")

    monkeypatch.setattr(misrouted, "hand_back", refused)
    for header in ({NAMESPACE_HEADER: "tenantB"}, {}, {NAMESPACE_HEADER: "bad:ns"}):
        answer = misrouted.refuse(app, keys, slot.client, 60, payload, _request(**header), "n@h")
        assert answer["status"] == "parked"
    stored = slot.client.lrange(keys.misrouted(), 0, -1)
    assert [misrouted.ParkedMessage.model_validate_json(raw).version for raw in stored] == [1, 1, 1]
    parked = [json.loads(raw) for raw in stored]
    assert [entry["namespace"] for entry in parked] == ["bad:ns", None, "tenantB"]  # newest first
    assert "NoPermissionError" in parked[2]["reason"] and parked[0]["payload"] == payload
    assert parked[0]["queue"] == "pet" and parked[0]["timelimit"] == [70, 60] and parked[0]["retries"] == 2
    assert 0 < slot.client.ttl(keys.misrouted()) <= 60


def test_queue_routes():
    assert parse_routes("PET=pet, mr = big") == {"pet": "pet", "mr": "big"}
    settings = FleetSettings(queue_routes=parse_routes("PET=pet"))
    assert settings.queue_for("PET") == "pet" and settings.queue_for("CT") == settings.default_queue
    assert settings.queue_for("PET", explicit="other") == "other"
    with pytest.raises(ValueError):
        parse_routes("PET")
    options = SubmitOptions(routes={"PET": "pet"})
    assert options.explicit_queue("pet") == "pet" and options.explicit_queue("CT") is None
    assert SubmitOptions(queue="all", routes={"PET": "pet"}).explicit_queue("PET") == "all"


def test_studies_go_to_their_modality_queue(job):
    client, _ = job
    study = _study()
    routed = client.stage("b", "s", study, SubmitOptions(routes={"us": "ultrasound"}))
    default = client.stage("b", "s", study, SubmitOptions())
    assert (routed.message.queue, default.message.queue) == ("ultrasound", client.settings.default_queue)
    assert routed.result_key == ""  # no worker has announced itself on that queue: no cache lookup


def test_source_round_trips_through_the_manifest(tmp_path):
    from producer.discovery import StudySource
    from producer.formats.sidecar import SidecarRef
    from producer.source_codec import source_from_json, source_to_json

    source = StudySource(
        "s",
        tmp_path,
        "dicom",
        (tmp_path / "1.dcm", tmp_path / "2.dcm"),
        SidecarRef(tmp_path / "prompts.json", "series", "1.2.3", True),
    )
    assert source_from_json(json.loads(json.dumps(source_to_json(source)))) == source


def test_source_json_is_what_stored_batches_hold(tmp_path):
    """The manifest's wire format, as batches stored before the pydantic codec hold it: same keys, same order,
    paths as strings; an entry from before `notes` existed still reads; a tampered one is that study's error."""
    from producer.discovery import StudySource
    from producer.formats.sidecar import SidecarRef
    from producer.source_codec import source_from_json, source_to_json
    from worker.contract.study import StudyError

    nifti = StudySource(
        "scan", Path("/data/scan.nii.gz"), "nifti", (Path("/data/scan.nii.gz"),), SidecarRef(Path("/data/p.json"))
    )
    stored = (
        '{"name": "scan", "path": "/data/scan.nii.gz", "kind": "nifti", "files": ["/data/scan.nii.gz"], '
        '"sidecar": {"path": "/data/p.json", "section": "", "uid": "", "shared": false}, "notes": []}'
    )
    assert json.dumps(source_to_json(nifti)) == stored
    assert source_from_json(json.loads(stored)) == nifti
    npz = StudySource("2DBox_CT_x", Path("/data/2DBox_CT_x.npz"), "npz", notes=("a note",))
    assert source_to_json(npz) == {
        "name": "2DBox_CT_x",
        "path": "/data/2DBox_CT_x.npz",
        "kind": "npz",
        "files": [],
        "sidecar": None,
        "notes": ["a note"],
    }
    older = {"name": "2DBox_CT_x", "path": "/data/2DBox_CT_x.npz", "kind": "npz", "files": [], "sidecar": None}
    assert source_from_json(older) == StudySource("2DBox_CT_x", Path("/data/2DBox_CT_x.npz"), "npz")
    with pytest.raises(StudyError, match="name"):
        source_from_json({"path": "/data/x.npz", "kind": "npz"})
    with pytest.raises(StudyError, match="files"):
        source_from_json({"name": "x", "path": "/data/x.npz", "kind": "npz", "files": 7})


# ------------------------------------------------------------------------------------------- report


def test_report_statistics_leave_cached_studies_out(tmp_path):
    def record(name, modality, encode, cached=False, status="ok"):
        extra = {"cached": cached, "queue_wait": 0.5, "transfer": {"upload": 0.01}}
        return {
            "study": name,
            "modality": modality,
            "status": status,
            "seconds": encode + 1,
            "metrics": {
                "times": {"encode": encode, "total": encode + 0.5},
                "counts": {"slices_encoded": 2},
                "extra": extra,
            },
        }

    records = [record(f"ct{i}", "CT", float(i)) for i in range(1, 11)]
    records += [record("mr", "MR", 100.0, cached=True), record("bad", "MR", 0.0, status="error")]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    report = summarise(read_metrics_file(tmp_path / "metrics.jsonl"), span_seconds=20.0)
    assert (report.studies, report.ok, report.failed, report.cached, report.computed) == (12, 11, 1, 1, 10)
    encode = next(s for s in report.stages if s.modality == "all" and s.stage == "encode")
    assert encode.n == 10 and encode.mean == pytest.approx(5.5) and encode.p50 == pytest.approx(5.5)
    assert encode.p95 == pytest.approx(np.percentile(np.arange(1, 11), 95))
    assert report.throughput == pytest.approx(0.5) and report.slices_per_second == pytest.approx(1.0)
    assert {m.modality: m.studies for m in report.modalities} == {"CT": 10, "MR": 2}
    assert not any(s.modality == "MR" for s in report.stages)


# ------------------------------------------------------------------------------------------- telemetry


def test_child_metrics_reach_the_parent_even_if_prometheus_was_imported_first(tmp_path, monkeypatch):
    from prometheus_client import values
    from prometheus_client.multiprocess import MultiProcessCollector

    from worker.contract.messages import Outcome
    from worker.telemetry import ChildTelemetry, HitRatioCollector

    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # in-memory mode now; restored after the test
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("LITEMEDSAM_METRICS_PORT", "9808")
    child = ChildTelemetry()
    metrics = {
        "times": {"encode": 0.5, "total": 1.0},
        "counts": {"cache_hits": 3, "cache_misses": 1},
        "extra": {"queue_wait": 0.2, "transfer": {"input_download": 0.01}},
    }
    child.observe(Outcome(name="a", status="ok", modality="CT", metrics=metrics))
    child.observe(Outcome(name="b", status="error", modality="CT", error="bad"))
    merged = MultiProcessCollector(None, path=str(tmp_path))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in merged.collect() for s in f.samples}
    assert samples[("litemedsam_studies_total", (("modality", "CT"), ("status", "ok")))] == 1
    assert samples[("litemedsam_studies_total", (("modality", "CT"), ("status", "error")))] == 1
    assert samples[("litemedsam_stage_seconds_count", (("stage", "encode"),))] == 1
    assert samples[("litemedsam_stage_seconds_sum", (("stage", "queue_wait"),))] == pytest.approx(0.2)
    (ratio,) = HitRatioCollector(merged).collect()
    assert ratio.samples[0].value == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------------- the job


class FakeEngine:
    def __init__(self, raises: BaseException):
        self.raises = raises

    def segment(self, study, progress=None):
        raise self.raises

    def memory_needed(self, study) -> int:
        return 0


@pytest.fixture(scope="module")
def echo_engine(echo_models_dir):
    from worker.engine.engine import Engine, EngineSettings

    return Engine(EngineSettings(models_dir=echo_models_dir, threads=1))


@pytest.fixture()
def job(slot, echo_engine, echo_models_dir):
    """A worker context and a producer client on the same private Redis (a fresh namespace per test)."""
    settings = FleetSettings(broker_url=slot.url, namespace=f"{slot.namespace}-{time.monotonic_ns()}")
    client = FleetClient(settings)
    ctx = worker_context(client, echo_engine, "unit@test")
    client.directory.publish([settings.default_queue], ctx.identity, ctx.node)
    return client, ctx


def _study(boxes=((10, 10, 60, 50), (30, 20, 90, 70))) -> Study:
    image = RNG.integers(0, 255, (80, 100, 3), dtype=np.uint8)
    return Study("2DBox_US_unit", "US", image, np.array(boxes))


def _message(client: FleetClient, study: Study, batch="b1", force=False, upload=True) -> TaskMessage:
    message = client.stage(batch, study.study_id, study, SubmitOptions(force=force)).message
    if upload:
        client.upload(message.image_digest, study)
    return message


def _key(client: FleetClient, message: TaskMessage) -> str:
    """The result key the producer expects (from the queue's published engine identity)."""
    return client.identity(message.queue).result_key(message.image_digest, message.boxes_array(), message.modality)


def test_job_judges_a_message_whose_boxes_are_no_prompts(job):
    """A producer that skipped its checks sends boxes of the wrong shape: an error outcome naming it, one run."""
    client, ctx = job
    message = _message(client, _study()).model_copy(update={"boxes": [[1, 2, 3, 4, 5]], "boxes_shape": (1, 5)})
    outcome = run_study(ctx, message, Delivery("t-five"))
    assert outcome.status == "error" and "boxes have shape (1, 5), expected (N, 4)" in outcome.error, outcome
    assert client.ledger.outcome("b1", message.name).to_json() == outcome.to_json()


def test_job_computes_stores_once_and_ignores_a_duplicate_delivery(job):
    client, ctx = job
    study = _study()
    message = _message(client, study)
    outcome = run_study(ctx, message, Delivery("t1"))
    assert outcome.ok and outcome.result_key == _key(client, message)  # producer and worker agree on the key
    record = client.fetch(outcome.result_key)
    assert record.labels.dtype == np.uint16 and record.labels.max() == 2
    assert np.array_equal(record.labels, ctx.engine.segment(study).labels)
    extra = outcome.metrics.extra
    assert extra.cached is False and extra.node == "unit@test" and extra.queue_wait >= 0
    assert set(extra.transfer.model_dump(exclude_none=True)) == {"upload", "input_download", "result_upload"}
    assert client.ledger.outcome("b1", study.study_id).to_json() == outcome.to_json()
    assert run_study(ctx, message, Delivery("t1")).to_json() == outcome.to_json()  # duplicate: no second run
    assert client.ledger.executions() == {"unit@test": 1}
    assert client.ledger.runs("b1") == {study.study_id: 1}
    assert client.ledger.progress("b1") == {}
    again = run_study(ctx, message.model_copy(update={"batch_id": "b2"}), Delivery("t2"))  # same content, new batch
    assert again.metrics.extra.cached is True and client.ledger.executions() == {"unit@test": 1}


def test_job_keeps_the_first_stored_result_when_a_second_delivery_finishes_later(job):
    client, ctx = job
    study = _study()
    message = _message(client, study)
    sentinel = ResultRecord(
        np.full(study.image.shape[:2], 7, np.uint16), StudyMetrics.model_validate({"extra": {"sentinel": True}})
    )

    class RacingStore:  # another delivery stores its result while this one computes
        def __getattr__(self, name):
            return getattr(client.store, name)

        def put_once(self, key, blob, ttl):
            client.store.put_once(key, sentinel.to_bytes(), ttl)
            return client.store.put_once(key, blob, ttl)

    outcome = run_study(replace(ctx, store=RacingStore()), message, Delivery("t1"))
    assert outcome.ok and outcome.metrics.extra.sentinel is True
    assert outcome.metrics.extra.duplicate_of_stored is True
    assert (client.fetch(outcome.result_key).labels == 7).all()


def test_a_run_overtaken_by_another_delivery_stops_and_adds_nothing(job):
    """A worker cut off from Redis loses its lease and the study completes elsewhere; when its own run next
    reports progress it finds the outcome recorded and stops: no result stored, no second outcome, not counted
    (tests/test_partition.py does it with a real partition)."""
    client, ctx = job
    study = _study()
    message = _message(client, study)
    theirs = Outcome(
        name=message.name,
        status="ok",
        modality=message.modality,
        result_key=_key(client, message),
        metrics={"extra": {"node": "other@host"}},
    )
    reported = []

    class Overtaken:  # the other delivery records its outcome while this engine runs
        def memory_needed(self, study):
            return ctx.engine.memory_needed(study)

        def segment(self, study, progress=None):
            client.ledger.record(message.batch_id, theirs)
            return ctx.engine.segment(
                study, progress=lambda done, total: (reported.append(done), progress(done, total))
            )

    class Counting:
        def __init__(self):
            self.seen = []

        def observe(self, outcome):
            self.seen.append(outcome)

    telemetry = Counting()
    outcome = run_study(replace(ctx, engine=Overtaken(), telemetry=telemetry), message, Delivery("t-late"))
    assert reported == [1]  # the engine reached its progress report, and stopped there
    assert outcome.to_json() == theirs.to_json()
    assert client.ledger.outcome(message.batch_id, message.name).to_json() == theirs.to_json()
    assert not client.store.exists(Keys.result_blob(_key(client, message)))
    assert telemetry.seen == [] and client.ledger.progress(message.batch_id) == {}
    assert client.ledger.runs(message.batch_id) == {message.name: 1}
    # without another outcome the same engine runs through and stores its result
    again = run_study(ctx, message.model_copy(update={"batch_id": "b-alone"}), Delivery("t-alone"))
    assert again.ok and again.metrics.extra.node == ctx.node
    assert client.store.exists(Keys.result_blob(_key(client, message)))


def test_forced_job_replaces_the_result_once_per_task(job):
    client, ctx = job
    study = _study()
    message = _message(client, study, force=True)
    stale = ResultRecord(np.zeros(study.image.shape[:2], np.uint16), StudyMetrics())
    client.store.put(Keys.result_blob(_key(client, message)), stale.to_bytes(), 600)
    outcome = run_study(ctx, message, Delivery("forced-1"))
    assert outcome.metrics.extra.cached is False and client.fetch(outcome.result_key).labels.max() == 2
    client.store.put(Keys.result_blob(_key(client, message)), stale.to_bytes(), 600)
    redelivered = message.model_copy(update={"batch_id": "redelivered"})
    run_study(ctx, redelivered, Delivery("forced-1"))  # same task delivered again
    assert client.fetch(outcome.result_key).labels.max() == 0


def test_job_replaces_an_unreadable_stored_result(job):
    client, ctx = job
    study = _study()
    message = _message(client, study)
    client.store.put(Keys.result_blob(_key(client, message)), b"not an npz", 600)
    outcome = run_study(ctx, message, Delivery("t1"))
    assert outcome.ok and outcome.metrics.extra.cached is False
    assert client.fetch(outcome.result_key).labels.max() == 2


@pytest.mark.parametrize(
    "problem, reason",
    [
        ("inverted", "inverted"),
        ("missing", "no longer in the store"),
        ("corrupt", "digest mismatch"),
        ("poison", "abandoned"),
        ("engine", "engine error: RuntimeError: boom"),
        ("timeout", "time limit"),
    ],
)
def test_job_ends_a_bad_study_with_its_reason(job, problem, reason):
    client, ctx = job
    boxes = ((60, 10, 10, 50),) if problem == "inverted" else ((10, 10, 60, 50),)
    study = _study(boxes)
    message = _message(client, study, upload=problem != "missing")
    if problem == "corrupt":
        client.store.put(Keys.input_blob(message.image_digest), pack_image(study.image[::-1]), 60)
    if problem == "poison":
        for _ in range(MAX_DELIVERIES):
            client.ledger.count_run(message.batch_id, message.name)
    if problem in ("engine", "timeout"):
        ctx = replace(ctx, engine=FakeEngine(RuntimeError("boom") if problem == "engine" else SoftTimeLimitExceeded()))
    outcome = run_study(ctx, message, Delivery("t", soft_limit=7))
    assert outcome.status == "error" and reason in outcome.error
    assert outcome.metrics.extra.node == "unit@test"  # which worker judged it
    assert client.ledger.outcome(message.batch_id, message.name).error == outcome.error
    assert client.fetch(_key(client, message)) is None


def test_hard_time_limit_is_recorded_as_the_study_error(job, monkeypatch):
    from worker import tasks

    client, _ = job
    study = _study()
    message = _message(client, study)
    monkeypatch.setenv("LITEMEDSAM_BROKER", client.settings.broker_url)
    monkeypatch.setenv("LITEMEDSAM_NAMESPACE", client.settings.namespace)
    tasks._ledger.cache_clear()
    try:
        tasks.on_task_failure(
            sender=tasks.segment, task_id="t", exception=TimeLimitExceeded(61), args=[message.to_wire()]
        )
    finally:
        tasks._ledger.cache_clear()
    outcome = client.ledger.outcome(message.batch_id, message.name)
    assert outcome.status == "error" and "hard limit (61" in outcome.error


def test_progress_is_throttled_but_the_last_step_always_published(slot):
    import redis

    ledger = BatchLedger(redis.Redis.from_url(slot.url), Keys(f"{slot.namespace}-progress"), 60)
    publish = ProgressPublisher(ledger, "b", "s", "node")
    for done in range(1, 51):
        publish(done, 50)
        if done == 1:
            assert ledger.progress("b")["s"].done == 1
        if 1 < done < 50:
            assert ledger.progress("b")["s"].done == 1  # within the throttle interval
    assert ledger.progress("b")["s"].done == 50


# ----------------------------------------------------------------------------------------------- memory guard


def test_a_study_that_cannot_fit_is_refused_before_the_engine_runs(job):
    from worker.memory import MemoryGuard, rss_bytes

    client, ctx = job
    study = _study()
    message = _message(client, study)
    engine = ctx.engine
    tight = replace(ctx, memory=MemoryGuard(rss_bytes() + engine.memory_needed(study) // 2))
    outcome = run_study(tight, message, Delivery("t-mem"))
    assert outcome.status == "error" and "memory guard: this study needs about" in outcome.error
    assert client.ledger.runs(message.batch_id) == {message.name: 1}
    assert "unit@test" not in client.ledger.executions()  # the engine never ran
    roomy = replace(ctx, memory=MemoryGuard(rss_bytes() + 4 * engine.memory_needed(study)))
    assert run_study(roomy, message.model_copy(update={"batch_id": "b-roomy"}), Delivery("t-mem2")).ok


class Ballooning:
    """An engine whose study keeps allocating (a leak, or an estimate that was wrong)."""

    def memory_needed(self, study) -> int:
        return 0

    def segment(self, study, progress=None):
        hoard = []
        for _ in range(200):
            hoard.append(np.ones(16 << 20, np.uint8))  # 16 MiB more every 50 ms
            time.sleep(0.05)
        raise AssertionError("the memory guard did not stop this process")


def _run_ballooning(ctx, message, limit) -> None:  # in a forked child: the guard ends this process
    from worker.memory import MemoryGuard

    run_study(replace(ctx, engine=Ballooning(), memory=MemoryGuard(limit, interval=0.02)), message, Delivery("t-b"))


def test_a_study_outgrowing_the_guard_ends_its_process_with_the_reason_recorded(job):
    import multiprocessing

    from worker.memory import EXIT_CODE, rss_bytes

    client, ctx = job
    message = _message(client, _study())
    child = multiprocessing.get_context("fork").Process(
        target=_run_ballooning, args=(ctx, message, rss_bytes() + (200 << 20))
    )
    child.start()
    child.join(120)
    assert child.exitcode == EXIT_CODE
    outcome = client.ledger.outcome(message.batch_id, message.name)
    assert outcome.status == "error" and "memory guard: the worker process reached" in outcome.error
    assert "not retried" in outcome.error
    redelivered = run_study(ctx, message, Delivery("t-b2"))  # what Celery's redelivery would do
    assert redelivered.error == outcome.error and client.ledger.runs(message.batch_id) == {message.name: 1}


# ----------------------------------------------------------------------------------------------- names and keys


@pytest.mark.parametrize("name", ["../escaped", "/tmp/absolute", "a/../../b", "..", "back\\slash", "nul\0"])
def test_study_names_cannot_escape_the_output_folder(tmp_path, name):
    from producer import api
    from producer.discovery import StudySource
    from producer.outcome import StudyOutcome
    from producer.outputs import OutputWriter
    from worker.contract.study import StudyError

    writer = OutputWriter(tmp_path / "out")
    outcome = StudyOutcome(name=name, modality="CT", labels=np.ones((4, 4), np.uint16), metrics={})
    writer.write(StudySource(name, tmp_path / "in.npz", "npz"), outcome)  # e.g. a name from a tampered manifest
    assert outcome.status == "error" and "not a plain file name" in outcome.error
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["metrics.jsonl"]
    with pytest.raises(StudyError, match="not a plain file name"):  # refused before anything is enqueued
        api.submit_studies({name: _study()}, settings=FleetSettings(broker_url="redis://127.0.0.1:1/0"))


def test_result_keys_follow_content_not_names_or_batches(job):
    client, ctx = job
    first, second = _study(), _study()  # same name and boxes, different images
    one = run_study(ctx, _message(client, first, batch="batch-1"), Delivery("k1"))
    two = run_study(ctx, _message(client, second, batch="batch-2"), Delivery("k2"))
    assert one.ok and two.ok and one.result_key != two.result_key
    assert client.ledger.outcome("batch-1", first.study_id).result_key == one.result_key
    assert client.ledger.outcome("batch-2", second.study_id).result_key == two.result_key
    again = run_study(ctx, _message(client, first, batch="batch-3"), Delivery("k3"))  # same content, new batch
    assert again.result_key == one.result_key and again.metrics.extra.cached is True


def test_ctrl_c_while_enqueuing_seals_the_batch_with_what_was_enqueued(job, monkeypatch):
    from producer.fleet import SubmissionInterrupted

    client, _ = job
    submitted = []

    def submit_study(batch_id, name, study, options, entry=None):
        if submitted:
            client.ledger.add_study(batch_id, name, StudyEntry(enqueued_at=time.time()))  # caught half-way
            raise KeyboardInterrupt
        submitted.append(name)
        return "queued"

    monkeypatch.setattr(client, "submit_study", submit_study)
    with pytest.raises(SubmissionInterrupted) as caught:
        client.submit_studies({"first": _study(), "second": _study(), "third": _study()}, SubmitOptions())
    batch = caught.value.batch
    assert not caught.value.complete and batch.names == ["first", "second"]
    meta = client.ledger.meta(batch.batch_id)
    assert meta.sealed and meta.interrupted and meta.total == 2
    half_way = client.ledger.outcome(batch.batch_id, "second")
    assert half_way.status == "error" and "submit it again" in half_way.error
