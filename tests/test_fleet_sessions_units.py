"""A session's step on a worker (worker.sessions) without a fleet: the box-echo model, a file store, the contract's
message and reply. A step from the mask the worker holds and a step rebuilt from the label's prompt (a worker new
to the session) give the same mask; the reply carries only changed slices in the first case, every slice in the
second."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

from worker.contract.arrays import StoreError, pack_arrays
from worker.contract.identity import image_digest
from worker.contract.keys import Keys
from worker.contract.messages import MessageError, WireClick, pack_image
from worker.contract.prompts import Box, Click, LabelPrompt
from worker.contract.sessions import SessionReply, SessionStep
from worker.contract.settings import SessionSettings
from worker.engine.engine import Engine, EngineSettings
from worker.sessions import Held, SessionCache, run_step
from worker.store import FileStore

SESSION = "ab" * 16


def test_a_reply_round_trips_exactly_and_a_foreign_blob_is_refused():
    rng = np.random.default_rng(1)
    slices = {z: rng.random((5, 7)) > 0.5 for z in (0, 3)}
    reply = SessionReply("w1@host", "00ff" * 4, slices, full=False, replayed=True, seconds=0.5, overlap="smaller")
    back = SessionReply.from_bytes(reply.to_bytes())
    assert sorted(back.slices) == [0, 3] and (back.node, back.version, back.replayed) == ("w1@host", "00ff" * 4, True)
    for z in (0, 3):
        np.testing.assert_array_equal(back.slices[z], slices[z])
    error = SessionReply.from_bytes(SessionReply("n", "0a" * 8, error="bad box", invalid=True).to_bytes())
    assert error.error == "bad box" and error.invalid and error.slices == {}
    with pytest.raises(StoreError):
        SessionReply.from_bytes(pack_arrays(imgs=np.zeros(3, np.uint8)))
    with pytest.raises(StoreError):
        SessionReply.from_bytes(b"not an npz")


def _step(image: np.ndarray, **fields) -> SessionStep:
    base = {
        "session_id": SESSION,
        "request_id": "cd" * 16,
        "study_id": "s",
        "modality": "CT",
        "image_digest": image_digest(image),
        "image_shape": tuple(image.shape),
        "spacing": (1.0, 1.0, 2.0),
        "dims": 3,
        "label": 1,
        "prompt": SessionStep.wire_prompt(LabelPrompt()),
        "step": "box",
        "box": [20, 22, 2, 60, 58, 6],
        "version": "01" * 8,
    }
    return SessionStep(**{**base, **fields})


def test_a_step_message_is_one_box_or_one_click_of_its_version():
    image = np.zeros((4, 8, 8), np.uint8)
    wire = _step(image).to_wire()
    assert SessionStep.from_wire(wire) == _step(image)
    with pytest.raises(MessageError, match="version"):
        SessionStep.from_wire({**wire, "message_version": 99})
    with pytest.raises(MessageError, match="box step"):
        SessionStep.from_wire({**wire, "box": None})
    with pytest.raises(MessageError, match="click step"):
        SessionStep.from_wire({**wire, "step": "click", "click": {"point": [1, 2, 3]}})
    with pytest.raises(MessageError):
        SessionStep.from_wire({**wire, "session_id": "../../etc"})


@pytest.fixture(scope="module")
def echo_engine(echo_models_dir):
    return Engine(EngineSettings(models_dir=echo_models_dir, threads=1))


def test_a_worker_steps_from_its_mask_or_rebuilds_it_to_the_same_bits(echo_engine, tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 30, (8, 80, 80)).astype(np.uint8)
    image[2:7, 25:55, 25:55] += 180
    store = FileStore(tmp_path, "ns")
    store.put(Keys.input_blob(image_digest(image)), pack_image(image), 600)
    held_here = SessionCache.of(SessionSettings())

    box = run_step(echo_engine, store, held_here, _step(image), "w1")
    assert box.full and not box.error and sorted(box.slices) == list(range(8))
    mask = np.stack([box.slices[z] for z in range(8)])
    assert mask[4, 40, 40] and not mask[0].any()

    prompt = LabelPrompt(Box((20, 22, 2, 60, 58, 6)))
    click = Click((40.0, 40.0, 4.0), False)
    wire_click = WireClick(point=list(click.point), foreground=False)
    step = _step(
        image,
        step="click",
        box=None,
        click=wire_click,
        prompt=SessionStep.wire_prompt(prompt),
        base="01" * 8,
        version="02" * 8,
    )
    from_held = run_step(echo_engine, store, held_here, step, "w1")
    assert not from_held.full and not from_held.replayed and from_held.slices  # the changed slices only
    stepped = mask.copy()
    for z, plane in from_held.slices.items():
        stepped[z] = plane
    assert not stepped[4, 40, 40]  # the background click holds

    elsewhere = run_step(echo_engine, store, SessionCache.of(SessionSettings()), step, "w2")  # new to the session
    assert elsewhere.full and elsewhere.replayed
    np.testing.assert_array_equal(np.stack([elsewhere.slices[z] for z in range(8)]), stepped)

    unknown_base = step.model_copy(update={"base": "0f" * 8, "version": "03" * 8})  # e.g. after an undo
    again = run_step(echo_engine, store, held_here, unknown_base, "w1")
    assert again.full and again.replayed
    np.testing.assert_array_equal(np.stack([again.slices[z] for z in range(8)]), stepped)

    store.delete(Keys.input_blob(image_digest(image)))
    gone = run_step(echo_engine, store, SessionCache.of(SessionSettings()), step, "w3")
    assert gone.error and not gone.invalid and "store" in gone.error


def test_the_session_cache_drops_the_least_recently_used(echo_engine):
    cache = SessionCache(max_sessions=2, max_bytes=10_000)
    held = [Held(_study(n), None) for n in range(3)]  # type: ignore[arg-type]
    cache.put("a", held[0])
    cache.put("b", held[1])
    assert cache.get("a") is held[0]  # a is now the most recent
    cache.put("c", held[2])
    assert cache.get("b") is None and cache.get("a") is held[0] and len(cache) == 2
    big = Held(_study(0, size=200), None)  # type: ignore[arg-type]
    cache.put("big", big)  # over the byte bound: only the newest stays
    assert len(cache) == 1 and cache.get("big") is big


def _study(n: int, size: int = 10):
    from worker.contract.prompts import Prompts
    from worker.contract.study import Study

    return Study(f"s{n}", "CT", np.full((size, size, size), n, np.uint8), Prompts((), 3), None)


def test_the_gateway_resends_a_step_that_a_node_leaves_waiting_or_drops_and_keeps_the_session_on_failure(slot):
    """producer.fleet_sessions against a real Redis, with the sending faked: one node never picks the step up (busy
    with a study), one starts it and dies (its busy mark lapses), one answers; the next step goes straight to the
    node that answered; with no node alive the step is SessionUnavailable and the session is unchanged."""
    import time

    from producer.fleet_sessions import FleetSessions, FleetTimings
    from producer.formats.output_context import OutputContext
    from producer.sessions import Session, SessionUnavailable
    from worker.contract.prompts import Prompts
    from worker.contract.settings import FleetSettings, redis_client
    from worker.contract.study import Study

    settings = FleetSettings(broker_url=slot.url, namespace=slot.namespace)
    fleet = FleetSessions(slot.url, FleetTimings(dead_after=5.0, pickup=0.6, step=30.0, poll=0.05), settings)
    client, keys = redis_client(slot.url), Keys(slot.namespace)
    plane = np.zeros((20, 30), bool)
    plane[4:9, 5:12] = True
    sent: list[str] = []

    def send(step: SessionStep, node: str) -> None:
        sent.append(node)
        if node.startswith("b-dying"):  # it starts the step and dies: its busy mark lapses
            client.set(keys.session_busy(step.request_id), b"1", px=300)
        elif node.startswith("c-good"):
            reply = SessionReply(node, step.version, {0: plane}, full=True, overlap="smaller")
            client.rpush(keys.session_reply(step.request_id), reply.to_bytes())

    fleet.send = send  # type: ignore[method-assign]
    client.zadd(keys.session_nodes(), {n: time.time() for n in ("a-idle", "b-dying", "c-good")})
    image = np.full((20, 30, 3), 7, np.uint8)
    session = Session(Study("s", "CT", image, Prompts((), 2), None), OutputContext("npz"), None, fleet)
    change = session.interact("lesion", box=[5, 4, 11, 8])
    assert sent == ["a-idle", "b-dying", "c-good"] and change.worker == "c-good"
    np.testing.assert_array_equal(session.label("lesion").mask[0], plane)
    assert session.interact("lesion", point=[6, 6]).worker == "c-good" and sent[3:] == ["c-good"]

    client.delete(keys.session_nodes())  # every worker gone
    before = session.label("lesion")
    prompt, version = before.prompt, before.version
    with pytest.raises(SessionUnavailable, match="no live fleet worker"):
        session.interact("lesion", point=[20, 15], positive=False)
    with pytest.raises(SessionUnavailable):
        session.interact("other", box=[1, 1, 4, 4])
    assert session.label("lesion").prompt == prompt and session.label("lesion").version == version
    assert [label.name for label in session.labels] == ["lesion"]  # a label whose first step failed is not kept


def test_the_failover_timings_and_the_cache_bounds_are_settings_checked_for_range(monkeypatch, slot):
    """LITEMEDSAM_SESSION_*: the gateway's FleetSessions and a worker process's cache are built from them; a value
    out of its range stops the start with the variable's name."""
    import worker.sessions as worker_sessions
    from producer.fleet_sessions import FleetSessions, FleetTimings
    from worker.contract.settings import FleetSettings, redis_client

    defaults = FleetTimings.of(SessionSettings())
    assert (defaults.dead_after, defaults.pickup, defaults.step) == (3.0, 10.0, 900.0)
    assert (SessionSettings().cache_sessions, SessionSettings().cache_bytes) == (8, 1 << 30)

    for name, value in {"DEAD_AFTER": "4.5", "PICKUP": "2", "STEP_LIMIT": "60", "CACHE_SESSIONS": "3"}.items():
        monkeypatch.setenv(f"LITEMEDSAM_SESSION_{name}", value)
    monkeypatch.setenv("LITEMEDSAM_SESSION_CACHE_MB", "64")
    monkeypatch.setenv("LITEMEDSAM_NAMESPACE", slot.namespace)
    fleet = FleetSessions(slot.url)
    assert (fleet.timings.dead_after, fleet.timings.pickup, fleet.timings.step) == (4.5, 2.0, 60.0)
    monkeypatch.setattr(worker_sessions, "_cache", None)
    monkeypatch.setattr(worker_sessions, "_watcher", None)
    ctx = SimpleNamespace(ledger=SimpleNamespace(client=redis_client(slot.url)), keys=Keys(slot.namespace), engine=None)
    cache = worker_sessions.process_cache(ctx)
    assert (cache.max_sessions, cache.max_bytes) == (3, 64 << 20)
    watcher = worker_sessions.close_watcher()
    assert watcher is not None and watcher.cache is cache
    watcher.stop()

    for name, value in (
        ("DEAD_AFTER", "1"),  # under the presence stamp's period: every worker would flap dead
        ("PICKUP", "0"),
        ("STEP_LIMIT", "-5"),
        ("CACHE_SESSIONS", "0"),
        ("CACHE_MB", "8"),
        ("CACHE_MB", "lots"),
    ):
        monkeypatch.setenv(f"LITEMEDSAM_SESSION_{name}", value)
        with pytest.raises(ValueError, match=f"LITEMEDSAM_SESSION_{name}"):
            FleetSettings.from_env()
        monkeypatch.delenv(f"LITEMEDSAM_SESSION_{name}")
    monkeypatch.setattr(worker_sessions, "_cache", None)
    monkeypatch.setattr(worker_sessions, "_watcher", None)


def test_a_closed_session_leaves_the_workers_that_held_it(echo_engine, slot, tmp_path):
    """DELETE (SessionStore.close) and the idle timeout announce the session's id on a real Redis; a worker
    process's CloseWatcher drops that session's image, masks and slice embeddings within about a second, and
    keeps the other sessions it holds."""
    import time

    from fleet_support import wait_until
    from producer.fleet_sessions import FleetSessions
    from producer.formats.output_context import OutputContext
    from producer.sessions import Session, SessionLimits, SessionStore
    from worker.contract.prompts import Prompts
    from worker.contract.settings import FleetSettings, redis_client
    from worker.contract.study import Study
    from worker.engine.engine import study_key
    from worker.sessions import CloseWatcher

    settings = FleetSettings(broker_url=slot.url, namespace=slot.namespace)
    client, keys = redis_client(slot.url), Keys(slot.namespace)
    store = FileStore(tmp_path, "ns")
    fleet = FleetSessions(slot.url, settings=settings)
    gateway = SessionStore(SessionLimits(idle_seconds=1e9))
    held = SessionCache.of(SessionSettings())
    watcher = CloseWatcher(held, client, keys, echo_engine.cache).start()
    studies = {}
    try:
        for n, session_id in enumerate(("a1" * 16, "b2" * 16, "c3" * 16)):
            rng = np.random.default_rng(n)
            image = rng.integers(0, 30, (6, 64, 64)).astype(np.uint8)
            image[1:5, 20:44, 20:44] += 150 + n
            store.put(Keys.input_blob(image_digest(image)), pack_image(image), 600)
            reply = run_step(echo_engine, store, held, _step(image, session_id=session_id), "w1")
            assert not reply.error and held.get(session_id) is not None
            study = Study(f"s{n}", "CT", image, Prompts((), 3), (1.0, 1.0, 2.0))
            studies[session_id] = study
            gateway.add(Session(study, OutputContext("npz"), None, fleet, session_id=session_id))

        deleted, idle, kept = studies
        started = time.monotonic()
        assert gateway.close(deleted)  # DELETE /v1/sessions/{id}
        wait_until(lambda: held.get(deleted) is None, "the deleted session to leave the worker's cache", 5)
        took = time.monotonic() - started
        assert took < 3.0, took
        assert echo_engine.cache.forget(study_key(studies[deleted])) == 0  # its embeddings went with it
        assert held.get(idle) is not None and held.get(kept) is not None

        gateway.get(kept).last_used = gateway.get(idle).last_used = time.time()
        gateway.get(idle).last_used -= 60
        gateway.limits = SessionLimits(idle_seconds=30)  # the next look at the store closes the idle one
        assert [s.id for s in gateway.owned_by(None)] == [kept]
        wait_until(lambda: held.get(idle) is None, "the idle session to leave the worker's cache", 5)
        assert held.get(kept) is not None and echo_engine.cache.forget(study_key(studies[kept])) > 0
        assert client.zscore(keys.session_closed(), kept) is None
    finally:
        watcher.stop()


def test_only_a_single_process_worker_serves_sessions_and_says_so(slot, caplog):
    """A session's cache is per pool process while affinity is per node: a worker with --concurrency > 1 neither
    stamps its presence (the gateway picks stamped nodes only) nor consumes its direct queue, and its start says
    why; a single-process worker stamps and keeps its direct queue."""
    from worker.contract.keys import NAMESPACE_CONF
    from worker.contract.settings import redis_client
    from worker.presence import SessionPresence, serves_sessions, sessions_note

    assert serves_sessions(1) and not serves_sessions(2) and not serves_sessions(8)
    assert "served" in sessions_note(1) and "not served (--concurrency 4" in sessions_note(4)
    client, key = redis_client(slot.url), Keys(slot.namespace).session_nodes()

    class Conf(dict):  # Celery's conf: items and attributes
        __getattr__ = dict.__getitem__

    class Consumer:
        def __init__(self, node: str, concurrency: int):
            self.app = SimpleNamespace(conf=Conf({NAMESPACE_CONF: slot.namespace, "broker_url": slot.url}))
            self.hostname, self.controller = node, SimpleNamespace(concurrency=concurrency)
            self.timer = SimpleNamespace(call_repeatedly=lambda *args, **kwargs: SimpleNamespace(cancel=lambda: None))
            self.cancelled: list[str] = []

        def cancel_task_queue(self, queue: str) -> None:
            self.cancelled.append(queue)

    many = Consumer("many@host", 4)
    step = SessionPresence(many)
    with caplog.at_level("WARNING", logger="worker.presence"):
        step.start(many)
    assert many.cancelled == ["many@host.dq2"] and client.zscore(key, "many@host") is None
    assert "not served (--concurrency 4" in caplog.text
    step.stop(many)

    one = Consumer("one@host", 1)
    step = SessionPresence(one)
    step.start(one)
    assert one.cancelled == [] and client.zscore(key, "one@host") is not None
    step.stop(one)
    assert client.zscore(key, "one@host") is None


def test_closing_an_in_process_session_drops_its_embeddings_from_the_gateways_engine(echo_models_dir):
    """Without a broker the gateway's own engine encoded the session's slices: closing the session drops them."""
    from producer.formats.output_context import OutputContext
    from producer.sessions import LocalSessions, Session, SessionStore
    from worker.contract.prompts import Prompts
    from worker.contract.study import Study
    from worker.engine.engine import EngineSettings, study_key

    local = LocalSessions(EngineSettings(models_dir=echo_models_dir, threads=1))
    image = np.random.default_rng(3).integers(0, 30, (6, 64, 64)).astype(np.uint8)
    image[1:5, 20:44, 20:44] += 160
    other_image = image[::-1].copy()
    store = SessionStore()
    sessions = [
        store.add(Session(Study(f"s{n}", "CT", im, Prompts((), 3), None), OutputContext("npz"), None, local))
        for n, im in enumerate((image, other_image))
    ]
    for session in sessions:
        session.interact("organ", box=[20, 20, 1, 43, 43, 4])
    cache = local._engine.cache
    assert store.close(sessions[0].id)
    assert cache.forget(study_key(sessions[0].study)) == 0  # gone with the session
    assert cache.forget(study_key(sessions[1].study)) > 0  # the open session's were kept


def test_a_session_closed_while_its_step_runs_leaves_nothing_behind(echo_engine, slot, tmp_path):
    """The close watcher's timer can drop a session while one of its steps runs; the step then goes on encoding
    slices and holding the session. `serve_step` settles after the step: nothing of the closed session stays, neither
    its image and masks nor the slice embeddings the step made after the drop."""
    from types import SimpleNamespace

    from worker.contract.prompts import Prompts
    from worker.contract.settings import redis_client
    from worker.contract.study import Study
    from worker.engine.engine import study_key
    from worker.sessions import CloseWatcher, serve_step

    client, keys = redis_client(slot.url), Keys(slot.namespace)
    store = FileStore(tmp_path, "ns")
    image = np.random.default_rng(7).integers(0, 30, (6, 64, 64)).astype(np.uint8)
    image[1:5, 20:44, 20:44] += 150
    store.put(Keys.input_blob(image_digest(image)), pack_image(image), 600)
    session_id = "d4" * 16
    ctx = SimpleNamespace(ledger=SimpleNamespace(client=client), keys=keys, engine=echo_engine, store=store, node="w1")
    put_slice = echo_engine.cache._put

    def run(settles: bool) -> tuple[bool, int]:
        held = SessionCache.of(SessionSettings())
        watcher = CloseWatcher(held, client, keys, echo_engine.cache)  # its timer is not started: swept by hand
        client.delete(keys.session_closed())
        puts = []

        def put_then_close(key, value):  # the gateway closes the session after the step's first slice is encoded
            puts.append(key)
            if len(puts) == 2:
                client.zadd(keys.session_closed(), {session_id: time.time()})
                assert watcher.sweep() == [session_id]  # the timer's sweep, mid-step
            put_slice(key, value)

        echo_engine.cache._put = put_then_close
        try:
            reply = serve_step(ctx, held, _step(image, session_id=session_id), watcher if settles else None)
        finally:
            echo_engine.cache._put = put_slice
        assert not reply.error and len(puts) > 2
        key = study_key(Study("s", "CT", image, Prompts((), 3), (1.0, 1.0, 2.0)))
        return held.get(session_id) is not None, echo_engine.cache.forget(key)

    assert run(settles=False)[0]  # without settling, the closed session is held again after its step ...
    assert run(settles=True) == (False, 0)  # ... settled: neither it nor an embedding of its image stays
