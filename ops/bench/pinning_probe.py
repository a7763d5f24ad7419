"""CPU pinning probe (issue 10, part 1; a benchmark, not a test): what OpenVINO's ENABLE_CPU_PINNING and an
explicit process affinity do to engine processes that run at the same time on one host.

    .venv/bin/python ops/bench/pinning_probe.py [--rounds 3] [--seconds 20] [--no-write]

Each configuration starts its processes together; each compiles the real LiteMedSAM encoder (f32, the engine's
compile settings) and runs it back to back for --seconds, then reports its encoder calls, its CPU time and the
core(s) its busiest thread ran on. Configurations (rounds interleave them, so each sees the same machine):
- `2 x 1 thread, OpenVINO pinning` (OpenVINO's default here: the bug of issue 10),
- `2 x 1 thread, no pinning` (the engine's default now: worker.cpu_affinity, no core list),
- `2 x 1 thread, own core each` (explicit affinity per process + OpenVINO pinning: `worker start --cpus all`),
- `1 x 2 threads, OpenVINO pinning`, `1 x 2 threads, no pinning`, `1 x 1 thread, no pinning`.
Prints a table of medians (CPU cores used per process, encoder calls per minute summed over the processes) and
appends a dated block under "## CPU pinning (issue 10)" in ops/bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "ops" / "bench"))

from common import append_to_section, machine_info, machine_lines  # noqa: E402

# name -> (processes, threads, OpenVINO pinning, explicit core per process)
CONFIGS = {
    "2 x 1 thread, OpenVINO pinning (old default)": (2, 1, True, False),
    "2 x 1 thread, no pinning (new default)": (2, 1, False, False),
    "2 x 1 thread, own core each (--cpus all)": (2, 1, True, True),
    "1 x 2 threads, OpenVINO pinning (old default)": (1, 2, True, False),
    "1 x 2 threads, no pinning (new default)": (1, 2, False, False),
    "1 x 1 thread, no pinning": (1, 1, False, False),
}
HEADING = "CPU pinning (issue 10)"


def child(threads: int, pinning: bool, core: int, seconds: float, start_at: float) -> dict:
    import openvino as ov

    from models.paths import default_models_dir
    from models.registry import load_registry

    if core >= 0:
        os.sched_setaffinity(0, {core})
    spec = load_registry(default_models_dir())["litemedsam"]
    config = {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads,
        "ENABLE_CPU_PINNING": pinning,
    }
    request = ov.Core().compile_model(str(spec.encoder_xml), "CPU", config).create_infer_request()
    image = np.random.default_rng(0).random((1, 3, spec.input_size, spec.input_size), dtype=np.float32)
    request.infer([image])
    while time.time() < start_at:
        time.sleep(0.01)
    started, cpu_started, calls = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - started < seconds:
        request.infer([image])
        calls += 1
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    per_core: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        per_core[int(fields[36])] = per_core.get(int(fields[36]), 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    busiest_core = max(per_core, key=per_core.get)
    return {"calls": calls, "wall": wall, "cpu": cpu, "last_core_of_busiest": busiest_core}


def run_config(name: str, seconds: float) -> dict:
    processes, threads, pinning, own_core = CONFIGS[name]
    cores = sorted(os.sched_getaffinity(0))
    start_at = time.time() + 15  # after every process compiled
    load = os.getloadavg()[0]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                "--threads",
                str(threads),
                "--pinning",
                str(int(pinning)),
                "--core",
                str(cores[i % len(cores)] if own_core else -1),
                "--seconds",
                str(seconds),
                "--start-at",
                str(start_at),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return {
        "config": name,
        "load": load,
        "processes": results,
        "cores_per_process": [r["cpu"] / r["wall"] for r in results],
        "calls_per_min": sum(60 * r["calls"] / r["wall"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--pinning", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--core", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.threads, bool(args.pinning), args.core, args.seconds, args.start_at)))
        return
    info = machine_info()
    runs = []
    for round_index in range(args.rounds):
        for name in CONFIGS:
            run = run_config(name, args.seconds)
            runs.append(run)
            print(
                f"  round {round_index + 1} {name}: cores per process "
                f"{', '.join(f'{c:.2f}' for c in run['cores_per_process'])}, {run['calls_per_min']:.1f} "
                f"encoder calls/min, load {run['load']:.2f}",
                flush=True,
            )
    info["uptime_end"] = machine_info()["uptime"]
    rows = [
        "| configuration | rounds | CPU cores used per process (median) | encoder calls/min, all processes "
        "(median) | per round | 1-min load at start |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in CONFIGS:
        picked = [r for r in runs if r["config"] == name]
        per_process = statistics.median(c for r in picked for c in r["cores_per_process"])
        rates = [r["calls_per_min"] for r in picked]
        loads = [r["load"] for r in picked]
        rows.append(
            f"| {name} | {len(picked)} | {per_process:.2f} | {statistics.median(rates):.1f} | "
            f"{', '.join(f'{v:.1f}' for v in rates)} | {', '.join(f'{load:.1f}' for load in loads)} |"
        )
    text = "\n".join(rows)
    print(text)
    if not args.no_write:
        (REPO / "ops" / "bench" / "results").mkdir(exist_ok=True)
        (REPO / "ops" / "bench" / "results" / "pinning_probe.json").write_text(json.dumps(runs, indent=1))
        block = "\n".join(
            [
                f"### {info['date']} — `ops/bench/pinning_probe.py --rounds {args.rounds} --seconds {args.seconds:g}`",
                "",
                *machine_lines(info),
                "",
                text,
            ]
        )
        append_to_section(HEADING, block)


if __name__ == "__main__":
    main()
