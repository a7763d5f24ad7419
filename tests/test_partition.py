"""A fleet across hosts, and a network partition: Redis and two worker "hosts" in network namespaces of their own,
joined by a switch (tests/netns_support.py), the real model, real `worker start` processes, and the producer
in the test's own namespace. Nothing but the private /24 the test makes is contacted.

The scenario: one worker host's cable is pulled while it runs a 3D study. Its lease is no longer renewed, so
after the visibility timeout the study goes back to the queue and runs on the other host, which stores the
result and the outcome. The cable goes back in while the cut worker still holds its own run of the study: that
run resumes, finds the outcome recorded at its next progress report and stops there (worker.job.Superseded),
instead of spending the rest of the study on work that is done; it stores nothing (the stored bytes and the
outcome do not change) and its task ends with the recorded outcome. Then the cut worker takes new work again.
"""

from __future__ import annotations

import ast
import ipaddress
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import SHARED_CASES
from fleet_support import RedisServer, WorkerProcess, fleet_env, many_boxes, wait_for_nodes, wait_until
from netns_support import PrivateNetwork
from producer import api
from worker.contract.keys import Keys
from worker.contract.settings import FleetSettings, redis_client
from worker.ledger import BatchLedger
from worker.store import open_store

pytestmark = pytest.mark.timeout(600, method="signal")  # signal: the fixtures' clean-up still runs
VISIBILITY = 5  # seconds: a cut worker's study is back in the queue within this plus the ~1 s restore sweep
NAMESPACE = "partition"
REDIS_PORT = 6379
PATIENCE = 300  # the most any one step may take on a loaded 2-core machine


class Fleet:
    def __init__(self, net: PrivateNetwork, server: RedisServer, env: dict[str, str], logs: Path):
        self.net, self.server, self.env, self.logs = net, server, env, logs
        self.settings = FleetSettings(broker_url=server.url, namespace=NAMESPACE, visibility_timeout=VISIBILITY)
        client = redis_client(server.url)
        self.ledger = BatchLedger(client, Keys(NAMESPACE), self.settings.batch_ttl)
        self.store = open_store(server.url, NAMESPACE, client)
        self.workers: dict[str, WorkerProcess] = {}  # host -> its worker

    def start_worker(self, host: str) -> None:
        """A worker on `host`, with a core of its own as on a machine of its own (OpenVINO pins its threads
        within the process's CPU affinity; unconfined, both 1-thread workers would share core 0)."""
        node = f"part-{host}@{socket.gethostname()}"
        core = sorted(os.sched_getaffinity(0))[self.net.hosts.index(host) % len(os.sched_getaffinity(0))]
        prefix = (*self.net.prefix(host), "taskset", "-c", str(core))
        self.workers[host] = WorkerProcess(node, self.env, self.logs / f"{host}.log", prefix=prefix)

    def host_of(self, node: str) -> str:
        return next(host for host, worker in self.workers.items() if worker.node == node)

    def tails(self) -> str:
        return "\n".join(f"--- {w.node}\n{w.log_tail(60)}" for w in self.workers.values())

    def wait_for(self, condition, what: str, timeout: float = PATIENCE):
        return wait_until(condition, what, timeout, self.tails, interval=0.1)


@pytest.fixture
def fleet(real_models_dir, tmp_path):
    reason = PrivateNetwork.unavailable()
    if reason:
        pytest.skip(f"no network namespaces for the partition test: {reason}")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    net = PrivateNetwork(["a", "b"])
    server, state = None, None
    try:
        net.create()
        server = RedisServer(
            tmp_path / "redis",
            password="partition-test-password",
            host=net.address("hub"),
            port=REDIS_PORT,
            prefix=net.prefix("hub"),
        )
        server.start()
        env = fleet_env(
            server.url,
            NAMESPACE,
            real_models_dir,
            LITEMEDSAM_VISIBILITY_TIMEOUT=str(VISIBILITY),
            LITEMEDSAM_LEASE_RENEW="1",
        )
        state = Fleet(net, server, env, tmp_path)
        for host in net.hosts:
            state.start_worker(host)
        from worker.app import make_app

        workers = list(state.workers.values())
        wait_for_nodes(make_app(state.settings), [w.node for w in workers], workers)
        yield state
    finally:  # processes first (a namespace lives on while a process is inside), then the network
        if state is not None:
            for worker in state.workers.values():
                worker.stop(grace=10)
        if server is not None:
            server.kill()
        net.close()


def _study_source(tmp_path: Path) -> Path:
    """The 3D study: real CT when the dev cases are here (3DBox_CT_tssm's centre 15 slices, cropped in-plane:
    producer.derived), else the 3D CT phantom (24 slices, 15 of them boxed). Long enough to cut a host mid-way,
    short enough to run twice (once per host) in a bounded test on a loaded 2-core machine."""
    if (SHARED_CASES / "gts" / "3DBox_CT_tssm.npz").is_file():
        from producer.derived import derive_cases, write_cases

        (crop,) = [c for c in derive_cases(SHARED_CASES, ["3DBox_CT_tssm"]) if c.name == "3DBox_CT_tssm-crop"]
        return write_cases([crop], tmp_path / "derived") / "imgs" / f"{crop.name}.npz"
    from producer.phantoms import write_phantoms

    return next(p for p in write_phantoms(tmp_path / "phantoms", with_gts=False) if p.stem == "3DBox_CT_phantom")


def _task_result(log: str, task_id: str) -> dict | None:
    """What a worker's log says the task returned ("Task litemedsam.segment[ID] succeeded in ...s: {...}")."""
    match = re.search(rf"\[{re.escape(task_id)}\] succeeded in [0-9.]+s: (\{{.*\}})", log)
    return ast.literal_eval(match.group(1)) if match else None


def test_the_private_network_cuts_and_restores_one_host_and_leaves_nothing_behind():
    reason = PrivateNetwork.unavailable()
    if reason:
        pytest.skip(f"no network namespaces: {reason}")
    net = PrivateNetwork(["a", "b"])
    try:
        net.create()
        assert net.subnet.subnet_of(ipaddress.ip_network("10.231.0.0/16"))
        with socket.create_server((net.address("root"), 0)) as listener:  # the test's own namespace, on the /24
            port = listener.getsockname()[1]
            assert net.reachable("a", net.address("root"), port) and net.reachable("b", net.address("root"), port)
            net.cut("a")
            assert not net.reachable("a", net.address("root"), port, timeout=2)
            assert net.reachable("b", net.address("root"), port)
            net.restore("a")
            assert net.reachable("a", net.address("root"), port)
    finally:
        net.close()
    leftovers = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert net.tag not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert (
        net.tag not in leftovers
        and str(net.subnet.network_address)
        not in subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    )


@pytest.mark.fleet
@pytest.mark.model
def test_a_partitioned_host_loses_its_study_to_the_other_and_comes_back(fleet, tmp_path):
    hub = fleet.net.address("hub")
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(_study_source(tmp_path), folder / "3DBox_CT_partition.npz")
    batch = api.submit(folder, wait=False, settings=fleet.settings)
    (name,) = batch.names

    def under_way():
        progress = fleet.ledger.progress(batch.batch_id).get(name)
        return progress if progress is not None and progress.done >= 2 else None

    cut = fleet.host_of(fleet.wait_for(under_way, "the 3D study to be under way").node)
    other = next(host for host in fleet.workers if host != cut)
    cut_worker, other_worker = fleet.workers[cut], fleet.workers[other]
    executions_before = fleet.ledger.executions()

    # --- pull the cut host's cable while it runs the study
    fleet.net.cut(cut)
    assert not fleet.net.reachable(cut, hub, REDIS_PORT, timeout=2), "the cut host still reaches Redis"
    assert fleet.net.reachable(other, hub, REDIS_PORT), "the other host lost Redis too"

    outcome = fleet.wait_for(lambda: fleet.ledger.outcome(batch.batch_id, name), "the study's outcome")
    extra = outcome.metrics.extra
    assert outcome.ok, outcome.error
    assert extra.node == other_worker.node and extra.delivery == 2, extra
    assert fleet.ledger.runs(batch.batch_id) == {name: 2}
    assert cut_worker.alive() and other_worker.alive(), fleet.tails()
    # the study completed while the host was still cut off
    assert not fleet.net.reachable(cut, hub, REDIS_PORT, timeout=2)
    stored = fleet.store.get(Keys.result_blob(outcome.result_key))
    assert stored is not None

    # --- plug it back in: the cut worker's own run resumes, finds the outcome recorded, and stops there
    fleet.net.restore(cut)
    assert fleet.net.reachable(cut, hub, REDIS_PORT)
    task_id = extra.task_id  # a redelivery keeps its task id: the cut worker held the same task
    returned = fleet.wait_for(
        lambda: _task_result(cut_worker.log_path.read_text(errors="replace"), task_id),
        "the cut worker to end its own run of the study",
    )
    assert returned["status"] == "ok" and returned["result_key"] == outcome.result_key, returned
    stopped = re.search(
        rf"outcome of {re.escape(batch.batch_id)}/{re.escape(name)}; this run stopped after "
        r"(\d+) of (\d+) slice steps",
        cut_worker.log_path.read_text(errors="replace"),
    )
    assert stopped and int(stopped[1]) < int(stopped[2]), fleet.tails()  # stopped part-way, not run to the end
    assert fleet.store.get(Keys.result_blob(outcome.result_key)) == stored  # written once: not replaced
    after = fleet.ledger.outcome(batch.batch_id, name)
    assert after.to_json() == outcome.to_json()  # the outcome is the other host's, unchanged
    assert fleet.ledger.runs(batch.batch_id) == {name: 2}
    executions = fleet.ledger.executions()
    # each host ran the engine on the study once: the cut one before the cut (counted then), the other after it
    assert executions.get(cut_worker.node, 0) == executions_before.get(cut_worker.node, 0)
    assert executions.get(other_worker.node, 0) == executions_before.get(other_worker.node, 0) + 1
    assert executions_before.get(cut_worker.node, 0) == 1

    # --- the cut worker takes work again: four studies of several seconds each, while the other is busy too
    from producer.phantoms import write_phantoms

    source = next(p for p in write_phantoms(tmp_path / "phantoms2d", with_gts=False) if p.stem == "2DBox_CT_phantom")
    again = tmp_path / "again"
    again.mkdir()
    for i in range(4):
        many_boxes(source, again / f"2DBox_CT_after{i}.npz", copies=8, shift=i + 1)
    done = api.submit(again, settings=fleet.settings, timeout=PATIENCE)
    assert all(o.ok for o in done.outcomes), [(o.name, o.error) for o in done.outcomes]
    nodes = [o.metrics["extra"]["node"] for o in done.outcomes]
    assert cut_worker.node in nodes, (nodes, fleet.tails())
    assert fleet.ledger.runs(done.batch_id) == {o.name: 1 for o in done.outcomes}
    assert cut_worker.alive() and other_worker.alive(), fleet.tails()
