"""Container benchmark (not a test): image sizes, start-up to first result and the compose fleet's throughput
against ops/fleet/fleet.sh's on the same machine, both 2 workers x 1 OpenVINO thread.

    .venv/bin/python ops/bench/compose_bench.py [--small 8] [--reps 3] [--no-write]

Needs a running Docker daemon and docker-compose; builds what is missing (ops/images.sh's local bases, then
compose's worker image), mounts the host's exported models read-only. Start-up: from `compose up -d` with the
images built and fresh volumes (Redis, 2 workers, Flower) to the first 2D study's mask written on the host.
Throughput: batches of `--small` 2D studies of new content (fleet_bench's variants, --force), alternating the
compose fleet (WORKER_CPUS=1, WORKER_THREADS=1) and fleet.sh's (WORKER_THREADS=1, its own Redis database).
Prints a table and appends a dated block under "## Containers (issue 28)" in ops/bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import fleet_bench  # noqa: E402

from models.paths import default_models_dir  # noqa: E402
from producer import api  # noqa: E402
from worker.contract.settings import FleetSettings  # noqa: E402

IMAGES = {
    "worker": "litemedsam-fleet-worker:latest",
    "gateway": "litemedsam-fleet-gateway:latest",
    "python base (local)": "litemedsam-local/python:3.11-slim",
    "redis (local)": "litemedsam-local/redis:7",
    "flower (local)": "litemedsam-local/flower:2",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Compose:
    def __init__(self, folder: Path, images: dict[str, str]):
        self.name = f"lmsbench{secrets.token_hex(3)}"
        self.password = secrets.token_hex(16)
        self.port = free_port()
        env = {
            "REDIS_PASSWORD": self.password,
            "FLOWER_PASSWORD": secrets.token_hex(8),
            "REDIS_PORT": self.port,
            "FLOWER_PORT": free_port(),
            "LITEMEDSAM_MODELS": default_models_dir(),
            "WORKER_THREADS": 1,
            "WORKER_CPUS": 1,
            **images,
        }
        self.env_file = folder / "compose.env"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))

    @property
    def broker(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def __call__(self, *args: str) -> None:
        command = ["docker-compose", "--project-directory", str(REPO), "--env-file", str(self.env_file)]
        subprocess.run([*command, "-p", self.name, *args], cwd=REPO, check=True, capture_output=True, timeout=1800)


def image_sizes() -> dict[str, float]:
    sizes = {}
    for label, image in IMAGES.items():
        done = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", image], capture_output=True)
        if done.returncode == 0:
            sizes[label] = int(done.stdout) / 1e6
    return sizes


def timed_batch(folder: Path, out: Path, settings: FleetSettings) -> float:
    started = time.perf_counter()
    batch = api.submit(folder, out_dir=out, force=True, settings=settings, timeout=3600)
    wall = time.perf_counter() - started
    if batch.failed or batch.ok != len(batch.names):
        raise RuntimeError(f"{folder}: {[o.error for o in batch.outcomes if not o.ok]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=8, help="2D studies per batch")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()
    info = common.machine_info()
    scratch = Path(tempfile.mkdtemp(prefix="compose-bench-"))
    images = dict(
        line.split("=", 1)
        for line in subprocess.run(
            [str(REPO / "ops/images.sh")], check=True, capture_output=True, text=True
        ).stdout.split()
    )
    compose = Compose(scratch, images)
    compose("build", "worker")
    folders = fleet_bench.make_inputs(scratch / "in", args.small, args.reps + 1, 0, 2)["2d"]
    first = scratch / "first"
    first.mkdir()
    shutil.copy(next(folders[-1].iterdir()), first)
    loads, compose_walls, local_walls = [], [], []
    try:
        started = time.perf_counter()
        compose("up", "-d", "--scale", "worker=2", "redis", "worker", "flower")
        up = time.perf_counter() - started
        settings = FleetSettings(broker_url=compose.broker, namespace="lms")
        timed_batch(first, scratch / "out-first", settings)
        startup = time.perf_counter() - started
        broker, claim = fleet_bench.claim_db()
        local = FleetSettings(broker_url=broker, namespace="bench")
        try:
            with fleet_bench.local_fleet(broker, "bench", 2, 1):
                for rep in range(args.reps):
                    loads.append(common.loadavg())
                    compose_walls.append(timed_batch(folders[2 * rep], scratch / f"out-c{rep}", settings))
                    loads.append(common.loadavg())
                    local_walls.append(timed_batch(folders[2 * rep + 1], scratch / f"out-l{rep}", local))
        finally:
            claim.flushdb()
    finally:
        subprocess.run(
            ["docker-compose", "--project-directory", str(REPO), "--env-file", str(compose.env_file)]
            + ["-p", compose.name, "down", "-v", "-t", "30"],
            cwd=REPO,
            capture_output=True,
        )
        shutil.rmtree(scratch, ignore_errors=True)
    info["uptime_end"] = common.uptime_line()
    sizes = image_sizes()
    compose_median, local_median = statistics.median(compose_walls), statistics.median(local_walls)
    rows = [
        [
            "compose: 2 worker containers x 1 thread",
            common.fmt(compose_median),
            common.fmt(args.small / compose_median),
        ],
        ["fleet.sh: 2 workers x 1 thread", common.fmt(local_median), common.fmt(args.small / local_median)],
    ]
    lines = [
        f"### {info['date']}: compose fleet vs fleet.sh, {args.small} 2D studies per batch, median of {args.reps}",
        "",
        *common.machine_lines(info, loads),
        "",
        common.md_table(["fleet", "batch wall s", "studies/s"], rows),
        "",
        f"- compose / fleet.sh throughput: {local_median / compose_median:.2f}x "
        f"(walls: compose {json.dumps([round(w, 2) for w in compose_walls])}, "
        f"fleet.sh {json.dumps([round(w, 2) for w in local_walls])}).",
        f"- Start-up to first result: {startup:.1f} s from `compose up -d` (images built, fresh volumes; `up` "
        f"returned after {up:.1f} s) to the first 2D study's mask on the host.",
        "- Image sizes (MB, as `docker image inspect` reports): "
        + ", ".join(f"{label} {size:.0f}" for label, size in sizes.items())
        + ".",
    ]
    block = "\n".join(lines)
    print(block)
    if not args.no_write:
        common.append_to_section("Containers (issue 28)", block)


if __name__ == "__main__":
    main()
