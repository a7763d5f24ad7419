#!/usr/bin/env python3
"""What the hospital gateway adds, against a real Orthanc (DICOMweb, HTTP auth) on this machine.

1. A 20-slice 512x512 CT series (RLE, built with pydicom), one box over 20 slices: the time from POST /v1/jobs to the
   SEG stored in the PACS (the job's finished_at - created_at, polled), against `producer submit` from a folder on
   the same series (the whole process, and its engine seconds) in the same run. Runs alternate; each repetition
   uses a new series (another noise seed) so no stored result is reused. Target: gateway <= submit x 1.1 + 1 s.
2. 50 small 2D jobs (one 128x128 CT slice each, distinct content) posted at once: jobs per minute and p50/p95
   latency (POST to stored SEG).

The gateway runs embedded (no broker) with the same --threads as the folder run. Prints tables; with --record,
writes the "Gateway (issue 16)" section of ops/bench/RESULTS.md.

    .venv/bin/python ops/bench/gateway_bench.py --repeats 3 --small 50 --threads 2 --record
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, loadavg, machine_info, machine_lines, md_table, replace_section, uptime_line  # noqa: E402

from orthanc_support import GatewayProcess, Orthanc, make_series  # noqa: E402

TOKEN = "gateway-bench-token-0123456789abcdef"
BIG_PROMPTS = {"modality": "CT", "boxes": [{"label": "organ", "voxel": [180, 190, 0, 330, 340, 19]}]}
SMALL_PROMPTS = {"boxes": [{"label": "organ", "voxel": [40, 44, 84, 90]}]}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def folder_run(series_dir: Path, out: Path, threads: int) -> tuple[float, float]:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "producer.cli", "submit", str(series_dir), "--out", str(out), "--threads", str(threads)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - started
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return wall, record["metrics"]["times"]["total"]


def body(pacs: Orthanc, spec, prompts) -> dict:
    return {
        "source": {"dicomweb": pacs.dicomweb, "study": spec.study_uid, "series": spec.series_uid},
        "prompts": prompts,
        "store": "source",
    }


def gateway_run(gateway: GatewayProcess, pacs: Orthanc, spec, prompts) -> dict:
    job = gateway.wait(gateway.post(body(pacs, spec, prompts))["id"], timeout=1800)
    if job["state"] != "ok":
        raise RuntimeError(f"gateway job failed: {job['error']}")
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    info = machine_info()
    loads = [loadavg()]
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as scratch:
        root = Path(scratch)
        pacs = Orthanc(root / "orthanc")
        pacs.start()
        gateway = GatewayProcess(
            root / "gateway",
            TOKEN,
            {pacs.dicomweb: {"username": pacs.user, "password": pacs.password}},
            "--threads",
            str(args.threads),
        )
        try:
            gateway.wait_ready()
            big_rows = []
            for rep in range(args.repeats):
                series_dir = root / f"big{rep}"
                spec = make_series(series_dir, 20, 512, seed=100 + rep)
                pacs.upload(sorted(series_dir.iterdir()))
                (series_dir / "prompts.json").write_text(json.dumps(BIG_PROMPTS))
                loads.append(loadavg())
                wall, engine = folder_run(series_dir, root / f"out{rep}", args.threads)
                loads.append(loadavg())
                job = gateway_run(gateway, pacs, spec, BIG_PROMPTS)
                loads.append(loadavg())
                big_rows.append(
                    {
                        "submit_wall": wall,
                        "submit_engine": engine,
                        "gateway": job["finished_at"] - job["created_at"],
                        "timings": job["timings"],
                    }
                )
                print(
                    f"repetition {rep + 1}: submit {wall:.1f} s (engine {engine:.1f} s), gateway "
                    f"{big_rows[-1]['gateway']:.1f} s {job['timings']}",
                    flush=True,
                )

            small = []
            for k in range(args.small):
                folder = root / f"small{k}"
                small.append(make_series(folder, 1, 128, seed=1000 + k))
                pacs.upload(sorted(folder.iterdir()))
            loads.append(loadavg())
            started = time.time()
            with ThreadPoolExecutor(8) as pool:
                ids = list(pool.map(lambda s: gateway.post(body(pacs, s, SMALL_PROMPTS))["id"], small))
            jobs = [gateway.wait(job_id, timeout=3600) for job_id in ids]
            loads.append(loadavg())
        finally:
            gateway.stop()
            pacs.stop()
    failed = [j for j in jobs if j["state"] != "ok"]
    latencies = [j["finished_at"] - j["created_at"] for j in jobs if j["state"] == "ok"]
    span = max(j["finished_at"] for j in jobs) - started
    info["uptime_end"] = uptime_line()

    med = {key: statistics.median(r[key] for r in big_rows) for key in ("submit_wall", "submit_engine", "gateway")}
    stage = {
        key: statistics.median(r["timings"].get(key, 0.0) for r in big_rows)
        for key in ("fetch", "load", "segment", "write", "store")
    }
    budget = med["submit_wall"] * 1.1 + 1.0
    overhead = statistics.median(
        sum(r["timings"].get(k, 0.0) for k in ("fetch", "load", "write", "store")) for r in big_rows
    )
    table1 = md_table(
        ["what (20 x 512 x 512 CT, 1 box over 20 slices)", "median s", "runs"],
        [
            [
                "`producer submit` folder, whole process (start-up, model compile, engine, SEG)",
                f"{med['submit_wall']:.1f}",
                len(big_rows),
            ],
            ["  of which engine", f"{med['submit_engine']:.1f}", len(big_rows)],
            ["gateway: POST -> SEG stored in the PACS (service warm)", f"{med['gateway']:.1f}", len(big_rows)],
            [
                "  fetch (WADO-RS) / load / segment / write / store (STOW-RS)",
                " / ".join(f"{stage[k]:.2f}" for k in ("fetch", "load", "segment", "write", "store")),
                len(big_rows),
            ],
            ["gateway outside the engine (fetch + load + write + store)", f"{overhead:.2f}", len(big_rows)],
            [
                "engine per run: folder / gateway",
                " ; ".join(f"{r['submit_engine']:.1f} / {r['timings']['segment']:.1f}" for r in big_rows),
                len(big_rows),
            ],
            ["target: submit x 1.1 + 1 s", f"{budget:.1f}", ""],
        ],
    )
    table2 = md_table(
        ["50 small 2D jobs posted at once (128 x 128 CT slice)", "value"],
        [
            ["jobs ok / failed", f"{len(latencies)} / {len(failed)}"],
            ["jobs per minute", f"{len(jobs) / span * 60:.1f}"],
            [
                "latency p50 / p95 (s, POST -> SEG stored)",
                f"{percentile(latencies, 0.5):.2f} / {percentile(latencies, 0.95):.2f}",
            ],
        ],
    )
    verdict = "within" if med["gateway"] <= budget else "NOT within"
    print(table1, table2, f"gateway {verdict} the target", sep="\n\n")
    if args.record:
        lines = machine_lines(info, loads)
        replace_section(
            "Gateway (issue 16)",
            "\n".join(
                [
                    f"Command: `ops/bench/gateway_bench.py --repeats {args.repeats} --small {args.small} --threads "
                    f"{args.threads} --record`; Orthanc 1.10 (Debian) with DICOMweb and HTTP auth on loopback; "
                    "the gateway embedded (no broker), the folder run and the gateway at the same thread count; "
                    "runs alternate.",
                    *lines,
                    "",
                    table1,
                    "",
                    table2,
                    "",
                    f"- The gateway is {verdict} the target (submit x 1.1 + 1 s) in this run. It skips the process "
                    "start-up and model compile the folder run pays each time and adds the WADO-RS fetch, the SEG "
                    f"and NIfTI writing and the STOW-RS store ({overhead:.2f} s median outside the engine); the rest "
                    "is the engine's own time in each process (row 'engine per run'), which decides the verdict at "
                    "this load.",
                ]
            ),
        )


if __name__ == "__main__":
    main()
