"""Interactive sessions on a fleet (issue 23, item 5): `producer serve --broker` as a process, two real
`worker start` processes (1 OpenVINO thread each) on a private Redis database, the real model, real HTTP.

Every answer is checked against an in-process session (producer.sessions with LocalSessions, the same model and
thread count) given the same interactions: same changed slices, same masks, same label map, bit for bit. The
worker that answers is in each answer (`worker`): consecutive steps stay on one worker; when it is killed
(SIGKILL of its whole process group) the next step is answered by the other one, rebuilt from the label's prompt;
with no worker alive a step is a 503 and the session carries on once a worker is back. A deleted session leaves
the worker that held it (its log says so).
"""

from __future__ import annotations

import io
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from fleet_support import RedisSlot, WorkerProcess, fleet_env, wait_for_nodes, wait_until
from orthanc_support import GatewayProcess
from producer.formats.base import StudySource
from producer.formats.registry import format_of
from producer.sessions import LocalSessions, Session, unrle
from worker.contract.keys import Keys
from worker.contract.settings import FleetSettings, redis_client

pytestmark = [pytest.mark.fleet, pytest.mark.model]
TOKEN = "fleet-session-token-0123456789abcdef"
SHAPE = (12, 96, 96)
TAKEOVER_BOUND = 60.0  # seconds: the other worker re-encodes the box's slices (1 thread) and replays the label


@dataclass
class Fleet:
    slot: RedisSlot
    env: dict[str, str]
    logs: Path
    workers: list[WorkerProcess]
    gateway: GatewayProcess

    def live(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive()]

    def worker(self, node: str) -> WorkerProcess:
        return next(w for w in self.workers if w.node == node)

    def start_worker(self, name: str) -> WorkerProcess:
        worker = WorkerProcess(f"{name}-{self.slot.namespace}@{socket.gethostname()}", self.env, self.logs / name)
        self.workers.append(worker)
        wait_ready(self.slot, [worker])
        return worker

    def describe(self) -> str:
        return (
            "\n".join(f"--- {w.node}\n{w.log_tail()}" for w in self.workers)
            + "\n--- gateway\n"
            + (self.gateway.log_tail())
        )


def wait_ready(slot: RedisSlot, workers: list[WorkerProcess]) -> None:
    from worker.app import make_app

    wait_for_nodes(
        make_app(FleetSettings(broker_url=slot.url, namespace=slot.namespace)), [w.node for w in workers], workers
    )
    client, key = redis_client(slot.url), Keys(slot.namespace).session_nodes()
    for worker in workers:  # its presence stamp is what the gateway picks nodes by
        wait_until(lambda w=worker: client.zscore(key, w.node), f"{worker.node}'s presence", 30)


def kill(worker: WorkerProcess) -> None:
    """SIGKILL the worker and its pool child: no shutdown, no goodbye."""
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait(10)


@pytest.fixture(scope="module")
def fleet(slot, real_models_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("session-fleet-logs")
    env = fleet_env(slot.url, slot.namespace, real_models_dir)
    host = socket.gethostname()
    workers = [WorkerProcess(f"{n}-{slot.namespace}@{host}", env, logs / n) for n in ("sess-a", "sess-b")]
    gateway = GatewayProcess(
        tmp_path_factory.mktemp("session-gateway"),
        TOKEN,
        {},
        "--broker",
        slot.url,
        "--threads",
        "1",
        env={"LITEMEDSAM_NAMESPACE": slot.namespace, "LITEMEDSAM_MODELS_DIR": str(real_models_dir)},
    )
    running = Fleet(slot, env, logs, workers, gateway)
    try:
        gateway.wait_ready()
        wait_ready(slot, workers)
        yield running
    finally:
        gateway.stop()
        for worker in running.workers:
            worker.stop()


@pytest.fixture(scope="module")
def local_sessions(real_models_dir):
    from worker.engine.engine import EngineSettings

    return LocalSessions(EngineSettings(models_dir=real_models_dir, threads=1))


def volume(tmp_path: Path, shift: int) -> Path:
    rng = np.random.default_rng(shift)
    image = rng.integers(0, 40, SHAPE).astype(np.uint8)
    image[3:10, 30 + shift : 70 + shift, 28:66] += 150
    image[5:8, 40 + shift : 52 + shift, 36:46] += 50  # a brighter core inside
    path = tmp_path / f"ct{shift}.npz"
    np.savez_compressed(path, imgs=image, spacing=np.array([1.0, 1.0, 2.5]))
    return path


class Pair:
    """One session through the fleet gateway and its in-process twin, stepped together."""

    def __init__(self, fleet: Fleet, local_sessions: LocalSessions, path: Path):
        self.fleet = fleet
        files = {"files": (path.name, path.read_bytes(), "application/octet-stream")}
        opened = self.call("POST", "/v1/sessions", files=files, data={"modality": "CT"})
        assert opened.status_code == 201, opened.text + fleet.describe()
        self.id = opened.json()["id"]
        source = StudySource(path.stem, path, "npz")
        study, context = format_of(source).load_image(source, "CT")
        self.local = Session(study, context, source, local_sessions, "tester")
        self.masks: dict[str, np.ndarray] = {}

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        url = f"{self.fleet.gateway.url}{path}"
        return requests.request(method, url, headers=self.fleet.gateway.headers, timeout=300, **kwargs)

    def interact(self, label: str, box: list | None = None, point: list | None = None, positive: bool = True) -> dict:
        body: dict = (
            {"label": label, "box": box} if box else {"label": label, "click": {"point": point, "positive": positive}}
        )
        response = self.call("POST", f"/v1/sessions/{self.id}/interactions", json=body)
        assert response.status_code == 200, response.text + self.fleet.describe()
        if box:
            change = self.local.interact(label, box=box)
        else:
            change = self.local.interact(label, point=point, positive=positive)
        return self.check(response.json(), change.changed)

    def undo(self, label: str) -> dict:
        response = self.call("POST", f"/v1/sessions/{self.id}/undo", json={"label": label})
        assert response.status_code == 200, response.text
        return self.check(response.json(), self.local.undo(label).changed)

    def check(self, answer: dict, changed: list[int]) -> dict:
        label = answer["label"]
        mask = self.masks.setdefault(label, np.zeros(SHAPE, bool))
        for z, runs in answer["masks"].items():
            mask[int(z)] = unrle(runs, SHAPE[1:])
        assert answer["changed"] == changed
        np.testing.assert_array_equal(mask, self.local.label(label).mask)
        return answer

    def result(self) -> np.ndarray:
        response = self.call("GET", f"/v1/sessions/{self.id}/result", params={"format": "npz"})
        assert response.status_code == 200, response.text
        with np.load(io.BytesIO(response.content), allow_pickle=False) as data:
            return data["segs"]


def inside(answer: dict, z: int) -> list[int]:
    mask = unrle(answer["masks"][str(z)], SHAPE[1:])
    ys, xs = np.nonzero(mask)
    return [int(xs.mean()), int(ys.mean()), z]


def edge(answer: dict, z: int) -> list[int]:
    mask = unrle(answer["masks"][str(z)], SHAPE[1:])
    ys, xs = np.nonzero(mask)
    return [int(xs.max()), int(ys[np.argmax(xs)]), z]


def test_a_session_stays_on_one_worker_and_equals_the_in_process_session(fleet, local_sessions, tmp_path):
    pair = Pair(fleet, local_sessions, volume(tmp_path, 0))
    box = pair.interact("organ", box=[26, 28, 2, 68, 72, 10])
    node = box["worker"]
    assert node in {w.node for w in fleet.workers} and box["changed"]
    answers = [pair.interact("organ", point=edge(box, 6), positive=False)]

    # the Python API's session on the fleet: the same steps, the same mask
    from producer import api

    settings = FleetSettings(broker_url=fleet.slot.url, namespace=fleet.slot.namespace)
    by_api = api.open_session(pair.local.study, settings=settings)
    by_api.interact("organ", box=[26, 28, 2, 68, 72, 10])
    by_api.interact("organ", point=edge(box, 6), positive=False)
    assert by_api.work.where in {w.node for w in fleet.workers}
    np.testing.assert_array_equal(by_api.label("organ").mask, pair.local.label("organ").mask)

    answers += [
        pair.interact("organ", point=[8, 8, 6]),  # far outside the organ
        pair.interact("core", point=inside(box, 6)),  # a label of clicks alone
    ]
    assert pair.undo("organ")["worker"] == "gateway"
    answers.append(pair.interact("organ", point=edge(box, 5), positive=False))  # the worker's mask is stale now
    assert [a["worker"] for a in answers] == [node] * len(answers)  # affinity: one worker serves the session
    np.testing.assert_array_equal(pair.result(), pair.local.label_map())
    assert "rebuilt from its prompt" in fleet.worker(node).log_path.read_text()  # the step after the undo
    assert pair.call("DELETE", f"/v1/sessions/{pair.id}").status_code == 204
    worker_log = fleet.worker(node).log_path
    dropped = f"session {pair.id[:8]} closed: dropped from this worker (image and masks"
    wait_until(lambda: dropped in worker_log.read_text(), "the worker to drop the deleted session", 10, fleet.describe)


def test_a_session_goes_on_when_its_worker_dies_and_waits_for_a_worker_when_none_lives(fleet, local_sessions, tmp_path):
    pair = Pair(fleet, local_sessions, volume(tmp_path, 6))
    box = pair.interact("organ", box=[30, 28, 2, 74, 72, 10])
    first = pair.interact("organ", point=edge(box, 6), positive=False)
    serving = fleet.worker(first["worker"])
    assert box["worker"] == serving.node
    kill(serving)

    started = time.monotonic()
    after = pair.interact("organ", point=[10, 10, 5])
    took = time.monotonic() - started
    assert after["worker"] != serving.node and fleet.worker(after["worker"]).alive()
    assert took < TAKEOVER_BOUND, took
    assert pair.interact("organ", point=edge(box, 4), positive=False)["worker"] == after["worker"]

    for worker in fleet.live():
        kill(worker)
    started = time.monotonic()
    response = pair.call(
        "POST", f"/v1/sessions/{pair.id}/interactions", json={"label": "organ", "box": [30, 28, 3, 70, 70, 9]}
    )
    assert response.status_code == 503, response.text
    assert "no live fleet worker" in response.json()["detail"] and response.headers.get("retry-after")
    assert time.monotonic() - started < 15
    state = pair.call("GET", f"/v1/sessions/{pair.id}").json()
    assert state["labels"][0]["box"] == [30, 28, 2, 74, 72, 10] and len(state["labels"][0]["clicks"]) == 3

    fleet.start_worker("sess-c")
    back = pair.interact("organ", point=edge(box, 7), positive=False)
    assert back["worker"].startswith("sess-c")
    np.testing.assert_array_equal(pair.result(), pair.local.label_map())
