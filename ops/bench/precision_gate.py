"""Accuracy gate of the precision profiles (issue 5): DSC per case and modality against f32, encoder speed-up.

    .venv/bin/python ops/bench/precision_gate.py [--profiles bf16,int8] [--reuse-f32] [--resume]
        [--ab-profiles LIST] [--ab-slices 3] [--ab-repeats 5] [--no-write]

1. Every benchmark case with ground truth (../shared/data/cases, else the phantoms) through the engine once per
   profile, each in a fresh process (ops/bench/engine_child.py); DSC/NSD with producer.evaluate.score_case.
   --reuse-f32 takes the f32 rows of ops/bench/results/engine_bench.json (f32 masks are deterministic).
2. Encoder per slice, all profiles side by side in one process (ops/bench/encoder_ab.py), per case and modality:
   median latency, speed-up over f32, and embedding fidelity (cosine, max relative error) against f32.
3. The gate: a profile is recommended only if its mean DSC over the cases is within 0.5 points (0.005) of f32,
   either way (|mean DSC - f32 mean DSC| <= 0.005: a profile that moves the cases by several points is not the
   same segmenter, even when the moves happen to add up to a gain), AND its encoder is faster than f32 (median
   speed-up over the cases > 1). The one-sided reading (not worse than f32 - 0.5) is reported beside it.
   Issue 5's INT8 target: >= 1.8x.

Writes ops/bench/results/precision_gate.json, ops/bench/precision_gate.png and the RESULTS.md section
"Precision profiles (issue 5)".

Superseded as a recommendation (issue 10): what a host may run faster than f32 is decided per host and per case by
`worker calibrate` (worker/calibrate.py: every derived case within +-0.5 points of f32, on the CPU that will run
it); `ops/bench/profile_ab.py --baseline` renders that gate table. This script stays the cross-profile DSC/NSD
and encoder A/B survey on the dev cases.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import fmt, md_table  # noqa: E402

sys.path.insert(0, str(common.REPO))

GATE_DSC = 0.005
INT8_TARGET = 1.8
JSON_OUT = common.BENCH / "results" / "precision_gate.json"
PARTIAL = common.BENCH / "results" / "precision_gate.partial.json"
PLOT_OUT = common.BENCH / "precision_gate.png"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def score(cases: common.CaseSet, name: str, segs: Path) -> tuple[float, float]:
    import numpy as np

    from producer.evaluate import score_case

    with np.load(cases.gt(name), allow_pickle=False) as gt:
        gts = gt["gts"]
        spacing = tuple(gt["spacing"]) if "spacing" in gt.files and gts.ndim == 3 else None
    with np.load(segs) as seg:
        return score_case(gts, seg["segs"], spacing)


def f32_from_engine_bench() -> dict:
    results = common.BENCH / "results"
    for path in (results / "engine_bench.json", results / "engine_bench.partial.json"):
        if path.is_file():
            rows = json.loads(path.read_text()).get("accuracy", {})
            return {
                n: {
                    "dsc": r["dsc"],
                    "nsd": r["nsd"],
                    "engine_s": r["engine_s"],
                    "wall_s": r["wall_s"],
                    "source": path.name,
                }
                for n, r in rows.items()
                if r.get("dsc") is not None
            }
    return {}


def run_profiles(cases: common.CaseSet, profiles: list[str], scratch: Path, data: dict, save, reuse_f32: bool) -> None:
    names = [n for n in cases.names() if cases.gt(n) is not None]
    data["dsc"].setdefault("f32", {})  # f32 first in the tables, run last (its rows may come from engine_bench)
    for profile in [p for p in profiles if p != "f32"] + ["f32"]:
        reused = f32_from_engine_bench() if reuse_f32 and profile == "f32" else {}
        rows = data["dsc"].setdefault(profile, {})
        for name in names:
            if name in rows:
                continue
            if profile == "f32" and name in reused:
                rows[name] = reused[name]
                continue
            log(f"[{profile}] {name}...")
            out = scratch / profile
            run = common.engine_child(cases.image(name), out, profile, 0)
            dsc, nsd = score(cases, name, out / f"{name}.npz")
            rows[name] = {
                "dsc": dsc,
                "nsd": nsd,
                "engine_s": run["engine_s"],
                "wall_s": run["wall_s"],
                "encode_s": run["times"]["encode"],
                "slices": run["counts"]["slices_encoded"],
                "load_s": run["load_s"],
                "peak_rss_mb": run["peak_rss_mb"],
                "load_before": run["load_before"],
            }
            log(f"[{profile}]   DSC {dsc:.4f}, engine {run['engine_s']:.1f} s")
            save()


def run_ab(cases: common.CaseSet, profiles: list[str], slices: int, repeats: int) -> dict:
    paths = ",".join(str(cases.image(n)) for n in cases.names())
    cmd = [
        str(common.RUNTIME_PY),
        str(common.BENCH / "encoder_ab.py"),
        "--profiles",
        ",".join(profiles),
        "--cases",
        paths,
        "--slices",
        str(slices),
        "--repeats",
        str(repeats),
    ]
    return common.run_child(cmd)


def modality_of(name: str) -> str:
    return name.split("_")[1]


def summarise(data: dict) -> dict:
    """Per profile: mean DSC/NSD over cases, per modality, encoder speed-up, the gate verdict."""
    dsc = data["dsc"]
    ab = data.get("ab", {}).get("cases", {})
    base = dsc.get("f32", {})
    names = sorted(base)
    out = {}
    for profile, rows in dsc.items():
        common_names = [n for n in names if n in rows]
        if not common_names:
            continue
        mean = statistics.mean(rows[n]["dsc"] for n in common_names)
        mean_f32 = statistics.mean(base[n]["dsc"] for n in common_names)
        speedups = [c["speedup"][profile] for c in ab.values() if profile in c["speedup"]]
        modalities = {}
        for n in common_names:
            modalities.setdefault(modality_of(n), []).append(n)
        per_mod = {}
        for mod, group in sorted(modalities.items()):
            sp = [c["speedup"][profile] for c in ab.values() if c["modality"] == mod and profile in c["speedup"]]
            per_mod[mod] = {
                "dsc": statistics.mean(rows[n]["dsc"] for n in group),
                "nsd": statistics.mean(rows[n]["nsd"] for n in group),
                "delta": statistics.mean(rows[n]["dsc"] - base[n]["dsc"] for n in group),
                "speedup": statistics.median(sp) if sp else None,
                "cases": len(group),
            }
        speedup = statistics.median(speedups) if speedups else None
        complete = len(common_names) == len(names)
        out[profile] = {
            "mean_dsc": mean,
            "mean_nsd": statistics.mean(rows[n]["nsd"] for n in common_names),
            "delta": mean - mean_f32,
            "speedup": speedup,
            "modalities": per_mod,
            "cases": len(common_names),
            "complete": complete,
            "cos_min": min((c["cos_min"][profile] for c in ab.values() if profile in c["cos_min"]), default=None),
            "max_case_delta": max((abs(rows[n]["dsc"] - base[n]["dsc"]) for n in common_names), default=0.0),
            "one_sided": (
                profile != "f32" and complete and mean - mean_f32 >= -GATE_DSC and speedup is not None and speedup > 1.0
            ),
            "recommended": (
                profile != "f32"
                and complete
                and abs(mean - mean_f32) <= GATE_DSC
                and speedup is not None
                and speedup > 1.0
            ),
        }
    return out


def section(data: dict) -> str:
    summary = summarise(data)
    ab = data.get("ab", {})
    lines = [
        f"Command: `{data['command']}`. Gate: mean DSC over the {len(data['dsc'].get('f32', {}))} cases with ground "
        f"truth within {GATE_DSC * 100:.1f} points of f32, either way, AND encoder faster than f32 (issue 5's INT8 "
        f"target: >= {INT8_TARGET}x per slice). Each (profile, case) ran in its own fresh process; f32 rows are the "
        "engine_bench accuracy runs (f32 masks are deterministic).",
        "",
        *common.machine_lines(data["machine"]),
        "",
        "### Verdict per profile",
        "",
    ]
    rows = []
    for profile, s in summary.items():
        note = data.get("notes", {}).get(profile, "")
        rows.append(
            [
                profile,
                fmt(s["mean_dsc"], ".4f"),
                fmt(s["delta"] * 100, "+.2f"),
                fmt(s["max_case_delta"] * 100, ".2f"),
                fmt(s["mean_nsd"], ".4f"),
                fmt(s["speedup"], ".2f") + "x" if s["speedup"] else "–",
                fmt(s["cos_min"], ".4f"),
                "**yes**" if s["recommended"] else ("–" if profile == "f32" else "no"),
                "–" if profile == "f32" else ("yes" if s["one_sided"] else "no"),
                note,
            ]
        )
    lines += [
        md_table(
            [
                "profile",
                "mean DSC",
                "ΔDSC vs f32 (points)",
                "largest |ΔDSC| of a case (points)",
                "mean NSD",
                "encoder speed-up (median)",
                "min cosine of embedding vs f32",
                "recommended (|Δmean| <= 0.5)",
                "one-sided reading (Δmean >= -0.5)",
                "what it is",
            ],
            rows,
        ),
        "",
    ]
    lines += ["### Per modality (paper's Table 4 shape: DSC / NSD per profile)", ""]
    mods = sorted({m for s in summary.values() for m in s["modalities"]})
    header = ["modality"] + [f"{p} DSC / NSD (ΔDSC pts, enc. speed-up)" for p in summary]
    rows = []
    for mod in mods:
        row = [mod]
        for profile, s in summary.items():
            m = s["modalities"].get(mod)
            if not m:
                row.append("–")
                continue
            extra = "" if profile == "f32" else f" ({m['delta'] * 100:+.2f}, {fmt(m['speedup'], '.2f')}x)"
            row.append(f"{m['dsc']:.4f} / {m['nsd']:.4f}{extra}")
        rows.append(row)
    lines += [md_table(header, rows), ""]
    lines += ["### Per case DSC", ""]
    names = sorted(data["dsc"].get("f32", {}))
    header = ["case"] + [f"{p} DSC" for p in data["dsc"]] + [f"{p} engine s" for p in data["dsc"]]
    rows = []
    for n in names:
        row = [n] + [fmt(data["dsc"][p].get(n, {}).get("dsc"), ".4f") for p in data["dsc"]]
        row += [fmt(data["dsc"][p].get(n, {}).get("engine_s"), ".1f") for p in data["dsc"]]
        rows.append(row)
    lines += [md_table(header, rows), ""]
    if ab.get("cases"):
        lines += ["### Encoder per slice, all profiles side by side in one process (ops/bench/encoder_ab.py)", ""]
        profiles = ab["profiles"]
        header = ["case", "modality"] + [f"{p} s (x f32, cos)" for p in profiles]
        rows = []
        for n, c in ab["cases"].items():
            rows.append(
                [n, c["modality"]]
                + [f"{c['median_s'][p]:.3f} ({c['speedup'][p]:.2f}x, {c['cos_min'][p]:.4f})" for p in profiles]
            )
        lines += [
            md_table(header, rows),
            "",
            (f"{data['ab_note']}. " if data.get("ab_note") else "")
            + f"Medians of {data.get('ab_repeats')} alternating repeats on {data.get('ab_slices')} real slices "
            "per case; cosine = worst slice's cosine similarity of the (1, 256, 64, 64) embedding against f32 "
            "on the same slice. Under a loaded machine the absolute seconds are inflated; the ratios were "
            "measured side by side.",
            "",
        ]
    lines += [f"![precision gate]({PLOT_OUT.name})"]
    return "\n".join(lines)


def plot(data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(data)
    profiles = [p for p in summary if p != "f32"]
    names = sorted(data["dsc"]["f32"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / max(len(profiles), 1)
    for i, p in enumerate(profiles):
        deltas = [
            (data["dsc"][p][n]["dsc"] - data["dsc"]["f32"][n]["dsc"]) * 100 if n in data["dsc"][p] else 0 for n in names
        ]
        left.bar([k + i * width for k in range(len(names))], deltas, width, label=p)
    left.axhline(-GATE_DSC * 100, color="red", linestyle="--", linewidth=0.8)
    left.axhline(GATE_DSC * 100, color="red", linestyle="--", linewidth=0.8)
    left.set_xticks(
        [k + 0.4 - width / 2 for k in range(len(names))], [n.replace("Box_", "\n") for n in names], fontsize=7
    )
    left.set_ylabel("ΔDSC vs f32 (points)")
    left.set_title("per-case DSC change (red: ±0.5 point gate on the mean)")
    left.legend(fontsize=7)
    sp = [summary[p]["speedup"] or 0 for p in profiles]
    cos = [summary[p]["cos_min"] or 0 for p in profiles]
    right.bar(profiles, sp, color=["#2ca02c" if summary[p]["recommended"] else "#d62728" for p in profiles])
    right.axhline(INT8_TARGET, color="grey", linestyle="--", linewidth=0.8)
    right.axhline(1.0, color="black", linewidth=0.8)
    for k, (s, c) in enumerate(zip(sp, cos)):
        right.text(k, s + 0.03, f"{s:.2f}x\ncos {c:.3f}", ha="center", fontsize=7)
    right.set_ylabel("encoder speed-up over f32 (median)")
    right.set_title("encoder per slice (green: passes the gate)")
    right.tick_params(axis="x", labelsize=7, rotation=20)
    fig.tight_layout()
    fig.savefig(PLOT_OUT, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", default="bf16,int8", help="profiles besides f32 to run on every case")
    parser.add_argument("--ab-profiles", default=None, help="profiles for the encoder A/B (default: --profiles)")
    parser.add_argument("--ab-slices", type=int, default=3)
    parser.add_argument("--ab-repeats", type=int, default=6)
    parser.add_argument("--reuse-f32", action="store_true", help="f32 DSC from results/engine_bench.json")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--from-json", type=Path, default=None)
    parser.add_argument("--note", action="append", default=[], help="PROFILE=description for the verdict table")
    args = parser.parse_args(argv)

    if args.from_json:
        data = json.loads(args.from_json.read_text())
    else:
        data = json.loads(PARTIAL.read_text()) if args.resume and PARTIAL.is_file() else None
        scratch = Path(data["scratch"]) if data else Path(tempfile.mkdtemp(prefix="precision-gate-"))
        cases = common.case_set(scratch / "phantoms")
        data = data or {
            "machine": common.machine_info(),
            "scratch": str(scratch),
            "dsc": {},
            "command": " ".join(["ops/bench/precision_gate.py", *(argv or sys.argv[1:])]),
        }
        PARTIAL.parent.mkdir(parents=True, exist_ok=True)

        def save():
            PARTIAL.write_text(json.dumps(data, indent=1))

        profiles = ["f32"] + [p for p in args.profiles.split(",") if p and p != "f32"]
        if "ab" not in data:
            ab_profiles = (args.ab_profiles or ",".join(profiles)).split(",")
            log(f"encoder A/B: {ab_profiles}")
            data["ab"] = run_ab(cases, ab_profiles, args.ab_slices, args.ab_repeats)
            data["ab_slices"], data["ab_repeats"] = args.ab_slices, args.ab_repeats
            save()
        run_profiles(cases, profiles, scratch, data, save, args.reuse_f32)
        data["machine"]["uptime_end"] = common.uptime_line()
    data.setdefault("notes", {}).update(dict(n.split("=", 1) for n in args.note))
    JSON_OUT.parent.mkdir(parents=True, exist_ok=True)
    JSON_OUT.write_text(json.dumps(data, indent=1))
    for profile, s in summarise(data).items():
        print(
            f"{profile:16s} mean DSC {s['mean_dsc']:.4f} ({s['delta'] * 100:+.2f} pts) speed-up "
            f"{fmt(s['speedup'], '.2f')}x cos {fmt(s['cos_min'], '.4f')} max|d| {s['max_case_delta'] * 100:.2f} "
            f"recommended {s['recommended']} (one-sided {s['one_sided']})"
        )
    plot(data)
    if not args.no_write:
        common.replace_section("Precision profiles (issue 5)", section(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
