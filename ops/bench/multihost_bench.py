"""One big study split across two hosts (issue 12; a benchmark, not a test): Redis and two worker "hosts" in Linux
network namespaces of their own (tests/netns_support.py: a private /24 the bench makes; nothing else is contacted),
each host's link limited to a LAN's rate (`tc tbf`), against one worker on one host.

    sudo .venv/bin/python ops/bench/multihost_bench.py [--reps 2] [--rate 1gbit] [--no-write]

Each worker host gets one core of this machine (taskset) and one engine thread, as a machine of its own would.
Configurations, one fleet each: `1 host` (a worker on host a, the study with `--split off`) and `2 hosts` (workers on
hosts a and b, split on). The study is 3DBox_CT_tsup (the 3D CT phantom without the dev cases). Every embedding a
part encodes crosses the shaped links twice (4 MiB up from the part's host to Redis, 4 MiB down to the coordinator's).
Appends a dated block under "## Scaling one study (issue 12)" in ops/bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "ops" / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from common import append_to_section, machine_info, machine_lines, md_table  # noqa: E402
from fanout_bench import SECTION, run_once, sources  # noqa: E402

from fleet_support import WorkerProcess, fleet_env, wait_for_nodes  # noqa: E402
from netns_support import PrivateNetwork  # noqa: E402
from worker.contract.settings import FleetSettings  # noqa: E402

PORT = 6379
PASSWORD = "multihost-bench"  # Redis refuses unauthenticated clients from other hosts (protected mode)


def shape(net: PrivateNetwork, host: str, rate: str) -> str:
    """Limit the host's cable to `rate` in both directions (a token bucket on the host's end and on the switch's
    end); returns what was set, or why nothing was."""
    if not rate:
        return "unshaped"
    for namespace, device in ((net.namespace(host), "eth0"), (net.namespace("hub"), net.switch_port(host))):
        done = subprocess.run(
            ["ip", "netns", "exec", namespace, "tc", "qdisc", "replace", "dev", device, "root"]
            + ["tbf", "rate", rate, "burst", "256kb", "latency", "50ms"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            return f"unshaped (tc tbf refused: {done.stderr.strip() or done.returncode})"
    return f"{rate} each way (tc tbf)"


def start_redis(net: PrivateNetwork, folder: Path) -> subprocess.Popen:
    """A plain redis-server on the hub's address (no persistence: the blobs are transient)."""
    import redis

    command = [
        *net.prefix("hub"),
        shutil.which("redis-server") or "redis-server",
        "--bind",
        net.address("hub"),
        "--port",
        str(PORT),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(folder),
        "--requirepass",
        PASSWORD,
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if redis.Redis(host=net.address("hub"), port=PORT, password=PASSWORD, socket_connect_timeout=1).ping():
                return process
        except redis.exceptions.ConnectionError:
            time.sleep(0.1)
    process.kill()
    process.wait(10)
    raise TimeoutError("redis-server in the hub namespace did not start")


def run_config(net, hosts: list[str], env: dict, settings: FleetSettings, study: Path, reps: int, scratch: Path):
    from worker.app import make_app

    cores = sorted(os.sched_getaffinity(0))
    workers = [
        WorkerProcess(
            f"mh-{host}@{socket.gethostname()}",
            env,
            scratch / f"{host}.log",
            prefix=(*net.prefix(host), "taskset", "-c", str(cores[net.hosts.index(host) % len(cores)])),
        )
        for host in hosts
    ]
    walls, splits = [], []
    try:
        wait_for_nodes(make_app(settings), [w.node for w in workers], workers, timeout=300)
        for rep in range(reps):
            salt = int(time.time()) % 1000 + rep
            wall, split = run_once(settings, study, scratch / f"{len(hosts)}-{rep}", salt, len(hosts) > 1)
            walls.append(wall)
            splits.append(split)
            print(f"  {len(hosts)} host(s) rep {rep + 1}: {wall:7.2f} s ({split.get('mode', 'none')})", flush=True)
    finally:
        for worker in workers:
            worker.stop(grace=10)
    return walls, splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--rate", default="1gbit", help="each host's link rate (tc tbf; '': unlimited)")
    parser.add_argument("--study", type=Path, default=None, help="the 3D study (default: 3DBox_CT_tsup)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    reason = PrivateNetwork.unavailable()
    if reason:
        raise SystemExit(f"no network namespaces here: {reason}")
    scratch = Path(tempfile.mkdtemp(prefix="multihost-bench-"))
    study, _, _ = sources(args.study, None, scratch)
    info = machine_info()
    net = PrivateNetwork(["a", "b"])
    redis_process = None
    try:
        net.create()
        link = shape(net, "a", args.rate)
        shape(net, "b", args.rate)
        redis_process = start_redis(net, scratch)
        url = f"redis://:{PASSWORD}@{net.address('hub')}:{PORT}/0"
        namespace = f"multihost{uuid.uuid4().hex[:6]}"
        from models.paths import default_models_dir

        env = fleet_env(url, namespace, default_models_dir())
        settings = FleetSettings(broker_url=url, namespace=namespace)
        results = {}
        for hosts in (["a"], ["a", "b"]):
            results[len(hosts)] = run_config(net, hosts, env, settings, study, args.reps, scratch)
    finally:
        if redis_process is not None:
            redis_process.kill()
            redis_process.wait(10)
        net.close()
    info["uptime_end"] = machine_info()["uptime"]
    one, two = statistics.median(results[1][0]), statistics.median(results[2][0])
    coordinator = results[2][1][-1].get("coordinator", {})
    rows = [
        ["1 host x 1 thread (split off)", args.reps, f"{one:.2f}", "1.00x", "-"],
        [
            "2 hosts x 1 thread (split)",
            args.reps,
            f"{two:.2f}",
            f"{one / two:.2f}x",
            f"coordinator encoded {coordinator.get('encoded', '?')}, fetched {coordinator.get('fetched', '?')} "
            f"({coordinator.get('fetch_seconds', '?')} s not prefetched), waited {coordinator.get('waits', '?')}x",
        ],
    ]
    table = md_table(["configuration", "runs", "median wall s", "speed-up", "split (last run)"], rows)
    print(table)
    if args.no_write:
        return
    block = "\n".join(
        [
            f"### {info['date']} — two hosts in network namespaces (`ops/bench/multihost_bench.py --reps {args.reps} "
            f"--rate {args.rate or 'none'}`)",
            "",
            *machine_lines(info),
            f"- Study: {study.name}. Links: {link} on each host's cable; Redis in the hub "
            "namespace, no persistence; each worker host one core (taskset) and one engine thread.",
            "",
            table,
        ]
    )
    append_to_section(SECTION, block)


if __name__ == "__main__":
    main()
