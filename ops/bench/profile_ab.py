"""Whole-engine A/B of a precision profile against f32 on chosen cases, runs interleaved in one session.

    .venv/bin/python ops/bench/profile_ab.py [--profile bf16] [--cases 3DBox_CT_tsup] [--repeats 3] [--no-write]
    .venv/bin/python ops/bench/profile_ab.py --baseline --profile fast --models-dir DIR [--cases all]

--baseline (issue 10): whole-process wall time per case (start-up and model load included, as the challenge timed
it) of f32 and the profile (e.g. `fast`, resolved from DIR's calibration record for this host), against the official
baseline's wall times in ../shared/data/cases/BASELINE.md, plus the per-case gate table of DIR's
precision-calibration.json for this host. Writes the "Precision per host: calibration gate and `fast` (issue 10)"
section.

Each run is a fresh process (ops/bench/engine_child.py), f32 and the profile alternating, so both see the same
machine. Reports per case the median engine time of each, their ratio, and the speed-up against the PyTorch
reference of ops/bench/results/engine_bench.json (measured earlier, not in this run: the table says when).
Writes the "Precision profile, whole engine (issue 5)" section of ops/bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import fmt, md_table  # noqa: E402

SECTION = "Precision profile, whole engine (issue 5)"
HOST_SECTION = "Precision per host: calibration gate and `fast` (issue 10)"
JSON_OUT = common.BENCH / "results" / "profile_ab.json"
HOST_JSON_OUT = common.BENCH / "results" / "precision_host.json"
PLOT = common.BENCH / "results" / "profile_ab.png"


def measure(
    cases: common.CaseSet, names: list[str], profile: str, repeats: int, extra: list[str] | None = None
) -> dict:
    runs: dict[str, dict[str, list[dict]]] = {}
    for case_index, name in enumerate(names):
        runs[name] = {"f32": [], profile: []}
        for index in range(repeats):
            first = (index + case_index) % 2 == 0
            for precision in ("f32", profile) if first else (profile, "f32"):
                print(f"[{name}] {precision} run {index + 1}/{repeats}...", file=sys.stderr, flush=True)
                result = common.engine_child(cases.image(name), Path(tempfile.mkdtemp()), precision, extra=extra)
                runs[name][precision].append(
                    {
                        "engine_s": result["engine_s"],
                        "wall_s": result["wall_s"],
                        "load_before": result["load_before"][0],
                        "profile": result.get("profile", precision),
                        "precision_choice": result.get("precision_choice", ""),
                    }
                )
    return runs


def host_verdict(record_file: Path) -> dict | None:
    """This host's entry of a precision-calibration.json (worker.calibration), or None."""
    sys.path.insert(0, str(common.REPO))
    from worker.calibration import host_key

    if not record_file.is_file():
        return None
    hosts = json.loads(record_file.read_text()).get("hosts", {})
    models = next(iter(hosts.values()), {}).get("host", {}).get("models", {}) if hosts else {}
    from worker.calibration import host_fingerprint

    entry = hosts.get(host_key(host_fingerprint(models)))
    return entry


def render_gate(verdict: dict) -> list[str]:
    host = verdict["host"]
    profiles = list(verdict["profiles"])
    lines = [
        f"Calibration `{verdict.get('command', 'worker calibrate')}` of {verdict['calibrated_at']}: "
        f"{host['cpu']} (ISA flags {' '.join(host['isa'])}), OpenVINO {host['openvino']}, "
        f"{verdict['threads'] or 'all'} thread(s), 1-min load at the end {verdict['load_average'][0]:.1f}. "
        f"Gate: every case within +-{verdict['gate']['dsc_points']:.1f} DSC points of f32 against ground "
        f"truth; `fast` also needs >= {verdict['gate']['min_speedup']:.2f}x f32's engine time and a profile "
        "that does not run exactly as f32 here.",
        "",
    ]
    rows = []
    for name, entry in verdict["profiles"].items():
        enc = entry["runtime"].get("litemedsam/propagate", {}).get("runtime", {}).get("encoder", {})
        rows.append(
            [
                name,
                "pass" if entry["passed"] else f"FAIL ({len(entry['failed_cases'])} cases)",
                fmt(entry["worst_delta"] * 100, "+.2f"),
                fmt(entry["speedup"], ".2f") + "x",
                "yes" if entry["equivalent_to_f32"] else "no",
                ", ".join(f"{k} {v}" for k, v in sorted(enc.items())),
            ]
        )
    lines += [
        md_table(
            [
                "profile",
                "gate",
                "worst case ΔDSC (points)",
                "speed-up (sum of engine s)",
                "runs exactly as f32 here",
                "encoder element types as compiled here",
            ],
            rows,
        ),
        "",
        f"`--precision fast` on this host: **{verdict['fast']}**.",
        "",
    ]
    rows = []
    for case, info in verdict["cases"].items():
        row = [
            case,
            "x".join(str(v) for v in info["shape"]),
            info["boxes"],
            fmt(info["dsc_f32"], ".4f"),
            fmt(info["seconds_f32"], ".1f"),
        ]
        for name in profiles:
            r = verdict["profiles"][name]["cases"][case]
            row.append(f"{r['delta'] * 100:+.2f} ({'=' if r['identical'] else '≠'}, {r['seconds']:.1f} s)")
        rows.append(row)
    lines += [
        md_table(
            ["derived case", "shape", "boxes", "f32 DSC", "f32 engine s"]
            + [f"{n}: ΔDSC pts (masks = / ≠ f32, engine s)" for n in profiles],
            rows,
        )
    ]
    return lines


def render_host(data: dict) -> str:
    profile, baseline = data["profile"], data["baseline"]
    rows = []
    for name, per in data["runs"].items():
        f32 = common.median([r["wall_s"] for r in per["f32"]])
        other = common.median([r["wall_s"] for r in per[profile]])
        ran = sorted({r["profile"] for r in per[profile]})
        base = baseline.get(name, {}).get("wall_s")
        rows.append(
            [
                name,
                len(per["f32"]),
                fmt(f32, ".1f"),
                f"{fmt(other, '.1f')} ({', '.join(ran)})",
                fmt(base, ".1f") if base else "–",
                (fmt(base / f32, ".1f") + "x") if base else "–",
                (fmt(base / other, ".1f") + "x") if base else "–",
            ]
        )
    loads = [r["load_before"] for per in data["runs"].values() for runs in per.values() for r in runs]
    choice = next(
        (r["precision_choice"] for per in data["runs"].values() for r in per[profile] if r.get("precision_choice")), ""
    )
    lines = [
        f"Command: `{data['command']}`; f32 and `{profile}` alternate per case, each run a fresh process; wall = "
        "launch to mask written (start-up and model load included, as the challenge timed it).",
        "",
        *common.machine_lines(data["machine"], [(load, 0, 0) for load in loads]),
        "",
        md_table(
            [
                "case",
                "runs each",
                "f32 wall s (median)",
                f"{profile} wall s (profile that ran)",
                "official baseline wall s (BASELINE.md)",
                "baseline / f32",
                f"baseline / {profile}",
            ],
            rows,
        ),
        "",
        f"- `{profile}` resolved to: {choice or 'n/a'}",
        "- The official baseline's wall times were measured on 2026-11-29 on a 2-core AMD EPYC Zen 4 (AVX-512, "
        "BF16) host with 2 torch threads, not in this run and not on this CPU: read the ratios as orders of "
        "magnitude, not exact factors.",
        "",
    ]
    lines += [f"- {note}" for note in data.get("notes", [])]
    if data.get("notes"):
        lines.append("")
    if data.get("verdict"):
        lines += render_gate(data["verdict"])
    return "\n".join(lines)


def render(data: dict) -> str:
    profile, bench = data["profile"], data["reference"]
    rows = []
    for name, per in data["runs"].items():
        f32 = common.median([r["engine_s"] for r in per["f32"]])
        other = common.median([r["engine_s"] for r in per[profile]])
        ref = bench.get(name)
        rows.append(
            [
                name,
                len(per["f32"]),
                fmt(f32, ".1f"),
                fmt(other, ".1f"),
                fmt(f32 / other, ".2f") + "x",
                fmt(ref, ".1f") if ref else "–",
                (fmt(ref / f32, ".1f") + "x") if ref else "–",
                (fmt(ref / other, ".1f") + "x") if ref else "–",
            ]
        )
    loads = [r["load_before"] for per in data["runs"].values() for runs in per.values() for r in runs]
    return "\n".join(
        [
            f"Command: `ops/bench/profile_ab.py --profile {profile}`; f32 and {profile} runs alternate, each a fresh "
            "process (engine seconds: the engine's `segment` total).",
            "",
            *common.machine_lines(data["machine"], [(load, 0, 0) for load in loads]),
            "",
            md_table(
                [
                    "case",
                    "runs each",
                    "f32 engine s (median)",
                    f"{profile} engine s (median)",
                    f"{profile} speed-up",
                    "PyTorch reference s",
                    "f32 vs reference",
                    f"{profile} vs reference",
                ],
                rows,
            ),
            "",
            f"- PyTorch reference: ops/bench/results/engine_bench.json, measured {data['reference_date']} on this "
            "machine (not in this run; it was quiet then as well).",
        ]
    )


def plot(data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profile, names = data["profile"], list(data["runs"])
    series = [
        ("PyTorch reference", [data["reference"].get(n) or 0 for n in names], "#999999"),
        ("OpenVINO f32", [common.median([r["engine_s"] for r in data["runs"][n]["f32"]]) for n in names], "#1f77b4"),
        (
            f"OpenVINO {profile}",
            [common.median([r["engine_s"] for r in data["runs"][n][profile]]) for n in names],
            "#ff7f0e",
        ),
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    for offset, (label, values, colour) in enumerate(series):
        bars = ax.bar([i + offset * 0.27 for i in range(len(names))], values, 0.27, label=label, color=colour)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks([i + 0.27 for i in range(len(names))], names)
    ax.set_ylabel("engine seconds per case (log)")
    ax.set_title(f"{profile} vs f32, whole engine (medians)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="bf16")
    parser.add_argument("--cases", default="3DBox_CT_tsup,3DBox_CT_tssm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--from-json", type=Path, default=None, help="re-render a saved run")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="issue 10: whole-process wall time vs BASELINE.md and the calibration gate table",
    )
    parser.add_argument(
        "--models-dir", type=Path, default=None, help="models dir holding precision-calibration.json (for `fast`)"
    )
    parser.add_argument("--note", action="append", default=[], help="--baseline: a finding to list (repeatable)")
    args = parser.parse_args(argv)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        data["notes"] = args.note or data.get("notes", [])
        return report_host(data, not args.no_write) if "baseline" in data else report(data, not args.no_write)
    cases = common.case_set(Path(tempfile.mkdtemp(prefix="profile-ab-")))
    names = cases.names() if args.cases == "all" else [n for n in args.cases.split(",") if cases.image(n).is_file()]
    if args.baseline:
        extra = ["--models-dir", str(args.models_dir)] if args.models_dir else []
        machine = common.machine_info()
        runs = measure(cases, names, args.profile, args.repeats, extra)
        machine["uptime_end"] = common.uptime_line()
        models_dir = args.models_dir
        if models_dir is None:
            from models.paths import default_models_dir

            models_dir = default_models_dir()
        data = {
            "machine": machine,
            "profile": args.profile,
            "runs": runs,
            "baseline": common.baseline_table(),
            "verdict": host_verdict(Path(models_dir) / "precision-calibration.json"),
            "command": " ".join(["ops/bench/profile_ab.py", *(argv or sys.argv[1:])]),
            "notes": args.note,
        }
        return report_host(data, not args.no_write)
    bench = json.loads((common.BENCH / "results" / "engine_bench.json").read_text())
    machine = common.machine_info()
    runs = measure(cases, names, args.profile, args.repeats)
    machine["uptime_end"] = common.uptime_line()
    reference = {
        n: e["reference"]["seconds_measured"]
        for n, e in bench.get("speed", {}).items()
        if e.get("reference") and e["reference"].get("complete")
    }
    data = {
        "machine": machine,
        "profile": args.profile,
        "runs": runs,
        "reference": reference,
        "reference_date": bench["machine"]["date"],
    }
    return report(data, not args.no_write)


def report_host(data: dict, write: bool) -> int:
    text = render_host(data)
    print(text)
    if write:
        HOST_JSON_OUT.write_text(json.dumps(data, indent=1))
        # one dated block per run: each kind of host keeps its record
        common.append_to_section(HOST_SECTION, f"### {data['machine']['date']} — {data['machine']['cpu']}\n\n{text}")
    return 0


def report(data: dict, write: bool) -> int:
    text = render(data) + "\n\n![profile A/B](results/profile_ab.png)"
    print(text)
    if write:
        JSON_OUT.write_text(json.dumps(data, indent=1))
        plot(data)
        common.replace_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
