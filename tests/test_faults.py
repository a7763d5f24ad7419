"""Faults, with real parts: a private redis-server (append-only file, password) that the tests kill and restart,
two real `worker start` processes running the real model, and the producer's CLI in its own processes.

The workers run with a 5 s visibility timeout and renew their leases every second, so a dead worker's study
comes back within seconds, while a live worker keeps a study far longer than the timeout (the 3D study below).

Everything runs in the non-default namespace `faults`, and the workers and producers connect as a Redis ACL
user confined to it (Keys.acl_rules): any key or channel that Celery, kombu (restores of unacknowledged
messages, their mutex, bindings), the leases or the fleet touched outside `faults:*` would be refused by Redis
and fail these tests. Only the tests' own observer connects as the default user.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fleet_support import (
    REPO,
    RedisServer,
    WorkerProcess,
    fleet_env,
    many_boxes,
    read_segs,
    study_folder,
    thicker_copy,
    wait_for_nodes,
    wait_until,
)
from producer import api
from worker.contract.keys import Keys
from worker.contract.settings import FleetSettings, redis_client
from worker.ledger import BatchLedger

pytestmark = [pytest.mark.fleet, pytest.mark.model]
VISIBILITY = 5
TIMEOUT = 300
NAMESPACE = "faults"


@dataclass
class Faults:
    server: RedisServer
    broker: str  # the namespace's ACL user
    settings: FleetSettings
    env: dict[str, str]
    logs: Path
    phantoms: dict[str, Path]
    ledger: BatchLedger
    workers: list[WorkerProcess] = field(default_factory=list)
    started: int = 0

    def start_worker(self) -> WorkerProcess:
        self.started += 1
        node = f"faults-{self.started}@{socket.gethostname()}"
        worker = WorkerProcess(node, self.env, self.logs / f"{self.started}.log")
        self.workers.append(worker)
        return worker

    def wait_ready(self) -> None:
        from worker.app import make_app

        live = [w for w in self.workers if w.alive()]
        wait_for_nodes(make_app(self.settings), [w.node for w in live], live)

    def worker(self, node: str) -> WorkerProcess:
        return next(w for w in self.workers if w.node == node)

    def live(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive()]

    def tails(self) -> str:
        return "\n".join(f"--- {w.node}\n{w.log_tail()}" for w in self.workers)

    def producer(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "producer.cli", *args, "--broker", self.broker],
            env=self.env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_as_from_a_terminal,
        )


def _as_from_a_terminal() -> None:
    """The producer gets Ctrl-C as from a user's shell: SIGINT at its default and not blocked. A child inherits
    an ignored disposition and the signal mask of the thread that starts it; in the whole suite (never in this
    module alone) a producer started here ran to the end through SIGINT, as if one of them had been changed in
    the pytest process by an earlier test's library."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.fixture(scope="module")
def faults(real_models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    try:
        server = RedisServer(root / "redis", users={NAMESPACE: ("faults-user-password", Keys(NAMESPACE).acl_rules())})
    except FileNotFoundError:
        pytest.skip("redis-server is not installed")
    server.start()
    from producer.phantoms import write_phantoms

    phantoms = {p.stem: p for p in write_phantoms(root / "phantoms", with_gts=False)}
    broker = server.user_url(NAMESPACE)
    env = fleet_env(
        broker,
        NAMESPACE,
        real_models_dir,
        LITEMEDSAM_VISIBILITY_TIMEOUT=str(VISIBILITY),
        LITEMEDSAM_LEASE_RENEW="1",
        COLUMNS="200",
    )
    settings = FleetSettings(broker_url=broker, namespace=NAMESPACE, visibility_timeout=VISIBILITY)
    state = Faults(
        server,
        broker,
        settings,
        env,
        root,
        phantoms,
        BatchLedger(redis_client(server.url), Keys(NAMESPACE), settings.batch_ttl),
    )
    try:
        state.start_worker(), state.start_worker()
        state.wait_ready()
        yield state
    finally:
        for worker in state.workers:
            worker.stop()
        server.kill()


def _wait_for(condition, what: str, faults: Faults, timeout: float = TIMEOUT):
    return wait_until(condition, what, timeout, faults.tails)


def _batch_id(stderr: str) -> str:
    match = re.search(r"batch (\d{8}-\d{6}-[0-9a-f]{8})", stderr)
    assert match, stderr
    return match.group(1)


def _sealed_batch_of(faults: Faults, names: set[str]) -> str | None:
    """The id of the enqueued (sealed) batch holding these study names, if there is one yet."""
    for key in faults.ledger.client.scan_iter(f"{NAMESPACE}:batch:*:meta"):
        batch_id = key.decode().split(":")[2]
        meta = faults.ledger.meta(batch_id)
        if meta is not None and meta.sealed and names <= set(faults.ledger.studies(batch_id)):
            return batch_id
    return None


def _watch_queue_until_done(faults: Faults, batch_id: str, name: str) -> int:
    """The most messages seen waiting in the queue while the study's second delivery ran."""
    most, deadline = 0, time.monotonic() + TIMEOUT
    while faults.ledger.outcome(batch_id, name) is None:
        assert time.monotonic() < deadline, faults.tails()
        if faults.ledger.runs(batch_id).get(name, 0) >= 2:
            most = max(most, faults.ledger.client.llen(faults.ledger.keys.queue(faults.settings.default_queue)))
        time.sleep(0.2)
    return most


def test_a_worker_killed_with_its_host_hands_its_3d_study_to_the_other(faults, tmp_path):
    # slices doubled (48): the survivor's run must outlast twice the visibility timeout even on a fast CPU (the
    # 24-slice phantom took 8.9 s at 1 thread on a quiet Zen 5, under the 10 s this test needs to mean something)
    long_study = thicker_copy(faults.phantoms["3DBox_CT_phantom"], tmp_path / "3DBox_CT_thick.npz")
    folder = study_folder(tmp_path / "in", {"3DBox_CT_killed": long_study})
    before = sum(faults.ledger.executions().values())
    batch = api.submit(folder, wait=False, settings=faults.settings)
    (name,) = batch.names

    def running():
        progress = faults.ledger.progress(batch.batch_id).get(name)
        return progress if progress is not None and progress.done >= 2 else None

    victim = faults.worker(_wait_for(running, "the 3D study to be half-way", faults).node)
    os.killpg(victim.process.pid, signal.SIGKILL)  # the worker and its pool child, as if its host died
    victim.stop()
    requeued_while_held = _watch_queue_until_done(faults, batch.batch_id, name)
    done = api.results(batch.batch_id, tmp_path / "out", settings=faults.settings, timeout=TIMEOUT)
    (outcome,) = done.outcomes
    assert outcome.ok, outcome.error
    extra = outcome.metrics["extra"]
    assert extra["node"] != victim.node and extra["delivery"] == 2
    # the survivor held the study far longer than the visibility timeout, and its lease kept the message from
    # going back to the queue meanwhile (without it: back after 5 s, and run again when a worker is free)
    assert outcome.metrics["times"]["total"] > 2 * VISIBILITY
    assert requeued_while_held == 0
    assert faults.ledger.runs(batch.batch_id) == {name: 2}
    assert sum(faults.ledger.executions().values()) == before + 2
    assert read_segs(tmp_path / "out" / f"{name}.npz").shape == (48, 160, 160)
    faults.start_worker()
    faults.wait_ready()


def test_queued_studies_survive_a_redis_restart(faults, tmp_path):
    source = faults.phantoms["2DBox_CT_phantom"]
    studies = {
        f"2DBox_CT_restart{i}": many_boxes(source, tmp_path / f"r{i}.npz", copies=8, shift=i + 1) for i in range(6)
    }
    folder = study_folder(tmp_path / "in", studies)
    producer = faults.producer("submit", str(folder), "--out", str(tmp_path / "out"))
    queue_key = faults.ledger.keys.queue(faults.settings.default_queue)

    def first_outcome_with_studies_queued():
        batch_id = _sealed_batch_of(faults, set(studies))
        return batch_id and faults.ledger.count_outcomes(batch_id) >= 1 and faults.ledger.client.llen(queue_key) >= 2

    _wait_for(first_outcome_with_studies_queued, "an outcome while studies are still queued", faults)
    faults.server.kill()
    time.sleep(3)
    faults.server.start()
    stdout, stderr = producer.communicate(timeout=TIMEOUT)
    assert producer.returncode == 0, stderr[-3000:] + faults.tails()
    batch_id = _batch_id(stderr)
    outcomes = faults.ledger.outcomes(batch_id)
    assert sorted(outcomes) == sorted(studies) and all(o.ok for o in outcomes.values()), outcomes
    for name in studies:
        assert read_segs(tmp_path / "out" / f"{name}.npz").max() > 0
    assert len(faults.live()) == 2, faults.tails()


def test_a_study_that_keeps_killing_its_worker_ends_failed_after_three_deliveries(faults, tmp_path):
    import psutil

    source = faults.phantoms["2DBox_CT_phantom"]
    folder = study_folder(tmp_path / "in", {"2DBox_CT_poison": many_boxes(source, tmp_path / "p.npz", 30, shift=40)})
    batch = api.submit(folder, wait=False, settings=faults.settings)
    (name,) = batch.names
    killed_at = 0.0
    for delivery in (1, 2, 3):  # the "OOM killer" takes the process running it, each time
        # this delivery's own progress (the previous one's entry lingers until overwritten)
        def running(killed_at=killed_at, delivery=delivery):
            progress = faults.ledger.progress(batch.batch_id).get(name)
            fresh = progress is not None and progress.updated_at > killed_at
            return progress if fresh and faults.ledger.runs(batch.batch_id).get(name) == delivery else None

        worker = faults.worker(_wait_for(running, f"delivery {delivery}", faults).node)
        children = psutil.Process(worker.process.pid).children(recursive=True)
        for child in children:
            child.kill()
        psutil.wait_procs(children, timeout=10)
        killed_at = time.time()  # after the deaths: nothing the killed process wrote can look newer
    done = api.results(batch.batch_id, settings=faults.settings, timeout=TIMEOUT)
    (outcome,) = done.outcomes
    assert outcome.status == "error" and "abandoned" in outcome.error and "delivered 4 times" in outcome.error
    assert faults.ledger.runs(batch.batch_id) == {name: 4}
    assert len(faults.live()) == 2, faults.tails()


def test_an_interrupted_producer_recovers_everything_with_results(faults, tmp_path):
    source = faults.phantoms["2DBox_CT_phantom"]
    studies = {
        f"2DBox_CT_interrupted{i}": many_boxes(source, tmp_path / f"i{i}.npz", copies=8, shift=60 + i) for i in range(3)
    }
    folder = study_folder(tmp_path / "in", studies)
    producer = faults.producer("submit", str(folder), "--out", str(tmp_path / "first"))
    _wait_for(lambda: _sealed_batch_of(faults, set(studies)), "the producer to enqueue its batch", faults)
    producer.send_signal(signal.SIGINT)
    _, stderr = producer.communicate(timeout=60)
    here = (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, set()))
    assert producer.returncode == 130, f"pytest's SIGINT handler and blocked signals: {here}\n{stderr}"
    batch_id = _batch_id(stderr)
    assert f"producer results {batch_id}" in " ".join(stderr.split())
    collected = subprocess.run(
        [
            sys.executable,
            "-m",
            "producer.cli",
            "results",
            batch_id,
            "--out",
            str(tmp_path / "later"),
            "--broker",
            faults.broker,
        ],
        env=faults.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert collected.returncode == 0, collected.stderr[-3000:]
    for name in studies:
        assert read_segs(tmp_path / "later" / f"{name}.npz").max() > 0
    assert {o.name for o in faults.ledger.outcomes(batch_id).values() if o.ok} == set(studies)


def test_the_bad_input_corpus_through_the_fleet(faults, tmp_path, monkeypatch):
    from bad_inputs import HUGE_LIMIT, write_corpus

    expected = write_corpus(tmp_path / "in")
    monkeypatch.setenv("LITEMEDSAM_MAX_VOXELS", str(HUGE_LIMIT))
    batch = api.submit(tmp_path / "in", out_dir=tmp_path / "out", settings=faults.settings, timeout=TIMEOUT)
    outcomes = {o.name: o for o in batch.outcomes}
    assert set(outcomes) == set(expected)
    for name, fragment in expected.items():
        if fragment is None:
            assert outcomes[name].ok, outcomes[name].error
        else:
            assert outcomes[name].status == "error" and fragment in outcomes[name].error, (name, outcomes[name])
    assert len(faults.live()) == 2, faults.tails()


def test_bad_studies_sent_straight_to_the_workers_are_judged_there(faults):
    from bad_inputs import bad_studies_in_memory

    cases = bad_studies_in_memory()
    batch = api.submit_studies(
        {name: study for name, (study, _) in cases.items()}, settings=faults.settings, timeout=TIMEOUT
    )
    outcomes = {o.name: o for o in batch.outcomes}
    assert set(outcomes) == set(cases)
    assert faults.ledger.runs(batch.batch_id) == {name: 1 for name in cases}  # each reached a worker, once
    for name, (_, fragment) in cases.items():
        if fragment is None:
            assert outcomes[name].ok and outcomes[name].labels.max() == 1, outcomes[name].error
        else:
            assert outcomes[name].status == "error" and fragment in outcomes[name].error, (name, outcomes[name])
    assert len(faults.live()) == 2, faults.tails()


def test_nothing_of_the_fleet_left_its_namespace(faults):
    """Run last: through every fault above, Redis refused no access of the namespace's user (its ACL log is
    empty) and every key on the server is under `faults:` (Celery's under `faults:celery:`)."""
    admin = faults.ledger.client
    denied = [(e.get("reason"), e.get("object"), e.get("username")) for e in admin.acl_log(count=128)]
    assert denied == [], denied
    keys = sorted(key.decode() for key in admin.scan_iter("*"))
    assert keys and all(key.startswith(f"{NAMESPACE}:") for key in keys), keys
    assert any(key.startswith(f"{NAMESPACE}:celery:_kombu.binding.") for key in keys), keys
