"""Fleet benchmark (not a test): throughput of a batch of small 2D studies and of a batch of 3D studies, run
in-process (embedded, 2 threads), by 1 worker x 2 threads, 1 worker x 1 thread and 2 workers x 1 thread; and
what the fleet adds.

    .venv/bin/python ops/bench/fleet_bench.py [--reps-2d 3] [--reps-3d 2] [--small 8] [--batch-3d 2]
                                              [--big CASE.npz] [--configs 1x2,1x1,2x1] [--no-write]

Targets (issue 10): on the same run, 2 workers x 1 thread >= 1.8x the throughput of 1 worker x 1 thread and
>= 0.95x that of 1 worker x 2 threads, on the 2D batch and on the 3D batch (engine processes of one host must
not share a core: worker.cpu_affinity).

Targets (issue 3): the fleet adds under 5 % to a 3D study's time and under 150 ms per small 2D study, both
against the embedded run with the same thread count (1 worker x 2 threads vs embedded 2 threads).

Every repetition segments new content (one voxel changed), so neither the workers' embedding cache nor the
content-addressed store can serve it; fleet runs use --force as well. Wall times are the producer's, from
submitting the folder to the last mask written (discovery, load, upload, queue, compute, download, write);
embedded times cover the same steps in-process, with the engine compiled beforehand (workers compile at start).
Workers are started with ops/fleet/fleet.sh on a private Redis database. Prints a table, writes
ops/bench/results/fleet.{png,json} and appends a dated block under "## Fleet" in ops/bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from producer import api  # noqa: E402  (all project imports up front: a long run never mixes code versions)
from producer.discovery import find_studies  # noqa: E402
from producer.embedded import EmbeddedRunner  # noqa: E402
from producer.outputs import OutputWriter  # noqa: E402
from worker.contract.settings import FleetSettings  # noqa: E402
from worker.engine.engine import EngineSettings  # noqa: E402

SHARED_IMGS = REPO.parent / "shared" / "data" / "cases" / "imgs"
RESULTS_MD = REPO / "ops" / "bench" / "RESULTS.md"
RESULTS_DIR = REPO / "ops" / "bench" / "results"
FLEET_SH = REPO / "ops" / "fleet" / "fleet.sh"
ALL_CONFIGS = (
    ("embedded x 2 threads", 0, 2),
    ("1 worker x 2 threads", 1, 2),
    ("1 worker x 1 thread", 1, 1),
    ("2 workers x 1 thread", 2, 1),
)
CONFIG_KEYS = {"embedded": ALL_CONFIGS[0], "1x2": ALL_CONFIGS[1], "1x1": ALL_CONFIGS[2], "2x1": ALL_CONFIGS[3]}
CONFIGS = ALL_CONFIGS  # the configurations measured in this run (--configs)
COLORS = dict(zip((c for c, _, _ in ALL_CONFIGS), ("#888888", "#1f77b4", "#2ca02c", "#ff7f0e")))


@dataclass
class Run:
    config: str
    workload: str  # "2d" or "3d"
    wall: float
    studies: int
    engine_total: float  # sum of the engine's own time over the studies
    fleet_parts: dict[str, float] = field(default_factory=dict)  # mean seconds per study of the fleet's stages
    load: float = 0.0  # 1-minute load average when the run started


# ------------------------------------------------------------------------------------------------ inputs


def _sources(big: Path | None) -> tuple[list[Path], Path]:
    """(2D sources, the 3D source): shared dev cases when present, else phantoms."""
    small = [SHARED_IMGS / f"2DBox_CT_{n}.npz" for n in ("amos000475", "amos000690")]
    big = big or SHARED_IMGS / "3DBox_CT_tssm.npz"
    if all(p.is_file() for p in (*small, big)):
        return small, big
    from producer.phantoms import write_phantoms

    written = {p.stem: p for p in write_phantoms(Path(tempfile.mkdtemp(prefix="fleet-bench-ph-")), with_gts=False)}
    return [written["2DBox_CT_phantom"]], written["3DBox_CT_phantom"]


def _variant(source: Path, target: Path, salt: int, mirror: int, member: int = 0) -> None:
    """New content with the same work: a mirrored copy (2D) and voxels changed by `salt` and `member`."""
    with np.load(source, allow_pickle=False) as data:
        arrays = {k: data[k].copy() for k in data.files}
    image, boxes = arrays["imgs"], arrays["boxes"]
    if image.ndim == 3 and image.shape[-1] == 3 and mirror & 1:
        width = image.shape[1]
        image, boxes[:, [0, 2]] = image[:, ::-1].copy(), (width - 1) - boxes[:, [2, 0]]
    if image.shape[-1] == 3 and mirror & 2:
        height = image.shape[0]
        image, boxes[:, [1, 3]] = image[::-1].copy(), (height - 1) - boxes[:, [3, 1]]
    image.flat[0] = (int(image.flat[0]) + 1 + salt) % 256
    image.flat[1] = (int(image.flat[1]) + member) % 256
    arrays.update(imgs=image, boxes=boxes)
    np.savez_compressed(target, **arrays)


def make_inputs(
    root: Path, small: int, reps_2d: int, reps_3d: int, n_configs: int, big: Path | None = None, batch_3d: int = 1
) -> dict[str, list[Path]]:
    """Folders of fresh content: for each config and repetition, a 2D batch and a batch of 3D studies."""
    sources_2d, source_3d = _sources(big)
    folders: dict[str, list[Path]] = {"2d": [], "3d": []}
    salt = 0
    for _ in range(n_configs * reps_2d):
        folder = root / f"2d-{salt}"
        folder.mkdir(parents=True)
        for index in range(small):
            source = sources_2d[index % len(sources_2d)]
            # every study new content: the mirrors give only 4 layouts, so `member` tells the rest apart (without
            # it, batches above 8 held identical pairs that hit the embedding cache of whichever worker had one)
            mirror = index // len(sources_2d)
            _variant(source, folder / f"2DBox_CT_bench{index:02d}.npz", salt, mirror, member=index)
        folders["2d"].append(folder)
        salt += 1
    for _ in range(n_configs * reps_3d):
        folder = root / f"3d-{salt}"
        folder.mkdir(parents=True)
        for index in range(batch_3d):
            _variant(source_3d, folder / f"{source_3d.stem}_b{index:02d}.npz", salt, 0, index)
        folders["3d"].append(folder)
        salt += 1
    return folders


# ------------------------------------------------------------------------------------------------- runs


def _fleet_parts(metrics: list[dict]) -> dict[str, float]:
    parts: dict[str, list[float]] = {}
    for m in metrics:
        extra = m.get("extra", {})
        for name, value in {"queue_wait": extra.get("queue_wait"), **extra.get("transfer", {})}.items():
            if isinstance(value, (int, float)):
                parts.setdefault(name, []).append(float(value))
    return {name: statistics.mean(values) for name, values in parts.items()}


def run_embedded(runner, folder: Path, out: Path, config: str, workload: str) -> Run:
    started = time.perf_counter()
    writer, outcomes = OutputWriter(out), []
    for source in find_studies(folder):
        outcome = runner.run_one(source)
        writer.write(source, outcome)
        outcomes.append(outcome)
    wall = time.perf_counter() - started
    _check(outcomes, folder)
    return Run(config, workload, wall, len(outcomes), sum(o.metrics["times"]["total"] for o in outcomes))


def run_fleet(settings, folder: Path, out: Path, config: str, workload: str) -> Run:
    started = time.perf_counter()
    batch = api.submit(folder, out_dir=out, force=True, settings=settings, timeout=3600)
    wall = time.perf_counter() - started
    _check(batch.outcomes, folder)
    metrics = [o.metrics for o in batch.outcomes]
    return Run(config, workload, wall, len(metrics), sum(m["times"]["total"] for m in metrics), _fleet_parts(metrics))


def _check(outcomes, folder: Path) -> None:
    failed = [(o.name, o.error) for o in outcomes if not o.ok]
    if failed or not outcomes:
        raise RuntimeError(f"{folder}: failed studies {failed}")


@contextmanager
def local_fleet(broker: str, namespace: str, workers: int, threads: int):
    env = {
        **os.environ,
        "LITEMEDSAM_BROKER": broker,
        "LITEMEDSAM_NAMESPACE": namespace,
        "FLEET_DIR": tempfile.mkdtemp(prefix="fleet-bench-"),
        "WORKER_THREADS": str(threads),
    }
    try:
        subprocess.run(
            [str(FLEET_SH), "start", str(workers), "--loglevel", "WARNING"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        yield
    finally:
        subprocess.run([str(FLEET_SH), "stop"], env=env, check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(env["FLEET_DIR"], ignore_errors=True)


def claim_db() -> tuple[str, object]:
    import redis

    for db in range(15, 0, -1):
        client = redis.Redis(host="127.0.0.1", port=6379, db=db)
        if client.dbsize() == 0 and client.set("litemedsam-bench-claim", os.getpid(), nx=True, ex=6 * 3600):
            return f"redis://127.0.0.1:6379/{db}", client
    raise RuntimeError("no empty Redis database to run the benchmark on")


def measure(folders: dict[str, list[Path]], reps: dict[str, int], out_root: Path) -> list[Run]:
    runs: list[Run] = []
    broker, client = claim_db()
    namespace = f"bench{uuid.uuid4().hex[:6]}"
    settings = FleetSettings(broker_url=broker, namespace=namespace)
    pending = {w: list(paths) for w, paths in folders.items()}
    try:
        for config, workers, threads in CONFIGS:
            runs += _measure_config(config, workers, threads, pending, reps, out_root, broker, namespace, settings)
    finally:
        client.flushdb()
    return runs


def _measure_config(config, workers, threads, pending, reps, out_root, broker, namespace, settings) -> list[Run]:
    runs = []
    if workers == 0:
        runner = EmbeddedRunner(EngineSettings(threads=threads))
        runner.engine.warm_up()
        execute = lambda folder, out, workload: run_embedded(runner, folder, out, config, workload)  # noqa: E731
        context = nullcontext()
    else:
        execute = lambda folder, out, workload: run_fleet(settings, folder, out, config, workload)  # noqa: E731
        context = local_fleet(broker, namespace, workers, threads)
    with context:
        for workload in ("2d", "3d"):
            for _ in range(reps[workload]):
                folder = pending[workload].pop(0)
                load = os.getloadavg()[0]
                run = execute(folder, out_root / f"{folder.name}-out", workload)
                run.load = load
                print(f"  {config:22s} {workload}: {run.wall:7.2f} s for {run.studies} studies", flush=True)
                runs.append(run)
    return runs


# -------------------------------------------------------------------------------------------- reporting


def medians(runs: list[Run]) -> dict[tuple[str, str], dict[str, float]]:
    table = {}
    for config, _, _ in CONFIGS:
        for workload in ("2d", "3d"):
            picked = [r for r in runs if r.config == config and r.workload == workload]
            if not picked:
                continue
            wall = statistics.median(r.wall for r in picked)
            parts: dict[str, float] = {}
            for name in {n for r in picked for n in r.fleet_parts}:
                parts[name] = statistics.median(r.fleet_parts.get(name, 0.0) for r in picked)
            table[(config, workload)] = {
                "wall": wall,
                "studies": picked[0].studies,
                "n": len(picked),
                "load": statistics.median(r.load for r in picked),
                "per_study": wall / picked[0].studies,
                "throughput_per_min": 60 * picked[0].studies / wall,
                "engine": statistics.median(r.engine_total for r in picked),
                **parts,
            }
    return table


SCALING_TARGETS = (
    ("2 workers x 1 thread", "1 worker x 1 thread", 1.8),
    ("2 workers x 1 thread", "1 worker x 2 threads", 0.95),
)


def scaling_lines(table) -> list[str]:
    """Throughput ratios of the worker layouts against the issue-10 targets."""
    lines = []
    for ours, base, target in SCALING_TARGETS:
        for workload in ("2d", "3d"):
            if (ours, workload) in table and (base, workload) in table:
                ratio = table[(ours, workload)]["throughput_per_min"] / table[(base, workload)]["throughput_per_min"]
                verdict = "meets" if ratio >= target else "misses"
                lines.append(
                    f"- {workload.upper()} batch: {ours} = {ratio:.2f}x the throughput of {base} "
                    f"({verdict} the >= {target}x target)."
                )
    return lines


def overheads(table) -> dict[str, float]:
    """What 1 worker x 2 threads adds over the embedded run with 2 threads: raw wall-clock difference, and the
    difference of the time outside the engine (wall - engine), which background load on the machine skews less."""
    embedded, fleet = ALL_CONFIGS[0][0], ALL_CONFIGS[1][0]
    result = {}
    for workload in ("2d", "3d"):
        if (embedded, workload) not in table or (fleet, workload) not in table:
            continue
        base, ours = table[(embedded, workload)], table[(fleet, workload)]
        raw = ours["wall"] - base["wall"]
        outside = (ours["wall"] - ours["engine"]) - (base["wall"] - base["engine"])
        if workload == "3d":
            result["3d_percent_wall"] = 100 * raw / base["wall"]
            result["3d_percent_outside_engine"] = 100 * outside / base["wall"]
        else:
            result["2d_ms_per_study_wall"] = 1000 * raw / ours["studies"]
            result["2d_ms_per_study_outside_engine"] = 1000 * outside / ours["studies"]
    return result


def machine() -> str:
    return f"{common.machine_info()['cpu']}, {os.cpu_count()} CPUs"


def render(table, over, load: tuple[str, str], small: int) -> str:
    lines = [
        "| configuration | workload | runs | median wall s | s per study | studies/min | engine s | load at start | "
        "queue wait s | upload s | input download s | result upload s | result download s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (config, workload), row in table.items():
        cells = [
            f"{row.get(k, 0.0):.3f}" if k in row else "-"
            for k in ("queue_wait", "upload", "input_download", "result_upload", "result_download")
        ]
        label = f"{row['studies']} x {workload.upper()}"
        lines.append(
            f"| {config} | {label} | {row['n']} | {row['wall']:.2f} | {row['per_study']:.3f} | "
            f"{row['throughput_per_min']:.2f} | {row['engine']:.2f} | {row['load']:.2f} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    lines += scaling_lines(table)
    if "3d_percent_wall" in over:
        verdict = "meets" if over["3d_percent_outside_engine"] < 5 else "misses"
        lines.append(
            f"- Fleet overhead, 3D study (1 worker x 2 threads vs embedded 2 threads): "
            f"{over['3d_percent_outside_engine']:+.2f} % of the study's time outside the engine "
            f"({verdict} the < 5 % target); raw wall-clock difference {over['3d_percent_wall']:+.1f} %."
        )
    if "2d_ms_per_study_wall" in over:
        verdict = "meets" if over["2d_ms_per_study_outside_engine"] < 150 else "misses"
        lines.append(
            f"- Fleet overhead, small 2D studies (batch of {small}): "
            f"{over['2d_ms_per_study_outside_engine']:+.0f} ms per study outside the engine ({verdict} the "
            f"< 150 ms target); raw wall-clock difference {over['2d_ms_per_study_wall']:+.0f} ms per study."
        )
    lines.append(f"- Load average before / after: {load[0]} / {load[1]} (other work on the machine skews times).")
    return "\n".join(lines)


def plot(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = [c for c, _, _ in CONFIGS]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, workload, title, key, unit in (
        (axes[0], "2d", "small 2D batch", "throughput_per_min", "studies/min"),
        (axes[1], "3d", "3D batch", "throughput_per_min", "studies/min"),
    ):
        values = [table.get((c, workload), {}).get(key, 0.0) for c in configs]
        bars = ax.bar(range(len(configs)), values, color=[COLORS[c] for c in configs])
        ax.bar_label(bars, fmt="%.1f")
        ax.set_xticks(range(len(configs)), [c.replace(" x ", "\nx ") for c in configs], fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(unit)
    fig.suptitle("LiteMedSAM fleet on " + machine())
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def append_results(block: str) -> None:
    """Add a dated block at the end of the "## Fleet" section (created at the end of the file if missing)."""
    text = RESULTS_MD.read_text() if RESULTS_MD.is_file() else "# Benchmark results\n"
    if "\n## Fleet\n" not in f"\n{text}":
        RESULTS_MD.write_text(text.rstrip("\n") + "\n\n## Fleet\n\n" + block + "\n")
        return
    start = f"\n{text}".index("\n## Fleet\n") + len("## Fleet\n")
    following = text.find("\n## ", start)
    end = following + 1 if following != -1 else len(text)
    section = text[:end].rstrip("\n") + "\n\n" + block + "\n"
    RESULTS_MD.write_text(section + ("\n" + text[end:] if following != -1 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps-2d", type=int, default=3)
    parser.add_argument("--reps-3d", type=int, default=2)
    parser.add_argument("--small", type=int, default=8, help="2D studies per batch")
    parser.add_argument("--big", type=Path, default=None, help="the 3D study (default: 3DBox_CT_tssm)")
    parser.add_argument("--batch-3d", type=int, default=2, help="3D studies per batch (variants of --big)")
    parser.add_argument(
        "--configs", default=",".join(CONFIG_KEYS), help=f"comma-separated subset of {', '.join(CONFIG_KEYS)}"
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md or results/")
    args = parser.parse_args()
    global CONFIGS
    CONFIGS = tuple(CONFIG_KEYS[key.strip()] for key in args.configs.split(","))
    load_before = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        root = Path(tmp)
        folders = make_inputs(
            root / "in", args.small, args.reps_2d, args.reps_3d, len(CONFIGS), args.big, args.batch_3d
        )
        runs = measure(folders, {"2d": args.reps_2d, "3d": args.reps_3d}, root / "out")
    load_after = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    table = medians(runs)
    over = overheads(table)
    report = render(table, over, (load_before, load_after), args.small)
    print(report)
    if args.no_write:
        return
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    plot(table, RESULTS_DIR / "fleet.png")
    (RESULTS_DIR / "fleet.json").write_text(
        json.dumps({"runs": [asdict(r) for r in runs], "overheads": over, "machine": machine()}, indent=2)
    )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    append_results(
        f"### {stamp} — {machine()}\n\n`ops/bench/fleet_bench.py --reps-2d {args.reps_2d} "
        f"--reps-3d {args.reps_3d} --small {args.small} --batch-3d {args.batch_3d} --configs "
        f"{args.configs}`{f' (3D: {args.big.name})' if args.big else ''}; plot: results/fleet.png\n\n"
        f"{report}"
    )


if __name__ == "__main__":
    main()
