"""One study across several workers (issue 12): slice parts for 3D propagation, view tasks for PET tri-view.

Fast lane (no real model, no worker processes): the slice order against the engine's real request order, part
ranges, the split decision, the exact-array codec, claims and the vote trigger on a private Redis database,
and the coordinator with its parts in this process on the box-echo engine (parts run before, beside or after
the coordinator; a part whose input is unreadable fails its study).

Fleet (marked fleet/model): two real `worker start` processes (1 thread each) with the real LiteMedSAM and the
split threshold lowered by env, masks compared bit for bit with the embedded run. Worker A consumes the default
queue and `solo`, B only the default queue, so a study sent to `solo` has exactly one worker of concurrency 1.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fleet_support import worker_context
from producer.fleet import FleetClient, SubmitOptions
from worker.contract.arrays import StoreError
from worker.contract.keys import Keys
from worker.contract.messages import MessageError
from worker.contract.settings import FleetSettings, SplitSettings
from worker.contract.study import Study
from worker.embedding_store import Claims, EmbeddingBlobs, pack_exact, unpack_exact
from worker.fanout import (
    NONE,
    SLICES,
    TRIVIEW_VIEWS,
    VIEWS_MODE,
    PartMessage,
    SplitBoard,
    all_landed,
    decide,
    part_ranges,
)
from worker.job import run_study
from worker.job_context import Delivery, WorkerContext

RNG = np.random.default_rng(12)


# ------------------------------------------------------------------------------------------ pure decisions


def _volume_study(modality="CT", shape=(30, 48, 40), boxes=((5, 6, 0, 30, 40, 9), (10, 4, 4, 36, 30, 15))) -> Study:
    image = RNG.integers(0, 255, shape, dtype=np.uint8)
    return Study(f"3DBox_{modality}_unit{RNG.integers(1 << 30)}", modality, image, np.array(boxes, dtype=np.int64))


class Recording:
    """An embedding source that encodes locally and records the order of the engine's requests."""

    def __init__(self):
        self.calls = []

    def embedding(self, view, index, encode):
        self.calls.append((view, index))
        return encode()


@pytest.fixture(scope="module")
def echo_engines(echo_models_dir):
    """Three engines: one per simulated worker (an engine is one process's: never shared across threads)."""
    from worker.engine.engine import Engine, EngineSettings

    return [Engine(EngineSettings(models_dir=echo_models_dir, threads=1)) for _ in range(3)]


@pytest.fixture(scope="module")
def echo_engine(echo_engines):
    return echo_engines[0]


def test_the_planned_slice_order_is_the_order_the_propagation_asks_for(echo_engine):
    from worker.engine.strategies import view_plan

    for modality, views in (("CT", ("axial",)), ("PET", TRIVIEW_VIEWS)):
        study = _volume_study(modality)
        recording = Recording()
        echo_engine.cache = type(echo_engine.cache)(echo_engine.cache.max_bytes)  # nothing cached from before
        echo_engine.segment(study, source=recording)
        planned = [(view, z) for view in views for z in view_plan(study.image.shape, study.boxes, view)[0]]
        assert recording.calls == planned
    # boxes of different middles: the up sweep from the lowest middle, then the down sweep's new slices
    order, steps = view_plan((30, 8, 8), np.array([[0, 0, 0, 4, 4, 9], [0, 0, 4, 4, 4, 15]]), "axial")
    assert order == [*range(4, 16), 3, 2, 1, 0] and steps == 12 + 9  # down: 8..4 for box 1, 3..0 for box 0


def test_part_ranges_cover_the_order_contiguously():
    for needed, most, size in ((90, 8, 12), (90, 3, 12), (15, 4, 4), (11, 4, 12), (12, 4, 12), (100, 8, 1)):
        ranges = part_ranges(needed, most, size)
        assert len(ranges) == min(most, needed // size)
        if ranges:
            assert ranges[0][0] == 0 and ranges[-1][1] == needed
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert all(stop - start >= size for start, stop in ranges)


def test_the_split_decision_and_its_reasons():
    on = SplitSettings(min_slices=10, max_parts=4, part_slices=4)
    shape, boxes = (40, 32, 32), np.array([[2, 2, 5, 20, 20, 30]])
    split = decide("propagate", shape, boxes, on, True, 0)
    assert split.mode == SLICES and len(split.ranges) == 4 and len(split.orders["axial"]) == 26
    assert decide("box2d", (32, 32, 3), np.array([[1, 1, 9, 9]]), on, True, 0).mode == NONE
    assert "--split off" in decide("propagate", shape, boxes, on, False, 0).reason
    assert "LITEMEDSAM_SPLIT=off" in decide("propagate", shape, boxes, replace(on, enabled=False), True, 0).reason
    assert "queue busy: 2" in decide("propagate", shape, boxes, on, True, 2).reason
    small = decide("propagate", shape, np.array([[2, 2, 5, 20, 20, 10]]), on, True, 0)
    assert small.mode == NONE and "6 slices to encode" in small.reason
    views = decide("triview", shape, boxes, on, True, 0)
    assert views.mode == VIEWS_MODE and set(views.orders) == set(TRIVIEW_VIEWS)
    assert views.steps >= sum(len(o) for o in views.orders.values())
    # the shipped defaults: 3DBox_CT_tsup (90 needed slices) splits, the demo CT phantom (15) does not
    defaults = SplitSettings()
    assert decide("propagate", (90, 64, 64), np.array([[1, 1, 0, 60, 60, 89]]), defaults, True, 0).split
    assert not decide("propagate", (24, 64, 64), np.array([[1, 1, 5, 60, 60, 19]]), defaults, True, 0).split


def test_part_messages_survive_json_and_refuse_other_versions():
    import json

    part = PartMessage(
        kind=SLICES,
        run="run1",
        index=1,
        parts=3,
        view="axial",
        study={"batch_id": "b"},
        result_key="key",
        coordinator="node",
        coordinator_task="task",
        space="s",
        start=4,
        stop=8,
        slices=[7, 8, 9, 10],
        steps=20,
        enqueued_at=1.5,
    )
    assert PartMessage.from_wire(json.loads(json.dumps(part.to_wire()))) == part
    with pytest.raises(MessageError):
        PartMessage.from_wire({**part.to_wire(), "version": 99})
    with pytest.raises(MessageError):
        PartMessage.from_wire({**part.to_wire(), "kind": "everything"})
    with pytest.raises(MessageError):
        PartMessage.from_wire({**part.to_wire(), "slices": ["seven"]})
    assert "slices 7..10" in part.label()


# ------------------------------------------------------------------------------------------------- codec


def test_exact_arrays_round_trip_bit_for_bit_and_refuse_anything_else():
    embedding = RNG.standard_normal((1, 256, 64, 64)).astype(np.float32)
    embedding.flat[:3] = (np.float32(1e-45), -0.0, np.nan)  # a subnormal, a signed zero, a NaN keep their bits
    blob = pack_exact(embedding)
    back = unpack_exact(blob, np.float32, embedding.shape)
    assert back.tobytes() == embedding.tobytes() and back.flags.writeable
    with pytest.raises(StoreError, match="expected uint16"):
        unpack_exact(blob, np.uint16)
    with pytest.raises(StoreError, match="shape"):
        unpack_exact(blob, np.float32, (1, 256, 64, 63))
    with pytest.raises(StoreError, match="bytes"):
        unpack_exact(blob[:-4], np.float32)
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    with pytest.raises(StoreError, match="digest"):
        unpack_exact(bytes(flipped), np.float32)
    with pytest.raises(StoreError, match="magic"):
        unpack_exact(np.save.__doc__.encode(), np.float32)
    labels = RNG.integers(0, 5, (4, 5, 6)).astype(np.uint16)
    assert np.array_equal(unpack_exact(pack_exact(labels), np.uint16, labels.shape), labels)
    big_endian = labels.astype(">u2")
    assert np.array_equal(unpack_exact(pack_exact(big_endian), np.uint16), labels)


# ------------------------------------------------------------------------------------ claims and the vote


def test_claims_are_leases_only_their_owner_renews_or_releases(slot):
    import redis

    client = redis.Redis.from_url(slot.url)
    claims = Claims(client, ttl=0.5)
    key = f"{slot.namespace}:claim-test"
    assert claims.claim(key, "a") and not claims.claim(key, "b")
    assert claims.holder(key) == "a"
    assert not claims.renew(key, "b") and claims.renew(key, "a")
    claims.release(key, "b")
    assert claims.holder(key) == "a"
    claims.release(key, "a")
    assert claims.holder(key) is None and claims.claim(key, "b")
    time.sleep(0.7)  # b dies holding it: the lease lapses
    assert claims.holder(key) is None and claims.claim(key, "c")


def test_the_vote_triggers_once_when_the_third_view_lands(slot):
    import redis

    board = SplitBoard(redis.Redis.from_url(slot.url), Keys(slot.namespace), "vote-run", 60)
    assert not all_landed(board.land("axial"))
    assert not all_landed(board.land("axial"))  # the same view again (a redelivery) does not count twice
    counts = []
    threads = [threading.Thread(target=lambda v=v: counts.append(board.land(v))) for v in ("coronal", "sagittal")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(counts) == [2, 3] and sum(all_landed(c) for c in counts) == 1
    assert all_landed(board.landed())
    board.unland("coronal")
    assert not all_landed(board.landed())
    assert board.set_view_progress("axial", 5) == 5 and board.set_view_progress("coronal", 2) == 7


def test_the_coordinator_encodes_alone_when_the_store_fails(slot):
    import redis

    from worker.cooperative import CooperativeSource

    class DownStore:  # the store's Redis is gone for longer than its client retries
        def get(self, key):
            raise redis.exceptions.ConnectionError("store down")

        def exists(self, key):
            raise redis.exceptions.ConnectionError("store down")

    client = redis.Redis.from_url(slot.url)
    keys = Keys(slot.namespace)
    source = CooperativeSource(
        EmbeddingBlobs(DownStore(), "space", 60),
        Claims(client, 5),
        keys,
        SplitBoard(client, keys, "down-run", 60),
        {"axial": [3, 4, 5]},
        "c",
        prefetch=2,
        wait_max=1,
    )
    try:
        value = source.embedding("axial", 3, lambda: np.full((1, 2), 7, np.float32))
    finally:
        source.close()
    assert value.tolist() == [[7, 7]] and source.stats.store_errors == 1 and source.stats.encoded == 1


def test_the_coordinator_encodes_ahead_while_a_part_holds_the_slice_it_needs(slot, tmp_path):
    import redis

    from worker.cooperative import CooperativeSource
    from worker.store import FileStore

    client = redis.Redis.from_url(slot.url)
    keys = Keys(slot.namespace + "-ahead")
    blobs = EmbeddingBlobs(FileStore(tmp_path, "t"), "space", 60)
    claims = Claims(client, 30)
    assert claims.claim(keys.slice_claim("space", "axial", 4), "a part")  # a part is encoding slice 4
    encoded_here = []

    def encode_slice(view, z):
        encoded_here.append(z)
        if z == 6:  # the part stores slice 4 while the coordinator encodes ahead
            blobs.put("axial", 4, np.full((1, 2), 4, np.float32))
        return np.full((1, 2), z, np.float32)

    source = CooperativeSource(
        blobs,
        claims,
        keys,
        SplitBoard(client, keys, "ahead-run", 60),
        {"axial": [3, 4, 5, 6, 7]},
        "c",
        prefetch=2,
        wait_max=5,
        encode_slice=encode_slice,
    )
    assert claims.claim(keys.slice_claim("space", "axial", 5), "another part")  # and another one slice 5
    never = lambda: pytest.fail("encoded through the engine although it was available")  # noqa: E731
    try:
        got = [source.embedding("axial", z, never).tolist() for z in (4, 6)]
        last = source.embedding("axial", 7, lambda: np.full((1, 2), 70, np.float32))
    finally:
        source.close()
    assert encoded_here == [6]  # 5 was held by a part: it skipped to the next free slice
    assert got == [[[4, 4]], [[6, 6]]] and last.tolist() == [[70, 70]]
    assert source.stats.encoded == 2 and source.stats.encoded_ahead == 1 and source.stats.fetched == 1
    assert claims.holder(keys.slice_claim("space", "axial", 6)) == "c"  # held until it lapses: parts skip it


# ---------------------------------------------------------------------- the coordinator, in this process


@pytest.fixture()
def split_job(slot, echo_engines):
    """A worker context whose part sender is chosen by the test, and a producer client, on a fresh namespace."""
    echo_engine = echo_engines[0]
    settings = FleetSettings(broker_url=slot.url, namespace=f"{slot.namespace}-{time.monotonic_ns()}")
    client = FleetClient(settings)
    ctx = worker_context(
        client,
        echo_engine,
        "coordinator@test",
        split=SplitSettings(min_slices=8, max_parts=3, part_slices=4, claim_ttl=5, prefetch=2),
    )
    client.directory.publish([settings.default_queue], ctx.identity, ctx.node)
    return client, ctx, echo_engines


def _staged(client: FleetClient, study: Study, split: bool = True):
    message = client.stage("b1", study.study_id, study, SubmitOptions(split=split)).message
    client.upload(message.image_digest, study)
    return message


def _expected(engines, study: Study) -> np.ndarray:
    """The unsplit labels (on a spare engine), with every engine's embedding cache emptied afterwards."""
    labels = engines[2].segment(study).labels
    for engine in engines:
        engine.cache = type(engine.cache)(engine.cache.max_bytes)
    return labels


def _part_ctx(ctx: WorkerContext, engine, node: str = "part@test") -> WorkerContext:
    """Another worker on the same Redis: its own engine (same models), no part sender."""
    return replace(ctx, node=node, send_part=None, engine=engine)


@pytest.mark.parametrize("when", ["before", "beside", "after"])
def test_a_split_3d_study_equals_the_unsplit_run(split_job, when):
    from worker.parts import run_part

    client, ctx, engines = split_job
    study = _volume_study("CT")
    expected = _expected(engines, study)
    sent, waiting = [], queue.Queue()
    helper = _part_ctx(ctx, engines[1])

    def idle_worker():  # one idle worker of concurrency 1 takes the parts from the queue as they come
        for part in iter(waiting.get, None):
            run_part(helper, part, Delivery(f"p{part.index}"))

    def send(part, queue_name):
        sent.append(part)
        if when == "before":  # an idle worker did every part before the coordinator's engine started
            run_part(helper, part, Delivery(f"p{part.index}"))
        elif when == "beside":
            waiting.put(part)

    ctx.send_part = send
    worker = threading.Thread(target=idle_worker)
    worker.start()
    message = _staged(client, study)
    try:
        outcome = run_study(ctx, message, Delivery("coordinator-task"))
    finally:
        waiting.put(None)
        worker.join()
    late = [run_part(helper, part, Delivery(f"late{part.index}")) for part in sent] if when == "after" else []
    assert outcome.ok, outcome.error
    assert np.array_equal(client.fetch(outcome.result_key).labels, expected)
    split = outcome.metrics.extra.split
    assert split["mode"] == "slices" and len(sent) == 3 == len(split["parts"])
    assert [p.index for p in sent] == [0, 1, 2]  # in the order the propagation needs their slices
    needed = split["needed_slices"]
    encoded_by_parts = sum(p.get("encoded", 0) for p in split["parts"])
    coordinator = split["coordinator"]
    assert coordinator["encoded"] == outcome.metrics.counts.slices_encoded
    assert coordinator["encoded"] + coordinator["fetched"] == needed  # every needed slice once, from one place
    if when == "before":
        assert coordinator["encoded"] == 0 and coordinator["fetched"] == needed == encoded_by_parts
        assert all(p["node"] == "part@test" and p["state"] == "done: range finished" for p in split["parts"])
    if when == "after":
        assert coordinator["fetched"] == 0 and coordinator["encoded"] == needed
        assert all(r["state"].startswith("late") for r in late)
    if when == "beside":
        # the coordinator used what the parts stored; on a loaded machine a part's claim can lapse mid-encode, and
        # then the coordinator encodes that slice itself (a part's work wasted, never a slice served twice)
        assert 0 < coordinator["fetched"] <= encoded_by_parts, split
    space = ctx.engine.embedding_space(study)
    assert not any(EmbeddingBlobs(ctx.store, space, 60).exists("axial", z) for z in range(study.image.shape[0]))


def test_embeddings_a_part_stores_are_what_the_coordinator_would_compute(split_job):
    from worker.parts import run_part

    client, ctx, engines = split_job
    study = _volume_study("CT")
    parts = []
    ctx.send_part = lambda part, queue: parts.append(part)
    from worker.coordinator import _decision

    decision = _decision(ctx, _staged(client, study), study)
    space = ctx.engine.embedding_space(study)
    part = PartMessage(
        kind=SLICES,
        run="run-emb",
        index=0,
        parts=1,
        view="axial",
        study=_staged(client, study).to_wire(),
        result_key="k",
        coordinator="c",
        coordinator_task="t",
        space=space,
        start=0,
        stop=len(decision.orders["axial"]),
        slices=decision.orders["axial"],
    )
    report = run_part(_part_ctx(ctx, engines[1]), part, Delivery("p"))
    assert report["encoded"] == len(part.slices)
    blobs, seg = EmbeddingBlobs(ctx.store, space, 60), ctx.engine.slice_encoder(study)
    for z in part.slices:
        assert blobs.get("axial", z).tobytes() == seg.encode(study.image[z]).tobytes()
    again = run_part(_part_ctx(ctx, engines[1]), part.model_copy(update={"run": "run-emb-2"}), Delivery("p2"))
    assert again["encoded"] == 0 and again["skipped"] == len(part.slices)  # stored once, never encoded twice
    blobs.delete("axial", part.slices)


def test_a_part_whose_input_is_unreadable_fails_its_study_with_the_reason(split_job):
    from worker.parts import run_part

    client, ctx, engines = split_job
    study = _volume_study("CT")
    message = _staged(client, study)
    ctx.store.put(Keys.input_blob(message.image_digest), b"PK\x03\x04 not an npz", 60)
    part = PartMessage(
        kind=SLICES,
        run="run-bad",
        index=1,
        parts=2,
        view="axial",
        study=message.to_wire(),
        result_key="k",
        coordinator="c",
        coordinator_task="t",
        space="x",
        start=0,
        stop=4,
        slices=[0, 1, 2, 3],
    )
    report = run_part(_part_ctx(ctx, engines[1]), part, Delivery("p"))
    outcome = client.ledger.outcome(message.batch_id, message.name)
    assert outcome.status == "error" and "part 2 of 2" in outcome.error and "unreadable npz" in outcome.error
    assert report["state"].startswith("failed") and SplitBoard(ctx.ledger.client, ctx.keys, "run-bad", 60).finished()
    # the coordinator, delivered now, finds the outcome and stops: nothing stored, the error stands
    assert run_study(ctx, message, Delivery("late")).error == outcome.error


def test_split_off_and_no_sender_never_split(split_job):
    client, ctx, engines = split_job
    study = _volume_study("CT")
    ctx.send_part = lambda part, queue: pytest.fail("a part was sent")
    outcome = run_study(ctx, _staged(client, study, split=False), Delivery("t"))
    assert outcome.ok and "--split off" in outcome.metrics.extra.split["reason"]
    busy = _staged(client, _volume_study("CT")).model_copy(update={"queue": "busy-unit"})
    client.ledger.client.rpush(ctx.keys.queue("busy-unit"), b"another study")
    outcome = run_study(ctx, busy, Delivery("t2"))
    assert outcome.ok and "queue busy: 1" in outcome.metrics.extra.split["reason"]


@pytest.mark.parametrize("helpers", [0, 2])
def test_a_split_pet_study_equals_the_unsplit_run_with_or_without_helpers(split_job, helpers):
    """helpers=0: the view tasks wait behind the coordinator (one worker of concurrency 1): it runs all three
    views and votes, and the view tasks then end at once. helpers=2: each view task runs on its own worker."""
    from worker.parts import run_part

    client, ctx, engines = split_job
    study = _volume_study("PET", shape=(16, 24, 20), boxes=((3, 4, 2, 12, 14, 9),))
    expected = _expected(engines, study)
    sent, threads = [], []

    def send(part, queue):
        sent.append(part)
        if helpers:
            helper = _part_ctx(ctx, engines[part.index], f"view-{part.view}@test")
            threads.append(threading.Thread(target=run_part, args=(helper, part, Delivery(f"v{part.index}"))))
            threads[-1].start()

    ctx.send_part = send
    message = _staged(client, study)
    outcome = run_study(ctx, message, Delivery("pet-coordinator"))
    for thread in threads:
        thread.join()
    late = [run_part(_part_ctx(ctx, engines[1]), part, Delivery(f"late{part.index}")) for part in sent]
    final = client.ledger.outcome(message.batch_id, message.name)
    assert final.ok and outcome.to_json() == final.to_json()
    assert np.array_equal(client.fetch(final.result_key).labels, expected)
    assert sorted(p.view for p in sent) == ["coronal", "sagittal"]
    split = final.metrics.extra.split
    assert split["mode"] == "views" and sorted(p["view"] for p in split["parts"]) == sorted(TRIVIEW_VIEWS)
    if not helpers:
        assert {p["node"] for p in split["parts"]} == {"coordinator@test"} and split["voted_by"] == "coordinator@test"
        assert all(r["state"].startswith("late") or r.get("by") == "coordinator" for r in late)
    assert final.metrics.counts.slices_encoded == sum(p["encoded"] for p in split["parts"])
    assert client.ledger.runs(message.batch_id) == {message.name: 1}


# ------------------------------------------------------------------------------------------- part reports

SLICE_PART_KEYS = {"part", "kind", "view", "node", "host", "pid", "state", "started_at", "seconds", "delivery"}
SLICE_PART_KEYS |= {"encoded", "skipped", "passed", "encode_seconds"}  # the plain dicts' keys, before the records
VIEW_PART_KEYS = {"part", "kind", "view", "node", "by", "state", "started_at", "seconds", "encoded"}


def _slice_part(index: int = 1) -> PartMessage:
    return PartMessage(
        kind=SLICES,
        run="r",
        index=index,
        parts=3,
        view="axial",
        study={},
        result_key="k",
        coordinator="c",
        coordinator_task="t",
        slices=[4, 5],
    )


def test_part_reports_are_versioned_records_and_one_that_does_not_parse_is_left_out(slot, caplog):
    import json
    import logging

    import redis

    from worker.fanout import part_report

    client = redis.Redis.from_url(slot.url)
    # a namespace of its own: the garbled reports below must not reach the module's fleet, which reads every run's
    # reports in slot.namespace
    keys = Keys(f"{slot.namespace}-reports-{time.monotonic_ns()}")
    board = SplitBoard(client, keys, "report-run", 60)
    running = part_report(_slice_part(), "n1", "running", time.time() - 2, delivery=1, encoded=3, skipped=0)
    board.report_part(running)
    stored = json.loads(client.hget(keys.split_parts("report-run"), "1"))
    assert stored["version"] == 1 and stored["encoded"] == 3 and "by" not in stored and "metrics" not in stored
    assert board.part_reports() == {1: running}
    # a later delivery's report keeps what the earlier one counted, as the dicts merged before
    late = part_report(_slice_part(), "n2", "late: the study was done", time.time(), delivery=2)
    before = {**{k: v for k, v in running.for_metrics().items() if k in ("encoded", "metrics")}, **late.for_metrics()}
    assert late.keeping(running).for_metrics() == before and before["encoded"] == 3
    good = dict(stored)
    bad = {
        "2": {**good, "part": 2, "version": 2},
        "3": {**good, "part": 3, "node": None},
        "4": {**good, "part": 4, "state": "finished happily"},
        "5": {**good, "part": 5, "colour": "blue"},
        "6": {**good, "part": 7},
        "9": {**good, "part": 9, "view": "oblique"},
        "10": {**good, "part": 10, "kind": "view", "metrics": {"counts": {"boxes": "many"}}},
    }
    for index, document in bad.items():
        client.hset(keys.split_parts("report-run"), index, json.dumps(document))
    client.hset(keys.split_parts("report-run"), "8", b"\x80 not json")
    with caplog.at_level(logging.WARNING, logger="worker.fanout"):
        assert board.part_reports() == {1: running}  # the others are missing, not an exception
    said = caplog.text
    assert "version: part report version 2, this worker reads 1" in said
    assert "node: Input should be a valid string" in said and "state: String should match pattern" in said
    assert "colour: Extra inputs are not permitted" in said and "stored as part '6' but names part 7" in said
    assert "view: 'oblique' is not a view" in said and "metrics.counts.boxes: Input should be a valid integer" in said
    assert "part report: Invalid JSON" in said and said.count("a part report refused, treated as missing") == 8
    with pytest.raises(ValueError, match="encoded\n  Input should be greater than or equal to 0"):
        part_report(_slice_part(), "n", "done", time.time(), encoded=-1)
    client.delete(keys.split_parts("report-run"))


def test_the_metrics_of_a_split_study_are_what_the_plain_reports_gave_and_a_bad_report_is_a_missing_part(split_job):
    """The study's metrics' `split.parts` have exactly the keys the plain dicts had (no version), and a report
    that does not parse makes its part "not started when the study ended", never a failed study."""
    import json

    from worker.parts import run_part

    client, ctx, engines = split_job
    study = _volume_study("CT")
    helper = _part_ctx(ctx, engines[1])
    board_key = []

    def send(part, queue_name):  # a part runs at once, and then part 1's report is overwritten by garbage
        run_part(helper, part, Delivery(f"p{part.index}"))
        board_key.append(ctx.keys.split_parts(part.run))
        if part.index == 1:
            client.ledger.client.hset(board_key[-1], "1", json.dumps({"version": 99, "part": 1}))

    ctx.send_part = send
    outcome = run_study(ctx, _staged(client, study), Delivery("coordinator-task"))
    assert outcome.ok, outcome.error
    parts = json.loads(outcome.to_json())["metrics"]["extra"]["split"]["parts"]
    assert [set(p) for p in parts] == [SLICE_PART_KEYS, {"part", "state"}, SLICE_PART_KEYS], parts
    assert parts[1] == {"part": 1, "state": "not started when the study ended"}
    assert all(p["state"] == "done: range finished" and p["kind"] == "slices" for p in (parts[0], parts[2]))
    assert isinstance(parts[0]["pid"], int) and isinstance(parts[0]["seconds"], float)
    assert "version" not in json.dumps(outcome.metrics.extra.split)

    pet = _volume_study("PET", shape=(16, 24, 20), boxes=((3, 4, 2, 12, 14, 9),))
    ctx.send_part = lambda part, queue_name: None  # one worker: the coordinator runs the three views and votes
    message = _staged(client, pet)
    run_study(ctx, message, Delivery("pet-coordinator"))
    final = client.ledger.outcome(message.batch_id, message.name)
    views = json.loads(final.to_json())["metrics"]["extra"]["split"]["parts"]
    assert [set(p) for p in views] == [VIEW_PART_KEYS] * 3 and {p["kind"] for p in views} == {"view"}
    assert final.metrics.counts.slices_encoded == sum(p["encoded"] for p in views)


# ------------------------------------------------------------------------------------------- the fleet

SPLIT_ENV = {
    "LITEMEDSAM_SPLIT_MIN_SLICES": "8",
    "LITEMEDSAM_SPLIT_PART_SLICES": "4",
    "LITEMEDSAM_SPLIT_MAX_PARTS": "3",
    "LITEMEDSAM_SPLIT_CLAIM_TTL": "4",
}
FLEET_TIMEOUT = 300


class SplitFleet:
    def __init__(self, slot, env, workers, settings):
        from worker.app import make_app
        from worker.contract.settings import redis_client
        from worker.ledger import BatchLedger

        self.slot, self.env, self.workers, self.settings = slot, env, workers, settings
        self.a, self.b = workers
        self.app = make_app(settings)
        self.client = FleetClient(settings)
        self.ledger = BatchLedger(redis_client(slot.url), Keys(settings.namespace), settings.batch_ttl)

    @property
    def nodes(self) -> set[str]:
        return {w.node for w in self.workers}

    def logs(self) -> str:
        return "\n".join(f"--- {w.node}\n{w.log_tail()}" for w in self.workers)

    def worker(self, node: str):
        return next(w for w in self.workers if w.node == node)

    def consume(self, queue_name: str, *workers, stop: bool = False) -> None:
        action = self.app.control.cancel_consumer if stop else self.app.control.add_consumer
        replies = action(queue_name, destination=[w.node for w in workers], reply=True, timeout=10)
        assert len(replies) == len(workers), replies

    def part_reports(self) -> dict[str, dict[int, dict]]:
        import json

        found = {}
        for key in self.ledger.client.scan_iter(f"{self.settings.namespace}:split:*:parts"):
            run = key.decode().split(":")[2]
            found[run] = {int(k): json.loads(v) for k, v in self.ledger.client.hgetall(key).items()}
        return found


@pytest.fixture(scope="module")
def fan_cases(tmp_path_factory) -> dict[str, Path]:
    """The demo CT phantom (15 needed slices: 3 parts of 4+), a one-sphere PET from the PET phantom (27 slices in
    three views), and a CT variant whose input the poison test corrupts."""
    from fleet_support import study_folder
    from producer.phantoms import write_phantoms

    root = tmp_path_factory.mktemp("fanout-cases")
    phantoms = {p.stem: p for p in write_phantoms(root / "phantoms", with_gts=False)}
    with np.load(phantoms["3DBox_PET_phantom"], allow_pickle=False) as data:
        np.savez_compressed(root / "pet.npz", imgs=data["imgs"], boxes=data["boxes"][1:], spacing=data["spacing"])
    with np.load(phantoms["3DBox_CT_phantom"], allow_pickle=False) as data:
        for name, voxel in (("poison", 0), ("killed", 1)):  # new content: no worker's embedding cache holds it
            image = data["imgs"].copy()
            image.flat[voxel] ^= 1
            np.savez_compressed(root / f"{name}.npz", imgs=image, boxes=data["boxes"], spacing=data["spacing"])
    return {
        "ct": study_folder(root / "ct", {"3DBox_CT_fan": phantoms["3DBox_CT_phantom"]}),
        "pet": study_folder(root / "pet", {"3DBox_PET_fan": root / "pet.npz"}),
        "poison": study_folder(root / "poison", {"3DBox_CT_poison": root / "poison.npz"}),
        "killed": study_folder(root / "killed", {"3DBox_CT_killed": root / "killed.npz"}),
        "2d": study_folder(root / "2d", {"2DBox_CT_fan": phantoms["2DBox_CT_phantom"]}),
    }


@pytest.fixture(scope="module")
def fan_expected(real_models_dir, fan_cases):
    """The embedded run's masks (1 thread, as the workers), computed beside the workers' start-up."""
    from concurrent.futures import ThreadPoolExecutor

    from producer.discovery import find_studies

    def run():
        from producer.embedded import EmbeddedRunner
        from worker.engine.engine import EngineSettings

        runner = EmbeddedRunner(EngineSettings(models_dir=real_models_dir, threads=1))
        return {s.name: runner.run_one(s).labels for k in ("ct", "pet", "killed") for s in find_studies(fan_cases[k])}

    pool = ThreadPoolExecutor(1)
    future = pool.submit(run)
    yield lambda name: future.result(timeout=FLEET_TIMEOUT)[name]
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def split_fleet(slot, real_models_dir, tmp_path_factory, fan_expected):
    import socket

    from fleet_support import WorkerProcess, fleet_env, wait_for_nodes

    logs = tmp_path_factory.mktemp("fanout-logs")
    env = fleet_env(slot.url, slot.namespace, real_models_dir, **SPLIT_ENV)
    host = socket.gethostname()
    workers = [
        WorkerProcess(f"fan-a-{slot.namespace}@{host}", env, logs / "a.log", "--queues", "litemedsam,solo"),
        WorkerProcess(f"fan-b-{slot.namespace}@{host}", env, logs / "b.log"),
    ]
    settings = FleetSettings(broker_url=slot.url, namespace=slot.namespace)
    try:
        fleet = SplitFleet(slot, env, workers, settings)
        wait_for_nodes(fleet.app, [w.node for w in workers], workers)
        yield fleet
    finally:
        for worker in workers:
            worker.stop()


def _only(batch):
    (outcome,) = batch.outcomes
    return outcome


def _same_mask(out: Path, name: str, expected) -> None:
    from fleet_support import read_segs

    got, want = read_segs(out / f"{name}.npz"), expected(name)
    assert got.dtype == np.uint16 and np.array_equal(got, want), f"{np.count_nonzero(got != want)} voxels differ"


@pytest.mark.fleet
@pytest.mark.model
def test_a_split_3d_study_matches_the_embedded_run_and_names_its_parts_on_both_workers(
    split_fleet, fan_cases, fan_expected, tmp_path
):
    from producer import api

    batch = api.submit(fan_cases["ct"], out_dir=tmp_path, settings=split_fleet.settings, timeout=FLEET_TIMEOUT)
    outcome = _only(batch)
    assert outcome.ok, f"{outcome.error}\n{split_fleet.logs()}"
    _same_mask(tmp_path, outcome.name, fan_expected)
    split = outcome.metrics["extra"]["split"]
    assert split["mode"] == "slices" and len(split["parts"]) == 3, split
    coordinator = split["coordinator"]["node"]
    assert coordinator == outcome.metrics["extra"]["node"] and coordinator in split_fleet.nodes
    helpers = {p["node"] for p in split["parts"] if p.get("encoded", 0) > 0}
    assert helpers == split_fleet.nodes - {coordinator}, split  # the other worker encoded slices for it
    assert split["coordinator"]["fetched"] == sum(p.get("encoded", 0) for p in split["parts"]) > 0
    assert split["coordinator"]["encoded"] + split["coordinator"]["fetched"] == split["needed_slices"]
    assert split_fleet.ledger.runs(batch.batch_id) == {outcome.name: 1}


@pytest.mark.fleet
@pytest.mark.model
def test_a_worker_killed_mid_part_delays_nothing_and_the_study_completes_once(
    split_fleet, fan_cases, fan_expected, tmp_path
):
    import psutil

    from fleet_support import wait_until
    from producer import api

    before = set(split_fleet.part_reports())
    batch = api.submit(fan_cases["killed"], wait=False, settings=split_fleet.settings)

    def a_running_part():
        for run, reports in split_fleet.part_reports().items():
            for index, report in reports.items():
                if run not in before and report["state"] == "running":
                    return run, index, report["node"]
        return None

    run, index, node = wait_until(a_running_part, "a part encoding slices", FLEET_TIMEOUT, split_fleet.logs, 0.02)
    victim = split_fleet.worker(node)
    children = psutil.Process(victim.process.pid).children(recursive=True)
    for child in children:  # the pool process running the part, as the OOM killer would
        child.kill()
    psutil.wait_procs(children, timeout=10)
    done = api.results(batch.batch_id, tmp_path, settings=split_fleet.settings, timeout=FLEET_TIMEOUT)
    outcome = _only(done)
    assert outcome.ok, f"{outcome.error}\n{split_fleet.logs()}"
    _same_mask(tmp_path, outcome.name, fan_expected)
    assert split_fleet.ledger.runs(batch.batch_id) == {outcome.name: 1}  # the study itself ran once
    assert outcome.metrics["extra"]["node"] != node  # the coordinator was the other worker
    # the killed part's message came back (acks late, reject on worker lost) and ran again, on a new child
    wait_until(
        lambda: split_fleet.part_reports()[run][index]["state"] != "running",
        "the part's redelivery",
        FLEET_TIMEOUT,
        split_fleet.logs,
    )
    assert victim.alive() and all(w.alive() for w in split_fleet.workers)


@pytest.mark.fleet
@pytest.mark.model
def test_a_part_that_fails_fails_its_study_with_the_reason(split_fleet, fan_cases, tmp_path):
    from fleet_support import wait_until
    from producer import api

    fleet, queue_name = split_fleet, "fan-late"
    batch = api.submit(fan_cases["poison"], wait=False, queue=queue_name, settings=fleet.settings)
    (name,) = batch.names
    digest = fleet.ledger.studies(batch.batch_id)[name].image_digest
    fleet.consume(queue_name, fleet.a)  # A alone coordinates; its parts wait in the queue
    try:
        wait_until(
            lambda: (
                name in fleet.ledger.progress(batch.batch_id)
                and fleet.ledger.client.llen(fleet.ledger.keys.queue(queue_name)) >= 1
            ),
            "the coordinator running with its parts queued",
            FLEET_TIMEOUT,
            fleet.logs,
        )
        fleet.client.store.put(Keys.input_blob(digest), b"PK\x03\x04 corrupted in the store", 600)
        fleet.consume(queue_name, fleet.b)  # B takes a part and cannot read its input
        outcome = _only(api.results(batch.batch_id, settings=fleet.settings, timeout=FLEET_TIMEOUT))
    finally:
        fleet.consume(queue_name, fleet.a, fleet.b, stop=True)
    assert outcome.status == "error", outcome
    assert "of 3 (slices" in outcome.error and "unreadable npz" in outcome.error and fleet.b.node in outcome.error
    assert fleet.ledger.runs(batch.batch_id) == {name: 1}
    assert all(w.alive() for w in fleet.workers)


@pytest.mark.fleet
@pytest.mark.model
def test_a_split_pet_study_on_one_worker_and_on_two_matches_the_embedded_run(
    split_fleet, fan_cases, fan_expected, tmp_path
):
    from producer import api

    fleet = split_fleet
    alone = _only(
        api.submit(
            fan_cases["pet"], out_dir=tmp_path / "one", queue="solo", settings=fleet.settings, timeout=FLEET_TIMEOUT
        )
    )  # only A consumes `solo`: one worker of concurrency 1
    assert alone.ok, f"{alone.error}\n{fleet.logs()}"
    _same_mask(tmp_path / "one", alone.name, fan_expected)
    split = alone.metrics["extra"]["split"]
    assert split["mode"] == "views" and {p["node"] for p in split["parts"]} == {fleet.a.node}
    assert sorted(p["view"] for p in split["parts"]) == sorted(TRIVIEW_VIEWS)

    both = _only(
        api.submit(
            fan_cases["pet"], out_dir=tmp_path / "two", force=True, settings=fleet.settings, timeout=FLEET_TIMEOUT
        )
    )
    assert both.ok, f"{both.error}\n{fleet.logs()}"
    _same_mask(tmp_path / "two", both.name, fan_expected)
    split = both.metrics["extra"]["split"]
    assert {p["node"] for p in split["parts"]} == fleet.nodes, split  # the views ran on both workers
    assert split["voted_by"] in fleet.nodes


@pytest.mark.fleet
@pytest.mark.model
def test_split_off_and_a_busy_queue_never_split(split_fleet, fan_cases, fan_expected, tmp_path):
    import json
    import subprocess
    import sys

    from fleet_support import REPO
    from producer import api

    fleet = split_fleet
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "producer.cli",
            "submit",
            str(fan_cases["ct"]),
            "--out",
            str(tmp_path / "off"),
            "--force",
            "--split",
            "off",
            "--broker",
            fleet.slot.url,
        ],
        env=fleet.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=FLEET_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:] + fleet.logs()
    (line,) = [json.loads(text) for text in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines()]
    split = line["metrics"]["extra"]["split"]
    assert split["mode"] == "none" and "--split off" in split["reason"]
    _same_mask(tmp_path / "off", line["study"], fan_expected)

    queue_name = "fan-busy"  # two studies wait before anyone consumes: the first starts with one waiting
    first = api.submit(fan_cases["ct"], wait=False, force=True, queue=queue_name, settings=fleet.settings)
    second = api.submit(fan_cases["2d"], wait=False, queue=queue_name, settings=fleet.settings)
    fleet.consume(queue_name, fleet.a)
    try:
        busy = _only(api.results(first.batch_id, tmp_path / "busy", settings=fleet.settings, timeout=FLEET_TIMEOUT))
        assert _only(api.results(second.batch_id, settings=fleet.settings, timeout=FLEET_TIMEOUT)).ok
    finally:
        fleet.consume(queue_name, fleet.a, stop=True)
    assert busy.ok and busy.metrics["extra"]["split"]["mode"] == "none"
    assert "queue busy: 1" in busy.metrics["extra"]["split"]["reason"]
    _same_mask(tmp_path / "busy", busy.name, fan_expected)
