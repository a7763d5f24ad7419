"""Scaling one study (issue 12), a benchmark (not a test): one big 3D CT study split across workers, and the PET
tri-view split by views, against the same study on one worker.

    .venv/bin/python ops/bench/fanout_bench.py [--reps 3] [--ct CASE.npz] [--pet CASE.npz]
                                               [--ct-configs 2x1,1x1,1x2] [--pet-configs 3x1,1x1] [--no-write]

- CT: 3DBox_CT_tsup (90 slices) from ../shared/data/cases/imgs (else the CT phantom, with the split threshold
  lowered so that it splits): 2 workers x 1 thread with the split, against 1 worker x 1 thread and 1 worker x 2
  threads without it. Targets: >= 1.8x and >= 1.15x.
- PET: 3DBox_PET_phantom (producer/phantoms.py): 3 workers x 1 thread (views as tasks) against 1 worker x 1 thread.

Each repetition segments new content (one voxel changed) with --force, so neither cache nor store serves it.
Wall time is the producer's, from submitting the folder to the mask written. Workers come from ops/fleet/fleet.sh
on a private Redis database, each with its own cores (FLEET_PIN=1) whenever workers x threads fit the cores
(3 workers on 2 cores cannot: they share them). One fleet per configuration (a start costs ~20 s), every
repetition of each study inside it; the table gives medians, the speed-up against 1 worker x 1 thread measured in
the same run, and appends a dated section under "## Scaling one study (issue 12)" in ops/bench/RESULTS.md
(unless --no-write).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parents[1]))

from common import append_to_section, machine_info, machine_lines, md_table  # noqa: E402
from fleet_bench import SHARED_IMGS, _variant, claim_db, local_fleet  # noqa: E402

from producer import api  # noqa: E402
from worker.contract.settings import FleetSettings, available_cores  # noqa: E402

SECTION = "Scaling one study (issue 12)"
TARGETS = {("ct", "2x1", "1x1"): 1.8, ("ct", "2x1", "1x2"): 1.15}
BASELINE = {"ct": "1x1", "pet": "1x1"}


@dataclass
class Result:
    workload: str
    config: str
    walls: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    split: list[dict] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.walls)


def parse_config(text: str) -> tuple[int, int]:
    workers, _, threads = text.strip().partition("x")
    return int(workers), int(threads)


def sources(ct: Path | None, pet: Path | None, scratch: Path) -> tuple[Path, Path, bool]:
    """(CT study, PET study, whether the CT is the phantom fallback)."""
    from producer.phantoms import write_phantoms

    ct = ct or SHARED_IMGS / "3DBox_CT_tsup.npz"
    phantoms = None
    if not ct.is_file() or pet is None:
        phantoms = {p.stem: p for p in write_phantoms(scratch / "phantoms", with_gts=False)}
    fallback = not ct.is_file()
    if fallback:
        ct = phantoms["3DBox_CT_phantom"]
    return ct, pet or phantoms["3DBox_PET_phantom"], fallback


@contextmanager
def fleet(broker: str, namespace: str, workers: int, threads: int, env: dict[str, str]):
    """fleet.sh with these workers; each pinned to its own cores when they fit."""
    pin = workers * threads <= available_cores()
    saved = {k: os.environ.get(k) for k in (*env, "FLEET_PIN")}
    os.environ.update(env)
    os.environ["FLEET_PIN"] = "1" if pin else "0"
    try:
        with local_fleet(broker, namespace, workers, threads):
            yield pin
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_once(settings: FleetSettings, source: Path, folder: Path, salt: int, split: bool) -> tuple[float, dict]:
    folder.mkdir(parents=True)
    _variant(source, folder / source.name, salt, 0)
    started = time.perf_counter()
    batch = api.submit(folder, out_dir=folder / "out", force=True, split=split, settings=settings, timeout=7200)
    wall = time.perf_counter() - started
    (outcome,) = batch.outcomes
    if not outcome.ok:
        raise RuntimeError(f"{source.name}: {outcome.error}")
    return wall, outcome.metrics.get("extra", {}).get("split", {})


def measure(
    workloads: dict[str, tuple[Path, list[str]]], reps: int, env: dict[str, str], scratch: Path
) -> list[Result]:
    broker, client = claim_db()
    namespace = f"fanout{uuid.uuid4().hex[:6]}"
    settings = FleetSettings(broker_url=broker, namespace=namespace)
    results = {(w, c): Result(w, c) for w, (_, configs) in workloads.items() for c in configs}
    salt = 0
    try:
        configs = sorted({c for _, cs in workloads.values() for c in cs}, key=parse_config)
        for config in configs:  # one fleet per configuration; repetitions of every workload inside it
            workers, threads = parse_config(config)
            with fleet(broker, namespace, workers, threads, env) as pinned:
                for rep in range(reps):
                    for workload, (source, wanted) in workloads.items():
                        if config not in wanted:
                            continue
                        salt += 1
                        load = os.getloadavg()[0]
                        wall, split = run_once(settings, source, scratch / f"{workload}-{salt}", salt, workers > 1)
                        result = results[(workload, config)]
                        result.walls.append(wall)
                        result.loads.append(load)
                        result.split.append(split)
                        print(
                            f"  {workload} {config}{' pinned' if pinned else ''} rep {rep + 1}: {wall:7.2f} s "
                            f"({split.get('mode', '-')})",
                            flush=True,
                        )
    finally:
        client.flushdb()
    return list(results.values())


def describe_split(result: Result) -> str:
    last = result.split[-1] if result.split else {}
    if last.get("mode") == "slices":
        coordinator = last.get("coordinator", {})
        return (
            f"slices: {len(last.get('parts', []))} parts; coordinator encoded {coordinator.get('encoded')}, "
            f"fetched {coordinator.get('fetched')}, waited {coordinator.get('waits')}x"
        )
    if last.get("mode") == "views":
        nodes = {p.get("node", "?").split("@")[0] for p in last.get("parts", [])}
        return f"views on {len(nodes)} worker(s)"
    return last.get("reason", "not split")


def render(results: list[Result]) -> str:
    by_key = {(r.workload, r.config): r for r in results if r.walls}
    rows = []
    for r in results:
        if not r.walls:
            continue
        base = by_key.get((r.workload, BASELINE[r.workload]))
        speedup = f"{base.median / r.median:.2f}x" if base else "-"
        workers, threads = parse_config(r.config)
        rows.append(
            [
                r.workload.upper(),
                f"{workers} worker(s) x {threads} thread(s)",
                len(r.walls),
                f"{r.median:.2f}",
                speedup,
                f"{statistics.median(r.loads):.2f}",
                describe_split(r),
            ]
        )
    lines = [
        md_table(
            ["study", "configuration", "runs", "median wall s", "speed-up vs 1x1", "load at start", "split (last run)"],
            rows,
        ),
        "",
    ]
    for (workload, ours, base), target in TARGETS.items():
        if (workload, ours) in by_key and (workload, base) in by_key:
            ratio = by_key[(workload, base)].median / by_key[(workload, ours)].median
            verdict = "meets" if ratio >= target else "misses"
            lines.append(
                f"- {workload.upper()}: {ours} is {ratio:.2f}x faster than {base} ({verdict} the >= {target}x target)."
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ct", type=Path, default=None, help="the 3D CT study (default: 3DBox_CT_tsup)")
    parser.add_argument("--pet", type=Path, default=None, help="the PET study (default: the PET phantom)")
    parser.add_argument("--ct-configs", default="2x1,1x1,1x2", help="WORKERSxTHREADS, comma-separated ('' skips)")
    parser.add_argument("--pet-configs", default="3x1,1x1", help="WORKERSxTHREADS, comma-separated ('' skips)")
    parser.add_argument(
        "--min-slices",
        type=int,
        default=None,
        help="LITEMEDSAM_SPLIT_MIN_SLICES for the workers (and part size min-slices // 2), e.g. to "
        "split a small study in a smoke run",
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as tmp:
        scratch = Path(tmp)
        ct, pet, fallback = sources(args.ct, args.pet, scratch)
        low = args.min_slices or (8 if fallback else None)
        env = (
            {"LITEMEDSAM_SPLIT_MIN_SLICES": str(low), "LITEMEDSAM_SPLIT_PART_SLICES": str(max(1, low // 2))}
            if low
            else {}
        )
        workloads = {
            name: (path, [c for c in configs.split(",") if c.strip()])
            for name, path, configs in (("ct", ct, args.ct_configs), ("pet", pet, args.pet_configs))
        }
        workloads = {k: v for k, v in workloads.items() if v[1]}
        results = measure(workloads, args.reps, env, scratch)
    info["uptime_end"] = machine_info()["uptime"]
    report = render(results)
    header = (
        f"`ops/bench/fanout_bench.py --reps {args.reps} --ct-configs {args.ct_configs} --pet-configs "
        f"{args.pet_configs}`; CT: {ct.name}{' (phantom fallback, split threshold lowered)' if fallback else ''}"
        f", PET: {pet.name}{f'; LITEMEDSAM_SPLIT_MIN_SLICES={low}' if low else ''}. Split runs submit "
        "with the split on, baselines with `--split off`."
    )
    block = "\n".join([f"### {info['date']}", "", *machine_lines(info), f"- {header}", "", report])
    print(block)
    if not args.no_write:
        append_to_section(SECTION, block)


if __name__ == "__main__":
    main()
