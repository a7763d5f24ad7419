"""Two fleets on one Redis database, told apart by LITEMEDSAM_NAMESPACE alone: real redis-server, one real worker
per namespace (the real model), producers in this process, Celery's event stream read by `celery events`.

Both connect as Redis's default user, so nothing but the namespace keeps them apart: their batches, submitted at
once, each run on their own worker only; control commands and events stay within a namespace; every key is under
its namespace. A message that reaches the wrong namespace anyway is handed back to its owner, not run (or kept
aside when it names no owner). (Connecting as ACL users confined to a namespace: tests/test_faults.py.)
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fleet_support import REPO, RedisServer, WorkerProcess, fleet_env, many_boxes, study_folder, wait_for_nodes
from producer import api
from producer.fleet import FleetClient, SubmitOptions
from worker.contract.keys import Keys
from worker.contract.settings import TASK_NAME, FleetSettings, redis_client
from worker.contract.study import Study
from worker.ledger import BatchLedger

pytestmark = [pytest.mark.fleet, pytest.mark.model]
TIMEOUT = 300
NAMESPACES = ("tenantA", "tenantB")


@dataclass
class Tenant:
    namespace: str
    settings: FleetSettings
    env: dict[str, str]
    worker: WorkerProcess
    ledger: BatchLedger

    @property
    def keys(self) -> Keys:
        return self.ledger.keys

    def app(self):
        from worker.app import make_app

        return make_app(self.settings)


@dataclass
class TwoFleets:
    server: RedisServer
    tenants: dict[str, Tenant]
    studies: dict[str, Path]  # challenge npz files, small 2D studies
    logs: Path

    def tails(self) -> str:
        return "\n".join(f"--- {t.worker.node}\n{t.worker.log_tail()}" for t in self.tenants.values())


@pytest.fixture(scope="module")
def fleets(real_models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("namespaces")
    try:
        server = RedisServer(root / "redis")
    except FileNotFoundError:
        pytest.skip("redis-server is not installed")
    server.start()
    from producer.phantoms import write_phantoms

    phantom = {p.stem: p for p in write_phantoms(root / "phantoms", with_gts=False)}["2DBox_CT_phantom"]
    studies = {f"2DBox_CT_ns{i}": many_boxes(phantom, root / f"ns{i}.npz", copies=2, shift=7 * i) for i in range(4)}
    tenants = {}
    try:
        for namespace in NAMESPACES:
            env = fleet_env(server.url, namespace, real_models_dir)
            worker = WorkerProcess(f"{namespace}-worker@{socket.gethostname()}", env, root / f"{namespace}.log")
            settings = FleetSettings(broker_url=server.url, namespace=namespace)
            tenants[namespace] = Tenant(
                namespace,
                settings,
                env,
                worker,
                BatchLedger(redis_client(server.url), Keys(namespace), settings.batch_ttl),
            )
        for tenant in tenants.values():
            wait_for_nodes(tenant.app(), [tenant.worker.node], [tenant.worker])
        yield TwoFleets(server, tenants, studies, root)
    finally:
        for tenant in tenants.values():
            tenant.worker.stop()
        server.kill()


def _study(path: Path) -> Study:
    with np.load(path, allow_pickle=False) as data:
        return Study(path.stem, "CT", data["imgs"], data["boxes"])


class EventDump:
    """`celery events --dump` of one namespace, as Flower would see its event stream."""

    def __init__(self, tenant: Tenant, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "events", "--dump"],
            env=tenant.env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60  # listening once it has seen its worker's heartbeat
        while tenant.worker.node not in self.text():
            assert time.monotonic() < deadline and self.process.poll() is None, self.text()[-2000:]
            time.sleep(0.2)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> str:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._log.close()
        return self.text()


def test_two_namespaces_on_one_database_run_their_own_batches_only(fleets, tmp_path):
    a, b = fleets.tenants["tenantA"], fleets.tenants["tenantB"]
    names = sorted(fleets.studies)
    batches = {  # one study in both (same content: each namespace computes its own), the others apart
        "tenantA": study_folder(tmp_path / "a", {n: fleets.studies[n] for n in names[:3]}),
        "tenantB": study_folder(tmp_path / "b", {n: fleets.studies[n] for n in names[2:]}),
    }
    events = EventDump(a, tmp_path / "events-a.txt")
    try:
        with ThreadPoolExecutor(2) as pool:  # both batches at once
            futures = {
                ns: pool.submit(api.submit, folder, settings=fleets.tenants[ns].settings, timeout=TIMEOUT)
                for ns, folder in batches.items()
            }
            done = {ns: future.result() for ns, future in futures.items()}
        time.sleep(2)  # the last task events reach the dump
    finally:
        seen_by_a = events.stop()
    for ns, batch in done.items():
        tenant = fleets.tenants[ns]
        assert sorted(o.name for o in batch.outcomes) == sorted(p.stem for p in batches[ns].glob("*.npz"))
        for outcome in batch.outcomes:
            assert outcome.ok, (ns, outcome.error, fleets.tails())
            assert outcome.metrics["extra"]["node"] == tenant.worker.node  # run by its own namespace's worker
            assert not outcome.metrics["extra"]["cached"]  # the shared study was not served across namespaces
        assert tenant.ledger.executions() == {tenant.worker.node: len(batch.outcomes)}, fleets.tails()
        assert tenant.ledger.runs(batch.batch_id) == {o.name: 1 for o in batch.outcomes}
    assert a.ledger.meta(done["tenantB"].batch_id) is None and b.ledger.meta(done["tenantA"].batch_id) is None
    # control commands reach their own namespace's workers only
    assert [list(reply) for reply in a.app().control.ping(timeout=1.0)] == [[a.worker.node]]
    assert [list(reply) for reply in b.app().control.ping(timeout=1.0)] == [[b.worker.node]]
    # the event stream (what Flower shows) of tenantA: its own tasks, nothing of tenantB's
    task_ids = {
        ns: {e.task_id for e in fleets.tenants[ns].ledger.studies(batch.batch_id).values()}
        for ns, batch in done.items()
    }
    assert all(task_id in seen_by_a for task_id in task_ids["tenantA"]), seen_by_a[-3000:]
    assert not any(task_id in seen_by_a for task_id in task_ids["tenantB"])
    assert b.worker.node not in seen_by_a and done["tenantB"].batch_id not in seen_by_a
    # every key is under one namespace; Celery's under <ns>:celery:
    keys = sorted(key.decode() for key in a.ledger.client.scan_iter("*"))
    assert all(key.startswith(("tenantA:", "tenantB:")) for key in keys), keys
    for tenant in (a, b):
        assert f"{tenant.keys.broker_prefix}_kombu.binding.{tenant.settings.default_queue}" in keys, keys
    assert a.worker.alive() and b.worker.alive()


def test_a_message_of_another_namespace_is_handed_back_to_its_owner_not_run(fleets):
    """tenantB's producer, misconfigured to publish into tenantA's queue: tenantA's worker does not run it, and
    it completes on tenantB's worker, for tenantB's waiting producer."""
    a, b = fleets.tenants["tenantA"], fleets.tenants["tenantB"]
    before_a, before_b = a.ledger.executions(), b.ledger.executions()
    client = FleetClient(b.settings)
    misdirected = client.app  # the producer's light client, publishing under tenantA's key prefix
    misdirected.conf.broker_transport_options = {
        **misdirected.conf.broker_transport_options,
        "global_keyprefix": a.keys.broker_prefix,
    }
    name = "2DBox_CT_misdirected"
    study = _study(many_boxes(fleets.studies["2DBox_CT_ns0"], fleets.logs / f"{name}.npz", copies=2, shift=91))
    enqueued = client.submit_studies({name: study}, SubmitOptions())
    assert enqueued.queued == 1
    (outcome,) = api.results(enqueued.batch_id, settings=b.settings, timeout=TIMEOUT).outcomes
    assert outcome.ok, (outcome.error, fleets.tails())
    assert outcome.metrics["extra"]["node"] == b.worker.node
    assert b.ledger.runs(enqueued.batch_id) == {name: 1}  # the refused delivery was not counted as a run
    assert a.ledger.executions() == before_a, fleets.tails()  # tenantA's worker never segmented it
    assert b.ledger.executions() == {**before_b, b.worker.node: before_b.get(b.worker.node, 0) + 1}
    assert a.ledger.meta(enqueued.batch_id) is None and not a.ledger.outcomes(enqueued.batch_id)
    task_id = b.ledger.studies(enqueued.batch_id)[name].task_id
    log_a = a.worker.log_path.read_text(errors="replace")
    assert f"task {task_id} of namespace 'tenantB' reached namespace 'tenantA': handed back" in log_a
    assert name not in log_a  # the other namespace's study name is not logged where it does not belong
    assert a.worker.alive() and b.worker.alive()


def test_a_message_naming_no_namespace_is_kept_aside_not_run_nor_lost(fleets):
    a = fleets.tenants["tenantA"]
    before = a.ledger.executions()
    client = FleetClient(a.settings)
    name = "2DBox_CT_unlabelled"
    study = _study(many_boxes(fleets.studies["2DBox_CT_ns1"], fleets.logs / f"{name}.npz", copies=2, shift=93))
    staged = client.stage("unlabelled-batch", name, study, SubmitOptions())
    message, (soft, hard) = staged.message, staged.limits
    client.upload(message.image_digest, study)
    task_id = str(uuid.uuid4())
    client.app.send_task(
        TASK_NAME, args=[message.to_wire()], queue=message.queue, task_id=task_id, soft_time_limit=soft, time_limit=hard
    )  # no namespace header: a hand-made message

    deadline = time.monotonic() + TIMEOUT
    while not a.ledger.client.llen(a.keys.misrouted()):
        assert time.monotonic() < deadline and a.worker.alive(), fleets.tails()
        time.sleep(0.2)
    import json

    (entry,) = [json.loads(raw) for raw in a.ledger.client.lrange(a.keys.misrouted(), 0, -1)]
    assert entry["task_id"] == task_id and entry["namespace"] is None and entry["queue"] == message.queue
    assert entry["payload"] == json.loads(json.dumps(message.to_wire()))  # kept whole, to be re-sent
    assert entry["timelimit"] == [hard, soft]
    assert a.ledger.executions() == before and not a.ledger.outcomes("unlabelled-batch")
    assert a.ledger.client.llen(a.keys.queue(message.queue)) == 0  # acknowledged, not looping in the queue
    assert a.worker.alive()
