"""Refinement candidates under the CVPR 2025 interactive protocol (issue 23 part 3): per candidate, mean DSC per step,
DSC_AUC, NSD_AUC, final DSC/NSD and seconds per click step, on cases derived from the dev cases (where the default is
chosen) or on the dev cases themselves (where it is reported).

    .venv/bin/python ops/bench/clicks_bench.py --set derived [--candidates none,crude,guarded] [--threads 1]
    .venv/bin/python ops/bench/clicks_bench.py --set dev --candidates none,guarded

The box step runs once per case and is shared by the candidates (the engine's embedding cache serves their
re-decodes). Writes ops/bench/results/clicks_<set>.json and prints a table; RESULTS.md is written by hand from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.bench.common import SHARED_CASES, machine_info, uptime_line  # noqa: E402
from producer.derived import derive_cases  # noqa: E402
from producer.interactive import InteractiveCase, box_step, load_cases, run_protocol  # noqa: E402
from worker.engine.engine import Engine, EngineSettings  # noqa: E402
from worker.engine.refine import CANDIDATES  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def cases_of(root: Path, which: str, only: list[str] | None) -> list[InteractiveCase]:
    if which == "dev":
        cases = load_cases(root / "imgs", root / "gts")
    else:
        cases = [
            InteractiveCase(c.name, c.imgs, c.gts, None if c.spacing is None else tuple(float(v) for v in c.spacing))
            for c in derive_cases(root)
        ]
    return [c for c in cases if not only or any(token in c.name for token in only)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("derived", "dev"), default="derived")
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--only", default="", help="comma-separated substrings of case names")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", type=Path, default=SHARED_CASES, help="dev cases (imgs/, gts/)")
    parser.add_argument("--dims", choices=("2", "3", "both"), default="both", help="2D cases, 3D cases or both")
    parser.add_argument("--tag", default="", help="suffix of the results file (runs split across processes)")
    parser.add_argument("--render", nargs="+", type=Path, help="print the tables of results files and stop")
    args = parser.parse_args()
    if args.render:
        render(args.render)
        return
    names = args.candidates.split(",")
    cases = cases_of(args.cases, args.set, [t for t in args.only.split(",") if t])
    if args.dims != "both":
        cases = [c for c in cases if c.gts.ndim == int(args.dims)]
    engine = Engine(EngineSettings(threads=args.threads))
    started_at, load_start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), uptime_line()
    out = RESULTS / f"clicks_{args.set}{'_' + args.tag if args.tag else ''}.json"
    record: dict = {"date": started_at, "machine": machine_info(), "uptime_start": load_start, "cases": {}}
    for case in cases:
        first = box_step(engine, case)
        record["cases"][case.name] = {}
        for name in names:
            score = run_protocol(engine, case, CANDIDATES[name], first=first)
            record["cases"][case.name][name] = {
                "dsc": score.dsc,
                "nsd": score.nsd,
                "seconds": score.seconds,
                "dsc_auc": score.dsc_auc,
                "nsd_auc": score.nsd_auc,
                "classes": score.classes,
            }
            print(
                f"{case.name:34s} {name:18s} DSC " + " ".join(f"{v:.3f}" for v in score.dsc),
                f"AUC {score.dsc_auc:.3f} NSD_AUC {score.nsd_auc:.3f}",
                "s/click " + f"{statistics.median(score.seconds[1:]):.2f}",
                flush=True,
            )
        record["uptime_end"] = uptime_line()
        out.write_text(json.dumps(record, indent=1))
    print_table(record, names)


def render(paths: list[Path]) -> None:
    """Markdown: the candidates' mean curves over all files' cases, then per file; per case, each candidate's curve."""
    records = [json.loads(path.read_text()) for path in paths]
    pooled = {"machine": records[0]["machine"], "uptime_start": records[0]["uptime_start"], "cases": {}}
    pooled["uptime_end"] = records[-1].get("uptime_end")
    for record in records:
        pooled["cases"].update(record["cases"])
    names = list(dict.fromkeys(name for per in pooled["cases"].values() for name in per))
    print("\n#### all files")
    print_table(pooled, names)
    for path in paths:
        record = json.loads(path.read_text())
        names = list(dict.fromkeys(name for per in record["cases"].values() for name in per))
        print(f"\n#### {path.name}")
        print_table(record, names)
        print("\n| case | candidate | DSC box, clicks 1..5 | DSC_AUC | NSD_AUC |\n| --- | --- | --- | --- | --- |")
        for case, per in record["cases"].items():
            for name, run in per.items():
                curve = " ".join(f"{v:.3f}" for v in run["dsc"])
                print(f"| {case} | {name} | {curve} | {run['dsc_auc']:.3f} | {run['nsd_auc']:.3f} |")


def print_table(record: dict, names: list[str]) -> None:
    cases = record["cases"]
    print(f"\n{len(cases)} cases; {record['machine']}; {record['uptime_start']} .. {record.get('uptime_end')}")
    print("| candidate | DSC box | DSC click 1..5 | DSC_AUC | NSD_AUC | final DSC | final NSD | median s/click |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        runs = [per[name] for per in cases.values() if name in per]
        if not runs:
            continue
        dsc = np.mean([r["dsc"] for r in runs], axis=0)
        print(
            f"| {name} | {dsc[0]:.4f} | " + " ".join(f"{v:.4f}" for v in dsc[1:]),
            f"| {np.mean([r['dsc_auc'] for r in runs]):.4f} | {np.mean([r['nsd_auc'] for r in runs]):.4f}",
            f"| {np.mean([r['dsc'][-1] for r in runs]):.4f} | {np.mean([r['nsd'][-1] for r in runs]):.4f}",
            f"| {statistics.median(s for r in runs for s in r['seconds'][1:]):.2f} |",
        )


if __name__ == "__main__":
    main()
