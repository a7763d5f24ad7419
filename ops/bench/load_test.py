"""Bounded load test (issue 6, not a test of the suite): N small 2D studies through W workers on loopback.

    .venv/bin/python ops/bench/load_test.py [--studies 300] [--workers 2] [--no-write]

Every study is new content (a mirrored copy of the 2D CT phantom or the shared 2D CT cases with one pixel
changed), so each one is really segmented. One producer submits the whole folder at once and waits, as a
hospital back-end would. Workers: ops/fleet/fleet.sh, `worker start --concurrency 1` with cores // W OpenVINO
threads each, on a private Redis database. Counted afterwards from the batch ledger and the workers' counters:
lost (a study without an outcome), duplicated (an engine run beyond one per study, or a second delivery),
failed. Latency per study: time in the system (enqueued -> outcome recorded), queue wait, and service time
(worker start -> outcome). Prints a table, writes ops/bench/results/load.{json,png} and the "Load test (issue 6)"
section of ops/bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parents[1]))

import common  # noqa: E402
from fleet_bench import _sources, _variant, claim_db, local_fleet  # noqa: E402

from producer import api  # noqa: E402
from worker.contract.keys import Keys  # noqa: E402
from worker.contract.settings import FleetSettings, redis_client  # noqa: E402
from worker.ledger import BatchLedger  # noqa: E402

RESULTS_JSON = common.BENCH / "results" / "load.json"
PLOT = common.BENCH / "results" / "load.png"
SECTION = "Load test (issue 6)"


def make_studies(folder: Path, count: int) -> Path:
    """`count` studies of distinct content: a mirrored source (4 ways) with its index written into two pixels."""
    sources, _ = _sources(None)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        path = folder / f"2DBox_CT_load{index:04d}.npz"
        _variant(sources[index % len(sources)], path, 0, index % 4)
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        arrays["imgs"].flat[1:3] = (index % 256, index // 256)
        np.savez_compressed(path, **arrays)
    return folder


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def run(studies: int, workers: int, threads: int) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="load-test-"))
    folder = make_studies(scratch / "in", studies)
    broker, claim = claim_db()
    namespace = f"load{uuid.uuid4().hex[:6]}"
    settings = FleetSettings(broker_url=broker, namespace=namespace)
    try:
        with local_fleet(broker, namespace, workers, threads):
            started = time.time()
            batch = api.submit(folder, out_dir=scratch / "out", settings=settings, timeout=6 * 3600, progress=True)
            wall = time.time() - started
            ledger = BatchLedger(redis_client(broker), Keys(namespace), settings.batch_ttl)
            runs, executions = ledger.runs(batch.batch_id), ledger.executions()
            outcomes = ledger.outcomes(batch.batch_id)
    finally:
        claim.flushdb()
    return summarise(batch, outcomes, runs, executions, studies, workers, threads, wall, started)


def summarise(batch, outcomes, runs, executions, studies, workers, threads, wall, started) -> dict:
    ok = [o for o in outcomes.values() if o.ok and not o.metrics.extra.cached]
    cached = sum(o.ok and bool(o.metrics.extra.cached) for o in outcomes.values())
    extras = [o.metrics.extra for o in ok]
    in_system = [o.finished_at - e.enqueued_at for o, e in zip(ok, extras)]
    queue_wait = [e.queue_wait for e in extras]
    service = [o.finished_at - e.started_at for o, e in zip(ok, extras)]
    engine = [o.metrics.times.total for o in ok]
    result_keys = {o.result_key for o in ok}
    per_node: dict[str, int] = {}
    for e in extras:
        per_node[e.node] = per_node.get(e.node, 0) + 1
    return {
        "studies": studies,
        "workers": workers,
        "threads_per_worker": threads,
        "wall_s": wall,
        "throughput_per_min": 60 * len(ok) / wall if wall else 0.0,
        "ok": len(ok),
        "cached": cached,
        "failed": sum(not o.ok for o in outcomes.values()),
        "lost": studies - len(outcomes),
        "extra_deliveries": sum(runs.values()) - len(runs),
        "engine_runs": sum(executions.values()),
        "duplicated": (sum(executions.values()) - len(ok)) + (len(ok) - len(result_keys)),  # (cached: 0 runs)
        "studies_per_worker": per_node,
        "in_system": _stats(in_system),
        "queue_wait": _stats(queue_wait),
        "service": _stats(service),
        "engine": _stats(engine),
        "completions": sorted(o.finished_at - started for o in ok),
        "errors": sorted({o.error for o in outcomes.values() if not o.ok})[:5],
    }


def _stats(values: list[float]) -> dict:
    return {
        "p50": percentile(values, 0.5),
        "p95": percentile(values, 0.95),
        "max": max(values, default=float("nan")),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def render(data: dict, loads: list[tuple[float, float, float]]) -> str:
    rows = [
        [name, f"{data[key]['p50']:.2f}", f"{data[key]['p95']:.2f}", f"{data[key]['max']:.2f}"]
        for name, key in (
            ("time in system (enqueued -> outcome)", "in_system"),
            ("queue wait", "queue_wait"),
            ("service (worker start -> outcome)", "service"),
            ("engine", "engine"),
        )
    ]
    lines = [
        f"### {data['machine']['date']} — "
        f"`ops/bench/load_test.py --studies {data['studies']} --workers {data['workers']}`",
        "",
        *common.machine_lines(data["machine"], loads),
        "",
        f"- {data['studies']} small 2D studies (new content each) submitted at once by one producer to "
        f"{data['workers']} workers x {data['threads_per_worker']} OpenVINO thread(s) on loopback Redis: "
        f"**{data['throughput_per_min']:.1f} studies/min**, the batch took {data['wall_s']:.1f} s.",
        f"- Lost: **{data['lost']}**. Duplicated: **{data['duplicated']}** (engine runs {data['engine_runs']} for "
        f"{data['ok']} results; extra deliveries {data['extra_deliveries']}). Failed: {data['failed']}; served from "
        f"the store instead of computed: {data['cached']}.",
        "- Studies per worker: " + ", ".join(f"{n}: {c}" for n, c in sorted(data["studies_per_worker"].items())),
        "",
        common.md_table(["latency per study", "p50 s", "p95 s", "max s"], rows),
        "",
        "Time in the system grows through the batch because every study is enqueued at once: it is the queue "
        "draining at the fleet's throughput, not a slow study. Service time is what one study costs a worker.",
        "",
        "![load](results/load.png)",
    ]
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    done = data["completions"]
    left.plot(done, range(1, len(done) + 1))
    left.set_xlabel("seconds since submission")
    left.set_ylabel("studies finished")
    left.set_title(f"{data['throughput_per_min']:.1f} studies/min, {data['workers']} workers")
    right.bar(["p50", "p95"], [data["service"]["p50"], data["service"]["p95"]], label="service")
    right.set_ylabel("seconds per study (worker)")
    right.set_title(f"service time; lost {data['lost']}, duplicated {data['duplicated']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="OpenVINO threads per worker (0: cores // workers)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    loads, machine = [common.loadavg()], common.machine_info()
    data = run(args.studies, args.workers, threads)
    loads.append(common.loadavg())
    data["machine"] = {**machine, "uptime_end": common.uptime_line()}
    text = render(data, loads)
    print(text)
    if not args.no_write:
        RESULTS_JSON.write_text(json.dumps(data, indent=1))
        plot(data, PLOT)
        common.replace_section(SECTION, text)
    if data["lost"] or data["duplicated"] or data["failed"] or data["cached"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
