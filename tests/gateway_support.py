"""The gateway in this test process, without the model: its real app, pipeline, DICOMweb client, audit, limits and
retention, with a segmenter that fills each box (the engine is tested elsewhere; these tests are about who may do
what, where data may go and what is recorded). Plus small loopback HTTP servers: one that counts the requests it
gets, one that redirects, one that publishes a JWKS."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from producer.gateway.config import GatewayConfig
from producer.gateway.identity import read_tokens
from producer.gateway.limits import LimitSettings
from producer.outcome import StudyOutcome

ADMIN = "admin-token-0123456789abcdef"
ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdefgh"
READER = "reader-token-0123456789abcdef"
TOKENS = f"admin:{ADMIN}:admin,alice:{ALICE},bob:{BOB},reader:{READER}:read"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class BoxFillSegmenter:
    """Labels = each box filled with its label; `gate` (when set) holds every job until it is opened."""

    mode = "test"

    def __init__(self) -> None:
        self.gate: threading.Event | None = None

    def segment(self, name, study, progress):
        if self.gate is not None:
            self.gate.wait(30)
        shape = study.image.shape if study.image.ndim == 3 and study.boxes.shape[1] == 6 else study.image.shape[:2]
        labels = np.zeros(shape, np.uint16)
        for k, box in enumerate(np.asarray(study.boxes, int)):
            if len(box) == 6:
                labels[box[2] : box[5] + 1, box[1] : box[4] + 1, box[0] : box[3] + 1] = k + 1
            else:
                labels[box[1] : box[3] + 1, box[0] : box[2] + 1] = k + 1
        progress(1, 1)
        return StudyOutcome(name, study.modality, labels=labels, metrics={})


def config(data_dir: Path, **changes) -> GatewayConfig:
    base = GatewayConfig(tokens=read_tokens(TOKENS, None), data_dir=data_dir, limits=LimitSettings("100000/minute", 20))
    return replace(base, **changes)


def wait_job(client, job_id: str, token: str = ADMIN, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=bearer(token)).json()
        if job["state"] in ("ok", "error"):
            return job
        time.sleep(0.1)
    raise TimeoutError(job_id)


class LoopbackServer:
    """A ThreadingHTTPServer on a free loopback port, answering every request with `answer(handler)`."""

    def __init__(self, answer):
        self.requests: list[str] = []
        self.documents: dict[str, dict] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                outer.requests.append(f"{self.command} {self.path}")
                answer(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def counting_server() -> LoopbackServer:
    """Counts what reaches it; answers 200 with an empty DICOM JSON list."""

    def answer(handler):
        body = b"[]"
        handler.send_response(200)
        handler.send_header("Content-Type", "application/dicom+json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return LoopbackServer(answer)


def redirecting_server(target: str) -> LoopbackServer:
    def answer(handler):
        handler.send_response(302)
        handler.send_header("Location", target + handler.path)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return LoopbackServer(answer)


def jwks_server(document: dict) -> LoopbackServer:
    """Answers every path with `document` (a JWKS), except the paths in its `.documents` (discovery)."""

    def answer(handler):
        body = json.dumps(server.documents.get(handler.path, document)).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    server = LoopbackServer(answer)
    return server


class ServedApp:
    """An ASGI app served by uvicorn in a thread on a free loopback port (for clients outside this process)."""

    def __init__(self, app):
        import socket

        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServedApp:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def fuzz_app(data_dir: Path):
    """The service as schemathesis sees it: every route, one allowed DICOMweb root where nothing listens (jobs end
    at once with a clear error), a request rate no fuzz run reaches, and a rate of requests without a valid
    credential no fuzz run reaches either: the run without a credential sends hundreds a minute from one address,
    and schemathesis rightly expects each to be answered 401, the credential's verdict (with the default 60 a
    minute, all but the first 60 would be 429, tested in test_gateway_security)."""
    import socket

    from producer.gateway.app import create_app
    from producer.gateway.dicomweb import ClientSettings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    cfg = config(
        data_dir,
        dicomweb_allow=(f"http://127.0.0.1:{closed}/dicom-web",),
        dicomweb=ClientSettings(connect_timeout=1, read_timeout=2, retries=0),
        limits=LimitSettings("1000000/minute", 1000, failed_auth="1000000/minute"),
    )
    return create_app(cfg, BoxFillSegmenter())
