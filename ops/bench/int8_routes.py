"""An INT8 profile against f32 per route (modality x 2D/3D) on more held-out cases than `worker calibrate` uses.

    .venv/bin/python ops/bench/int8_routes.py --profile int8-ac --models-dir DIR [--cases-dir DIR]
        [--routes MR-3D,PET-2D,PET-3D] [--per-kind 6] [--depth 8] [--threads 2] [--json PATH]

Issue 26's question after the per-host gate failed on CT: would the gate pass for some routes if it decided per
route? The cases (worker.evaluation.derived.cases_outside): other 2D slices and 3D sub-volumes of the dev volumes
that hold none of the slices the profile was calibrated or chosen on (its manifest record's "tuned_on", read by
worker.int8_search.tuned_slices), minus any case the per-host gate already holds out (same name). f32 and the
profile run every case alternating, each with a fresh embedding cache, through worker.calibrate.calibrate (the
gate's own runner and arithmetic); nothing is written to the calibration record. Per route: cases, worst ΔDSC,
how many are outside +-0.5 points (two-sided), the sum-of-engine-seconds speed-up; then every case. Prints the
machine and `uptime` at start and end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import md_table  # noqa: E402


def route_of(case, routing) -> str:
    """The routing table's unit: modality x 2D/3D, with the strategy it runs."""
    modality = case.name.split("_")[1]
    return f"{modality}-{'3D' if case.is_3d else '2D'} ({routing.route(modality).strategy(case.is_3d)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--cases-dir", type=Path, default=None, help="default: the folder the profile was tuned on")
    parser.add_argument("--routes", default="", help="comma-separated MODALITY-2D/3D to run (default: all)")
    parser.add_argument("--per-kind", type=int, default=6, help="2D slices and 3D sub-volumes per dev volume")
    parser.add_argument("--depth", type=int, default=8, help="slices per 3D sub-volume")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the per-case rows here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(common.REPO))
    from models.quantize import read_manifest
    from worker.calibrate import calibrate
    from worker.calibration import GATE_DSC
    from worker.contract.routing import RoutingTable
    from worker.evaluation.derived import cases_outside
    from worker.int8_search import tuned_slices

    record = read_manifest(args.models_dir / "litemedsam").get("profiles", {}).get(args.profile, {}).get("tuned_on")
    if not isinstance(record, dict):
        parser.error(f"{args.profile} has no 'tuned_on' record in {args.models_dir} (not made by worker.int8_search)")
    folder = args.cases_dir or Path(record["folder"])
    avoid = tuned_slices(folder, record)
    routing = RoutingTable.load()
    wanted = {route for route in args.routes.split(",") if route}
    cases = [
        case
        for case in cases_outside(folder, avoid, args.per_kind, args.depth)
        if case.name not in set(record.get("held_out", ())) | set(record.get("cases", ()))
        and (not wanted or route_of(case, routing).split(" ")[0] in wanted)
    ]
    if not cases:
        parser.error(f"no case with ground truth left under {folder} outside what {args.profile} was tuned on")
    machine = common.machine_info()
    print(f"{machine['date']}; {machine['cpu']}; ISA {machine['isa']}", file=sys.stderr)
    print(f"uptime at start: {common.uptime_line()}", file=sys.stderr)
    print(f"avoided slices: { {k: sorted(v) for k, v in avoid.items()} }", file=sys.stderr)
    print(f"{len(cases)} case(s): {', '.join(c.name for c in cases)}", file=sys.stderr, flush=True)
    verdict = calibrate(
        args.models_dir,
        cases,
        [args.profile],
        args.threads,
        report=lambda line: print(line, file=sys.stderr, flush=True),
        evaluation_source=f"per-route cases outside what {args.profile} was tuned on",
    )
    rows = verdict["profiles"][args.profile]["cases"]
    per_case = [
        {
            "case": case.name,
            "route": route_of(case, routing),
            "shape": list(case.imgs.shape),
            "boxes": int(len(case.boxes)),
            "dsc_f32": verdict["cases"][case.name]["dsc_f32"],
            "delta": rows[case.name]["delta"],
            "seconds_f32": verdict["cases"][case.name]["seconds_f32"],
            "seconds": rows[case.name]["seconds"],
        }
        for case in cases
    ]
    summary = []
    for route in sorted({row["route"] for row in per_case}):
        mine = [row for row in per_case if row["route"] == route]
        worst = max((row["delta"] for row in mine), key=abs)
        outside = sum(abs(row["delta"]) > GATE_DSC for row in mine)
        speed = sum(row["seconds_f32"] for row in mine) / max(sum(row["seconds"] for row in mine), 1e-9)
        verdict_text = "PASS" if outside == 0 else f"FAIL ({outside})"
        summary.append([route, str(len(mine)), f"{worst * 100:+.2f}", verdict_text, f"{speed:.2f}x"])
    print(md_table(["route", "cases", "worst ΔDSC pts", f"gate ±{GATE_DSC * 100:.1f}", "engine speed-up"], summary))
    print()
    print(
        md_table(
            ["case", "route", "shape", "boxes", "f32 DSC", "ΔDSC pts", "f32 engine s", f"{args.profile} engine s"],
            [
                [
                    row["case"],
                    row["route"],
                    "x".join(map(str, row["shape"])),
                    str(row["boxes"]),
                    f"{row['dsc_f32']:.4f}",
                    f"{row['delta'] * 100:+.2f}",
                    f"{row['seconds_f32']:.1f}",
                    f"{row['seconds']:.1f}",
                ]
                for row in per_case
            ],
        )
    )
    print(f"\nuptime at end: {common.uptime_line()}; calibrate's load average at the end: {verdict['load_average']}")
    if args.json:
        args.json.write_text(json.dumps({"profile": args.profile, "cases": per_case}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
