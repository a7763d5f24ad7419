#!/usr/bin/env python3
"""Click latency of an interactive session on the fleet vs in the gateway's own process (issue 23, item 5).

The same sessions run twice through HTTP, by session_latency.run_case (a box, then clicks at the centre of the
largest error against the ground truth, each POST timed by the client):
- in-process: `producer serve` (embedded, --threads T);
- fleet: `producer serve --broker` with one `worker start --threads T` on a Redis database of 127.0.0.1:6379
  claimed for the run (its own namespace), so the difference is what the fleet adds: the step message, the worker's
  direct queue, the reply through Redis.
Cases: 2D 2DBox_CT_amos000475 (512x512) and 3D 3DBox_CT_tssm (30x101x122: its box spans every slice, so the first
box encodes the volume and every click lands on an encoded slice). Without ../shared/data/cases: the phantoms.
Masks are identical in both runs (tests/test_fleet_sessions.py checks bit for bit), so both get the same clicks.
Prints a table; with --record, writes the "Interactive sessions on the fleet: click latency" section of RESULTS.md.

    .venv/bin/python ops/bench/fleet_session_latency.py --threads 2 --clicks 20 --record
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import loadavg, machine_info, machine_lines, md_table, replace_section, uptime_line  # noqa: E402
from session_latency import CASES as DEV_CASES  # noqa: E402
from session_latency import percentile, run_case  # noqa: E402

from fleet_support import WorkerProcess, claim_redis, fleet_env, wait_for_nodes  # noqa: E402
from models.paths import default_models_dir  # noqa: E402
from orthanc_support import GatewayProcess  # noqa: E402

TOKEN = "fleet-session-bench-token-0123456789abcdef"
CASES = {"2D": "2DBox_CT_amos000475", "3D": "3DBox_CT_tssm"}


def in_process(folder: Path, threads: int, kinds: list[str], clicks: int, cases: Path) -> list[dict]:
    service = GatewayProcess(folder / "embedded", TOKEN, {}, "--threads", str(threads))
    try:
        service.wait_ready()
        return [run_case(service, kind, clicks, CASES[kind], cases) for kind in kinds]
    finally:
        service.stop()


def on_fleet(folder: Path, threads: int, kinds: list[str], clicks: int, cases: Path) -> list[dict]:
    from worker.app import make_app
    from worker.contract.settings import FleetSettings

    slot = claim_redis()
    if slot is None:
        raise SystemExit("no Redis at 127.0.0.1:6379 with an empty database to claim")
    env = fleet_env(slot.url, slot.namespace, default_models_dir())
    # WorkerProcess starts `worker start --threads 1 ...`; the later --threads wins
    node = f"bench-{slot.namespace}@{socket.gethostname()}"
    worker = WorkerProcess(node, env, folder / "worker.log", "--threads", str(threads))
    service = GatewayProcess(
        folder / "fleet",
        TOKEN,
        {},
        "--broker",
        slot.url,
        "--threads",
        str(threads),
        env={"LITEMEDSAM_NAMESPACE": slot.namespace},
    )
    try:
        wait_for_nodes(make_app(FleetSettings(broker_url=slot.url, namespace=slot.namespace)), [worker.node], [worker])
        service.wait_ready()
        return [run_case(service, kind, clicks, CASES[kind], cases) for kind in kinds]
    finally:
        service.stop()
        worker.stop()
        slot.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--kinds", default="2D,3D")
    parser.add_argument("--record", action="store_true")
    parser.add_argument(
        "--cases", type=Path, default=DEV_CASES, help="cases with imgs/ and gts/ (default: ../shared/data/cases)"
    )
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    loads = [loadavg()]
    folder = Path(tempfile.mkdtemp(prefix="fleet-session-bench-"))
    results = {"in-process": in_process(folder, args.threads, kinds, args.clicks, args.cases)}
    loads.append(loadavg())
    results["fleet"] = on_fleet(folder, args.threads, kinds, args.clicks, args.cases)
    loads.append(loadavg())
    rows = []
    for kind in kinds:
        for mode in ("in-process", "fleet"):
            r = next(r for r in results[mode] if r["kind"] == kind)
            clicks = r["clicks"]
            rows.append(
                [
                    kind,
                    r["case"],
                    mode,
                    f"{r['box']:.2f}",
                    str(len(clicks)),
                    f"{statistics.median(clicks):.3f}" if clicks else "-",
                    f"{percentile(clicks, 0.95):.3f}" if clicks else "-",
                    f"{max(clicks):.3f}" if clicks else "-",
                    ", ".join(w for w in r["workers"] if w) or "-",
                ]
            )
    header = ["", "case", "where", "first box s", "clicks", "click p50 s", "click p95 s", "max s", "answered by"]
    lines = [
        f"`ops/bench/fleet_session_latency.py --threads {args.threads} --clicks {args.clicks}`: the same sessions "
        "through HTTP on loopback, the gateway computing them itself, then one fleet worker (same OpenVINO threads) "
        "behind `producer serve --broker` on the local Redis; times are the client's wall time per request.",
        "",
        *machine_lines(machine_info(), loads),
        "",
        md_table(header, rows),
    ]
    print("\n".join(lines))
    print(uptime_line())
    if args.record:
        replace_section("Interactive sessions on the fleet: click latency (issue 23)", "\n".join(lines))


if __name__ == "__main__":
    main()
