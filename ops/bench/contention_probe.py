"""Contention probe (issue 10; a benchmark, not a test): which engine stage slows down when two 1-thread engine
processes run side by side on one host, for small 2D studies and for 3D sub-volumes.

    .venv/bin/python ops/bench/contention_probe.py [--rounds 3] [--seconds 20] [--workloads 2d,3d] [--no-write]

Each process builds the engine as a fleet worker does (f32, 1 thread, no pinning), segments one warm-up study,
then at a common start time segments studies back to back for --seconds: every study a new variant (one pixel
changed, so the embedding cache never hits). It reports the studies done and, summed over them, the engine's own
stage times (preprocess, encode, decode, postprocess, total), plus its CPU time, minor page faults and
involuntary context switches. Configurations alternate per round (`1 alone`, `2 together`) so both see the same
machine. The table gives per-study medians of each stage alone and together and their ratio: a stage whose ratio
is well above 1 is where two processes get in each other's way.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "ops" / "bench"))

from common import append_to_section, machine_info, machine_lines, md_table  # noqa: E402

HEADING = "CPU pinning (issue 10)"
STAGES = ("preprocess", "encode", "decode", "postprocess", "total")
SHARED_IMGS = REPO.parent / "shared" / "data" / "cases" / "imgs"


def workload_sources(workload: str) -> list[Path]:
    """The studies each process cycles through: the dev 2D CT slices (512 x 512); `3d`: 12 slices of
    3DBox_CT_tssm (101 x 122, the fleet benchmark's 3D inputs); `3d-512`: 12 slices of 3DBox_CT_tsup (512 x 512).
    The project's phantoms where the dev cases are absent."""
    if workload == "2d":
        found = [SHARED_IMGS / f"2DBox_CT_{n}.npz" for n in ("amos000475", "amos000690")]
    else:
        found = [SHARED_IMGS / ("3DBox_CT_tsup.npz" if workload == "3d-512" else "3DBox_CT_tssm.npz")]
    if all(p.is_file() for p in found):
        return found
    import tempfile

    from producer.phantoms import write_phantoms

    written = {p.stem: p for p in write_phantoms(Path(tempfile.mkdtemp(prefix="contention-ph-")), with_gts=False)}
    return [written["2DBox_CT_phantom" if workload == "2d" else "3DBox_CT_phantom"]]


def child(workload: str, seconds: float, start_at: float) -> dict:
    import dataclasses

    import numpy as np

    from producer.derived import boxes_in_window
    from producer.formats.npz import load_npz_study
    from worker.engine.engine import Engine, EngineSettings

    engine = Engine(EngineSettings(threads=1))
    studies = [load_npz_study(p) for p in workload_sources(workload)]
    if workload.startswith("3d"):  # 12 slices from the first box's start, with the boxes that reach them
        cut = []
        for study in studies:
            start = int(study.boxes[:, 2].min())
            stop = min(start + 12, study.image.shape[0])
            image = np.ascontiguousarray(study.image[start:stop])
            cut.append(dataclasses.replace(study, image=image, boxes=boxes_in_window(study.boxes, start, stop)))
        studies = cut
    counter = [os.getpid() * 1000]

    def variant(index: int):
        study = studies[index % len(studies)]
        image = study.image.copy()
        counter[0] += 1
        image.flat[0] = counter[0] % 251  # new content: no embedding cache hit
        return dataclasses.replace(study, image=image)

    engine.segment(variant(0))  # warm-up: compile, first-call allocations
    time.sleep(max(0.0, start_at - time.time()))
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    sums = dict.fromkeys(STAGES, 0.0)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        times = engine.segment(variant(done)).metrics.times
        for stage in STAGES:
            sums[stage] += getattr(times, stage)
        done += 1
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "studies": done,
        "wall": wall,
        "stages": sums,
        "cpu": (usage.ru_utime + usage.ru_stime) - (usage0.ru_utime + usage0.ru_stime),
        "sys": usage.ru_stime - usage0.ru_stime,
        "minflt": usage.ru_minflt - usage0.ru_minflt,
        "nivcsw": usage.ru_nivcsw - usage0.ru_nivcsw,
    }


def run_config(workload: str, processes: int, seconds: float) -> list[dict]:
    start_at = time.time() + 25.0  # after every process has compiled and warmed up
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                "--workloads",
                workload,
                "--seconds",
                str(seconds),
                "--start-at",
                str(start_at),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    outs = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=seconds + 600)
        if proc.returncode != 0:
            raise SystemExit(f"a probe process failed (exit {proc.returncode})")
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outs


def per_study(outs: list[dict]) -> dict[str, float]:
    """Stage seconds per study over all processes of one run, and the study rate summed over them."""
    studies = sum(o["studies"] for o in outs)
    row = {stage: sum(o["stages"][stage] for o in outs) / studies for stage in STAGES}
    row["cpu"] = sum(o["cpu"] for o in outs) / studies
    row["sys"] = sum(o["sys"] for o in outs) / studies
    row["minflt"] = sum(o["minflt"] for o in outs) / studies
    row["nivcsw"] = sum(o["nivcsw"] for o in outs) / studies
    row["rate"] = sum(o["studies"] / o["wall"] for o in outs) * 60
    return row


def render(results: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    keys = (*STAGES, "cpu", "sys", "minflt", "nivcsw", "rate")
    rows = []
    for workload, configs in results.items():
        alone = {k: statistics.median(r[k] for r in configs["alone"]) for k in keys}
        together = {k: statistics.median(r[k] for r in configs["together"]) for k in keys}
        for key in keys:
            unit = {"minflt": "faults", "nivcsw": "switches", "rate": "studies/min"}.get(key, "s")
            rows.append(
                [
                    workload,
                    key if key == "rate" else f"{key} per study",
                    f"{alone[key]:.3f}" if unit == "s" else f"{alone[key]:.1f}",
                    f"{together[key]:.3f}" if unit == "s" else f"{together[key]:.1f}",
                    f"{together[key] / alone[key]:.2f}x" if alone[key] else "–",
                ]
            )
    return md_table(["workload", "measure", "1 process alone", "2 processes together", "together / alone"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workloads", default="2d,3d")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.workloads, args.seconds, args.start_at)))
        return
    info = machine_info()
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    results: dict[str, dict[str, list]] = {w: {"alone": [], "together": []} for w in workloads}
    loads = []
    for round_ in range(args.rounds):
        for workload in workloads:
            order = ("alone", "together") if round_ % 2 == 0 else ("together", "alone")
            for config in order:
                load = os.getloadavg()[0]
                outs = run_config(workload, 1 if config == "alone" else 2, args.seconds)
                loads.append((load, 0, 0))
                results[workload][config].append(per_study(outs))
                row = results[workload][config][-1]
                print(
                    f"round {round_ + 1} {workload} {config:8s}: {row['rate']:.1f} studies/min, "
                    f"engine {row['total']:.3f} s per study, cpu {row['cpu']:.3f} s",
                    flush=True,
                )
    info["uptime_end"] = machine_info()["uptime"]
    table = render(results)
    print(table)
    if args.no_write:
        return
    block = "\n".join(
        [
            f"### {info['date']} — `ops/bench/contention_probe.py --rounds {args.rounds} --seconds {args.seconds:g} "
            f"--workloads {args.workloads}`",
            "",
            *machine_lines(info, loads),
            "",
            table,
        ]
    )
    append_to_section(HEADING, block)


if __name__ == "__main__":
    main()
