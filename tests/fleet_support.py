"""Helpers for the fleet tests: a private Redis database, worker processes we start and stop, study variants."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
CLAIM_KEY = "litemedsam-test-claim"
REPO = Path(__file__).resolve().parents[1]


@dataclass
class RedisSlot:
    """An empty Redis database claimed for one test session, and a namespace unique to it."""

    url: str
    client: object
    namespace: str

    def release(self) -> None:
        self.client.flushdb()
        self.client.close()


def claim_redis() -> RedisSlot | None:
    import redis

    try:
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError:
        return None
    for db in range(15, 0, -1):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        if client.dbsize() == 0 and client.set(CLAIM_KEY, os.getpid(), nx=True, ex=6 * 3600):
            return RedisSlot(f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}", client, f"t{uuid.uuid4().hex[:8]}")
        client.close()
    return None


def fleet_env(broker_url: str, namespace: str, models_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "LITEMEDSAM_BROKER": broker_url,
        "LITEMEDSAM_NAMESPACE": namespace,
        "LITEMEDSAM_MODELS_DIR": str(models_dir),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("LITEMEDSAM_STORE", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


class WorkerProcess:
    """`worker start` in its own session (so it and its pool children can be stopped together). `prefix` runs it
    through a wrapper that execs it (e.g. `ip netns exec NS`: the same process, in another network namespace)."""

    def __init__(self, node: str, env: dict[str, str], log_path: Path, *args: str, prefix: tuple[str, ...] = ()):
        self.node = node
        self.log_path = log_path
        self._log = open(log_path, "wb")
        command = [
            *prefix,
            sys.executable,
            "-m",
            "worker.cli",
            "start",
            "--concurrency",
            "1",
            "--threads",
            "1",
            "--hostname",
            node,
            "--loglevel",
            "INFO",
            *args,
        ]
        self.process = subprocess.Popen(
            command, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 20.0) -> None:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)  # warm shutdown of this worker and its children
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever of this session is left
        except ProcessLookupError:
            pass
        self.process.wait(5)
        self._log.close()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def wait_for_nodes(app, nodes: list[str], workers: list[WorkerProcess], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            if not worker.alive():
                raise RuntimeError(f"worker {worker.node} exited:\n{worker.log_tail()}")
        replies = app.control.ping(timeout=1.0)
        answered = {node for reply in replies for node in reply}
        if set(nodes) <= answered and all("ready." in w.log_path.read_text(errors="replace") for w in workers):
            return
        time.sleep(0.5)
    raise TimeoutError("workers did not come up:\n" + "\n".join(w.log_tail() for w in workers))


def study_folder(root: Path, studies: dict[str, Path]) -> Path:
    """A folder holding each source npz under its study name (`<name>.npz`)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, source in studies.items():
        (root / f"{name}.npz").write_bytes(source.read_bytes())
    return root


def wait_until(condition, what: str, timeout: float, describe=lambda: "", interval: float = 0.05):
    """Poll condition() until it returns something true (returned) or timeout seconds pass (AssertionError naming
    `what`, followed by describe(), e.g. the workers' log tails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{describe()}")


def mirrored_copy(source: Path, target: Path, axis: str = "x") -> Path:
    """A 2D challenge npz mirrored left-right (axis x) or top-bottom (axis y), boxes mirrored with it."""
    with np.load(source, allow_pickle=False) as data:
        image, boxes = data["imgs"], data["boxes"].copy()
    height, width = image.shape[:2]
    if axis == "x":
        image = image[:, ::-1]
        boxes[:, [0, 2]] = (width - 1) - boxes[:, [2, 0]]
    else:
        image = image[::-1]
        boxes[:, [1, 3]] = (height - 1) - boxes[:, [3, 1]]
    np.savez_compressed(target, imgs=np.ascontiguousarray(image), boxes=boxes)
    return target


def many_boxes(source: Path, target: Path, copies: int = 60, shift: int = 0) -> Path:
    """A 2D study whose boxes repeat `copies` times (hundreds of decoder calls: seconds of work), its image
    rolled by `shift` columns so that each shift is new content (a new result key)."""
    with np.load(source, allow_pickle=False) as data:
        image = np.roll(data["imgs"][::-1], shift, axis=1)
        np.savez_compressed(target, imgs=np.ascontiguousarray(image), boxes=np.tile(data["boxes"], (copies, 1)))
    return target


def thicker_copy(source: Path, target: Path, factor: int = 2) -> Path:
    """A 3D challenge npz with every slice repeated `factor` times and its boxes' z range stretched with it (other
    arrays, e.g. spacing, as they were): `factor` times the encoder work, for a study that must run long enough even
    on a fast CPU."""
    with np.load(source, allow_pickle=False) as data:
        image, boxes = np.repeat(data["imgs"], factor, axis=0), data["boxes"].copy()
        extra = {key: data[key] for key in data.files if key not in ("imgs", "boxes")}
    boxes[:, 2] = boxes[:, 2] * factor
    boxes[:, 5] = boxes[:, 5] * factor + (factor - 1)
    np.savez_compressed(target, imgs=np.ascontiguousarray(image), boxes=boxes, **extra)
    return target


def read_segs(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        return data["segs"]


class RedisServer:
    """A private redis-server (append-only file, password) that a test can kill and start again on one port.

    By default on a free port of 127.0.0.1; `host`, `port` and a `prefix` that execs it (`ip netns exec NS`) put it
    on another address, e.g. in a network namespace of its own."""

    def __init__(
        self,
        folder: Path,
        password: str = "fleet-test-password",
        tls: bool = False,
        host: str = "127.0.0.1",
        port: int | None = None,
        prefix: tuple[str, ...] = (),
        users: dict[str, tuple[str, list[str]]] | None = None,
    ):
        import shutil
        import socket

        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.folder, self.password, self.host, self.prefix = folder, password, host, prefix
        folder.mkdir(parents=True, exist_ok=True)
        if port is None:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.port = port
        self.process: subprocess.Popen | None = None
        self.tls = make_certificates(folder / "tls") if tls else None
        self.users = users or {}  # ACL users: name -> (password, rules), set up at every start

    def user_url(self, user: str) -> str:
        """The URL of an ACL user (the `url` property is the default user's, who may do anything)."""
        return self.url.replace(f"://:{self.password}@", f"://{user}:{self.users[user][0]}@", 1)

    @property
    def url(self) -> str:
        if self.tls is None:
            return f"redis://:{self.password}@{self.host}:{self.port}/0"
        return (
            f"rediss://:{self.password}@{self.host}:{self.port}/0"
            f"?ssl_cert_reqs=required&ssl_ca_certs={self.tls / 'ca.crt'}"
        )

    def _listen(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(self.tls / "server.crt"),
            "--tls-key-file",
            str(self.tls / "server.key"),
            "--tls-ca-cert-file",
            str(self.tls / "ca.crt"),
            "--tls-auth-clients",
            "no",
        ]

    def start(self, timeout: float = 20.0) -> None:
        import redis

        command = [
            *self.prefix,
            self.binary,
            *self._listen(),
            "--bind",
            self.host,
            "--dir",
            str(self.folder),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--requirepass",
            self.password,
            "--logfile",
            str(self.folder / "redis.log"),
        ]
        for user, (password, rules) in self.users.items():
            command += ["--user", user, "on", f">{password}", *rules]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url, socket_connect_timeout=1).ping():
                    return
            except redis.exceptions.BusyLoadingError:
                pass
            except redis.exceptions.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL: no shutdown save; what survives is what the append-only file holds."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


def make_certificates(folder: Path) -> Path:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl), for a TLS Redis."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=litemedsam-test-ca",
    )
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"
    )
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
    )
    return folder


def worker_context(client, engine, node: str, **extra):
    """The context a worker process builds around its engine (worker.job_context.WorkerContext), on a producer
    client's store, ledger and keys, for tests that run tasks in the test process."""
    from worker.job_context import WorkerContext

    return WorkerContext(
        engine=engine,
        identity=engine.identity(),
        store=client.store,
        ledger=client.ledger,
        result_ttl=600,
        node=node,
        keys=client.keys,
        **extra,
    )
