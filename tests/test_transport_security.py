"""The wire, locked down: a private redis-server speaking only TLS and requiring a password, a real worker
(box-echo model: this is about transport, not accuracy), the producer's API, and a pickled message that must
never be unpickled."""

from __future__ import annotations

import pickle
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from fleet_support import RedisServer, WorkerProcess, fleet_env, wait_for_nodes
from producer import api
from worker.contract.keys import Keys
from worker.contract.settings import FleetSettings
from worker.contract.study import Study

pytestmark = pytest.mark.fleet
TIMEOUT = 120


class TouchOnUnpickle:
    """Unpickling this creates a file: proof that someone deserialized a pickle they were sent."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture(scope="module")
def tls_fleet(echo_models_dir, tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    root = tmp_path_factory.mktemp("tls")
    try:
        server = RedisServer(root / "redis", password="tls-test-password", tls=True)
    except FileNotFoundError:
        pytest.skip("redis-server is not installed")
    server.start()
    env = fleet_env(server.url, "tls", echo_models_dir)
    settings = FleetSettings(broker_url=server.url, namespace="tls")
    worker = WorkerProcess(f"tls@{socket.gethostname()}", env, root / "worker.log")
    try:
        from worker.app import make_app

        wait_for_nodes(make_app(settings), [worker.node], [worker])
        yield server, settings, worker
    finally:
        worker.stop()
        server.kill()


def _study(name: str) -> Study:
    image = np.random.default_rng(3).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    return Study(name, "CT", image, np.array([[10, 12, 40, 50]]))


def test_a_batch_runs_over_tls_with_a_password(tls_fleet):
    server, settings, worker = tls_fleet
    batch = api.submit_studies({"over-tls": _study("over-tls")}, settings=settings, timeout=TIMEOUT)
    (outcome,) = batch.outcomes
    assert outcome.ok, outcome.error
    assert outcome.labels[30, 20] == 1 and outcome.labels[5, 5] == 0  # the echo model returns the box
    plain = redis.Redis(
        host="127.0.0.1", port=server.port, password=server.password, socket_connect_timeout=2, socket_timeout=2
    )
    with pytest.raises(redis.exceptions.ConnectionError):  # no plaintext on the TLS port
        plain.ping()
    anonymous = redis.Redis.from_url(server.url.replace(f":{server.password}@", ""), socket_timeout=2)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    assert worker.alive()


def test_a_pickled_message_is_refused_and_never_unpickled(tls_fleet, tmp_path):
    from kombu import Connection, Exchange, Producer, Queue

    server, settings, worker = tls_fleet
    marker = tmp_path / "unpickled"
    pickle.loads(pickle.dumps(TouchOnUnpickle(tmp_path / "probe")))
    assert (tmp_path / "probe").exists()  # the payload works: whoever unpickles it leaves the marker
    queue = Queue(settings.default_queue, Exchange(settings.default_queue), settings.default_queue)
    prefix = {"global_keyprefix": Keys(settings.namespace).broker_prefix}  # the fleet's queue, as the app has it
    with Connection(server.url, transport_options=prefix) as connection:
        Producer(connection).publish(
            {"args": [TouchOnUnpickle(marker)]},
            serializer="pickle",
            exchange=queue.exchange,
            routing_key=settings.default_queue,
            declare=[queue],
            headers={"task": "litemedsam.segment", "id": "pickled-1", "lang": "py"},
        )
    deadline = time.monotonic() + TIMEOUT
    while "Refusing to deserialize untrusted content of type pickle" not in worker.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.2)
    batch = api.submit_studies({"after-pickle": _study("after-pickle")}, settings=settings, timeout=TIMEOUT)
    assert batch.outcomes[0].ok and worker.alive()  # the worker carried on
    assert not marker.exists()
