"""The gateway's fleet segmenter follows its batch by the batch's events, not by polling its status.

A private Redis database and namespace; the worker is this test: a thread that runs worker.job.run_study (the
box-echo engine) on the message the producer sends, reporting progress on the way, as a worker process would.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fleet_support import worker_context
from producer import api, fleet
from producer.gateway.segmenters import FleetSegmenter
from producer.sender import TaskSender
from worker.contract.messages import Progress
from worker.contract.settings import FleetSettings, variable
from worker.contract.study import Study, StudyError
from worker.job import run_study
from worker.job_context import Delivery
from worker.ledger import BatchLedger


@pytest.fixture(scope="module")
def echo_engine(echo_models_dir):
    from worker.engine.engine import Engine, EngineSettings

    return Engine(EngineSettings(models_dir=echo_models_dir, threads=1))


@pytest.fixture()
def fleet_of_one(slot, echo_engine, monkeypatch):
    """A namespace of its own with one published engine identity; sent tasks go to a list, and `serve()` makes a
    thread that runs each one (progress first) the way a worker process would."""
    namespace = f"{slot.namespace}-{time.monotonic_ns()}"
    monkeypatch.setenv(variable("namespace"), namespace)
    client = fleet.FleetClient(FleetSettings(broker_url=slot.url, namespace=namespace))
    ctx = worker_context(client, echo_engine, "unit@test")
    client.directory.publish([client.settings.default_queue], ctx.identity, ctx.node)
    sent: list = []
    workers: list[threading.Thread] = []

    def work(message, task_id) -> None:
        time.sleep(0.3)
        progress = Progress(done=1, total=2, node=ctx.node, updated_at=time.time())
        ctx.ledger.set_progress(message.batch_id, message.name, progress)
        time.sleep(0.3)
        run_study(ctx, message, Delivery(task_id))

    def send(self, message, task_id, limits):
        sent.append(message)
        if serving.is_set():
            workers.append(threading.Thread(target=work, args=(message, task_id), daemon=True))
            workers[-1].start()

    serving = threading.Event()
    monkeypatch.setattr(TaskSender, "send", send)
    statuses: list[str] = []
    real_status = api.status
    monkeypatch.setattr(
        api, "status", lambda batch_id, *a, **k: statuses.append(batch_id) or real_status(batch_id, *a, **k)
    )
    yield slot.url, serving, sent, statuses
    for thread in workers:
        thread.join(10)


def _study() -> Study:
    image = np.random.default_rng(3).integers(0, 255, (80, 100, 3), dtype=np.uint8)
    return Study("2DBox_US_gw", "US", image, np.array([[10, 10, 60, 50]]))


def test_the_fleet_segmenter_answers_from_events_without_polling_status(fleet_of_one):
    broker, serving, sent, statuses = fleet_of_one
    serving.set()
    reported: list[tuple[int, int]] = []
    started = time.monotonic()
    outcome = FleetSegmenter(broker, timeout=30).segment(
        "scan", _study(), lambda done, total: reported.append((done, total))
    )
    assert outcome.ok, outcome.error
    assert outcome.labels is not None and outcome.labels.max() == 1
    assert outcome.metrics["extra"]["batch_id"] == sent[0].batch_id
    assert statuses == []  # not one status poll
    assert (1, 2) in reported  # the worker's progress, as it reported it
    assert time.monotonic() - started < fleet.RESYNC_SECONDS  # woken by the event, not by the periodic re-read


def test_a_missed_event_costs_a_re_read_not_a_hang(fleet_of_one, monkeypatch):
    broker, serving, _, statuses = fleet_of_one
    monkeypatch.setattr(BatchLedger, "announce", lambda self, batch_id, kind, name: None)  # every event is lost
    monkeypatch.setattr(fleet, "RESYNC_SECONDS", 0.5)
    serving.set()
    outcome = FleetSegmenter(broker, timeout=30).segment("scan", _study(), lambda done, total: None)
    assert outcome.ok and outcome.labels is not None and statuses == []


def test_no_worker_is_a_clear_error_within_the_timeout(fleet_of_one):
    broker, _, sent, statuses = fleet_of_one  # tasks are sent, nobody runs them
    started = time.monotonic()
    with pytest.raises(StudyError, match=r"did not finish the study within 1 s \(batch .*is a worker serving"):
        FleetSegmenter(broker, timeout=1).segment("scan", _study(), lambda done, total: None)
    assert 1 <= time.monotonic() - started < 5 and len(sent) == 1 and statuses == []
