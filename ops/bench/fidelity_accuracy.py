"""2D fidelity to the official baseline (issue 10) and the overlap rule (issue 13): DSC/NSD per case, f32.

    .venv/bin/python ops/bench/fidelity_accuracy.py [--threads 2] [--skip-2d | --skip-3d] [--cases NAME ...]
        [--json PATH]
                                                    [--masks DIR] [--record] [--from-json PATH ...]

Cases: every case with ground truth in ../shared/data/cases (else the project's phantoms) and every case
producer/derived.py derives from them (other slices as 2D cases, sub-volumes and crops as 3D cases, crops of the 2D
cases), none of which any setting was tuned on. Per case, one engine process runs each variant; the variants share
its embedding cache (only the routing table changes between them, and the cache key holds the interpolation), so
each slice is encoded once per interpolation:
  2D: `linear+fractional later` (the 2D path before issue 10), `area+truncate later` (the baseline's own 2D
      pre-processing and painting order: parity), `area+truncate smaller` (the new default);
  3D: `later` and `smaller` (3D keeps linear + fractional boxes).
Prints a table, writes ops/bench/results/fidelity_accuracy.json (or --json) after every case (so a partial run
still counts) and with --record the section "2D fidelity and the overlap rule (issues 10 and 13)" of
ops/bench/RESULTS.md. --from-json renders earlier runs' JSON files (e.g. a 2D and a 3D run made side by side).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.REPO))

SECTION = "2D fidelity and the overlap rule (issues 10 and 13)"
OUT_JSON = common.BENCH / "results" / "fidelity_accuracy.json"
VARIANTS_2D = {
    "linear+fractional later": {"interpolation_2d": "linear", "box_rounding_2d": "fractional", "overlap": "later"},
    "area+truncate later": {"interpolation_2d": "area", "box_rounding_2d": "truncate", "overlap": "later"},
    "area+truncate smaller": {"interpolation_2d": "area", "box_rounding_2d": "truncate", "overlap": "smaller"},
}
VARIANTS_3D = {"later": {"overlap": "later"}, "smaller": {"overlap": "smaller"}}


def load_cases(cases: common.CaseSet):
    """(name, Study, gts, spacing, source) for the cases with ground truth, then their derived cases."""
    from producer.derived import derive_cases
    from producer.formats.npz import load_npz_study

    found = []
    for name in cases.names():
        gt = cases.gt(name)
        if gt is None:
            continue
        with np.load(gt, allow_pickle=False) as data:
            gts, spacing = data["gts"], (tuple(data["spacing"]) if "spacing" in data.files else None)
        study = load_npz_study(cases.image(name))
        found.append((name, study, gts, spacing if study.is_3d else None, "dev"))
    from worker.contract.study import Study

    for case in derive_cases(cases.root):
        modality = case.name.split("_")[1]
        spacing = tuple(case.spacing) if case.spacing is not None else None
        study = Study(case.name, modality, case.imgs, case.boxes, spacing)
        found.append((case.name, study, case.gts, spacing if case.is_3d else None, "derived"))
    # cheap first: 2D, then 3D by voxels x boxes, so a run cut short still has the most cases
    return sorted(found, key=lambda c: (c[1].is_3d, c[1].image.size * len(c[1].boxes) if c[1].is_3d else 0))


def run(args) -> dict:
    from producer.evaluate import score_case
    from worker.contract.identity import routing_data
    from worker.contract.routing import RoutingTable
    from worker.engine.engine import Engine, EngineSettings

    cases = common.case_set()
    base = routing_data(None)
    engine = Engine(EngineSettings(threads=args.threads))
    info = common.machine_info()
    out = {"machine": info, "threads": args.threads, "synthetic": cases.synthetic, "cases": []}
    loads = []
    for name, study, gts, spacing, source in load_cases(cases):
        skipped = (study.is_3d and args.skip_3d) or (not study.is_3d and args.skip_2d)
        if skipped or (args.cases and name not in args.cases):
            continue
        variants = VARIANTS_3D if study.is_3d else VARIANTS_2D
        row = {
            "case": name,
            "source": source,
            "shape": list(study.image.shape),
            "boxes": int(len(study.boxes)),
            "dim": "3D" if study.is_3d else "2D",
            "variants": {},
        }
        for label, change in variants.items():
            engine.routing = RoutingTable({**base["default"], **change}, base["modality"])
            loads.append(common.loadavg())
            started = time.perf_counter()
            result = engine.segment(study)
            seconds = time.perf_counter() - started
            dsc, nsd = score_case(gts, result.labels, spacing)
            row["variants"][label] = {
                "dsc": dsc,
                "nsd": nsd,
                "seconds": seconds,
                "strategy": result.metrics.provenance.strategy,
            }
            if args.masks:
                args.masks.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(args.masks / f"{name}.{label.replace(' ', '_')}.npz", segs=result.labels)
        out["cases"].append(row)
        print(
            f"{name:40s} " + "  ".join(f"{k}: {v['dsc']:.4f}" for k, v in row["variants"].items()),
            file=sys.stderr,
            flush=True,
        )
        out["loads"] = loads
        args.json.write_text(json.dumps(out, indent=1))
    info["uptime_end"] = common.uptime_line()
    args.json.write_text(json.dumps(out, indent=1))
    return out


def merged(paths: list[Path]) -> dict:
    """Several runs' JSON as one: the first run's machine facts, every run's cases and load samples."""
    runs = [json.loads(Path(path).read_text()) for path in paths]
    out = dict(runs[0])
    cases = {}
    for case in (case for run in runs for case in run["cases"]):
        cases.setdefault(case["case"], case)  # a case measured in two runs: the first run's
    out["cases"] = list(cases.values())
    out["loads"] = [load for run in runs for load in run.get("loads", [])]
    if len(runs) > 1:
        out["machine"] = {**runs[0]["machine"], "uptime_end": runs[-1]["machine"].get("uptime_end", "")}
    return out


def _mean(values):
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def render(out: dict) -> str:
    baseline = common.baseline_table()
    lines = common.machine_lines(out["machine"], [tuple(x) for x in out.get("loads", [])])
    lines.append(
        f"- `ops/bench/fidelity_accuracy.py --threads {out['threads']}`; f32; DSC/NSD by "
        "producer.evaluate.score_case (NSD 2 mm / 2 px). Derived cases: producer/derived.py."
    )
    lines.append("")
    rows2d = [r for r in out["cases"] if r["dim"] == "2D"]
    rows3d = [r for r in out["cases"] if r["dim"] == "3D"]
    if rows2d:
        lines.append("### 2D: the baseline's pre-processing against the previous path, and the overlap rule")
        lines.append("")
        header = (
            ["case", "source", "shape", "boxes", "DSC baseline (BASELINE.md)"]
            + [f"DSC {k}" for k in VARIANTS_2D]
            + [f"NSD {k}" for k in VARIANTS_2D]
        )
        table = []
        for r in rows2d:
            base = baseline.get(r["case"], {}).get("dsc")
            table.append(
                [r["case"], r["source"], "x".join(map(str, r["shape"])), r["boxes"], common.fmt(base, ".4f")]
                + [common.fmt(r["variants"][k]["dsc"], ".4f") for k in VARIANTS_2D]
                + [common.fmt(r["variants"][k]["nsd"], ".4f") for k in VARIANTS_2D]
            )
        lines.append(common.md_table(header, table))
        lines.append("")
        for k in VARIANTS_2D:
            lines.append(
                f"- mean DSC, {k}: {_mean(r['variants'][k]['dsc'] for r in rows2d):.4f} over {len(rows2d)} 2D cases"
            )
        lines.append("")
    if rows3d:
        lines.append("### 3D: the overlap rule (linear + fractional boxes, unchanged)")
        lines.append("")
        header = [
            "case",
            "source",
            "shape",
            "boxes",
            "strategy",
            "DSC baseline (BASELINE.md)",
            "DSC later",
            "DSC smaller",
            "ΔDSC",
            "NSD later",
            "NSD smaller",
            "s later",
            "s smaller",
        ]
        table = []
        for r in rows3d:
            later, smaller = r["variants"]["later"], r["variants"]["smaller"]
            base = baseline.get(r["case"], {}).get("dsc")
            table.append(
                [
                    r["case"],
                    r["source"],
                    "x".join(map(str, r["shape"])),
                    r["boxes"],
                    later["strategy"],
                    common.fmt(base, ".4f"),
                    f"{later['dsc']:.4f}",
                    f"{smaller['dsc']:.4f}",
                    f"{smaller['dsc'] - later['dsc']:+.4f}",
                    f"{later['nsd']:.4f}",
                    f"{smaller['nsd']:.4f}",
                    f"{later['seconds']:.1f}",
                    f"{smaller['seconds']:.1f}",
                ]
            )
        lines.append(common.md_table(header, table))
        lines.append("")
        later_3d = _mean(r["variants"]["later"]["dsc"] for r in rows3d)
        lines.append(
            f"- mean DSC over {len(rows3d)} 3D cases: later {later_3d:.4f}, "
            f"smaller {_mean(r['variants']['smaller']['dsc'] for r in rows3d):.4f}"
        )
        lines.append("- 's smaller' runs second with the slices' embeddings cached (decoder and post-processing only).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--skip-2d", action="store_true")
    group.add_argument("--skip-3d", action="store_true")
    parser.add_argument("--json", type=Path, default=OUT_JSON, help="where this run's JSON goes")
    parser.add_argument("--cases", nargs="+", default=None, help="only these cases (names, dev or derived)")
    parser.add_argument("--masks", type=Path, default=None, help="write each variant's labels here")
    parser.add_argument("--record", action="store_true", help="write the RESULTS.md section")
    parser.add_argument("--from-json", type=Path, nargs="+", default=None, help="render these runs' JSON, run nothing")
    args = parser.parse_args(argv)
    out = merged(args.from_json) if args.from_json else run(args)
    text = render(out)
    print(text)
    if args.record:
        common.replace_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
