"""Whole-engine A/B of a precision profile against f32 on chosen cases, runs interleaved in one session.

    .venv/bin/python ops/bench/profile_ab.py [--profile bf16] [--cases 3DBox_CT_tsup] [--repeats 3] [--no-write]

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
JSON_OUT = common.BENCH / "results" / "profile_ab.json"
PLOT = common.BENCH / "results" / "profile_ab.png"


def measure(cases: common.CaseSet, names: list[str], profile: str, repeats: int) -> dict:
    runs: dict[str, dict[str, list[dict]]] = {}
    for name in names:
        runs[name] = {"f32": [], profile: []}
        for index in range(repeats):
            for precision in (("f32", profile) if index % 2 == 0 else (profile, "f32")):
                print(f"[{name}] {precision} run {index + 1}/{repeats}...", file=sys.stderr, flush=True)
                result = common.engine_child(cases.image(name), Path(tempfile.mkdtemp()), precision)
                runs[name][precision].append({"engine_s": result["engine_s"], "wall_s": result["wall_s"],
                                              "load_before": result["load_before"][0]})
    return runs


def render(data: dict) -> str:
    profile, bench = data["profile"], data["reference"]
    rows = []
    for name, per in data["runs"].items():
        f32 = common.median([r["engine_s"] for r in per["f32"]])
        other = common.median([r["engine_s"] for r in per[profile]])
        ref = bench.get(name)
        rows.append([name, len(per["f32"]), fmt(f32, ".1f"), fmt(other, ".1f"), fmt(f32 / other, ".2f") + "x",
                     fmt(ref, ".1f") if ref else "–", (fmt(ref / f32, ".1f") + "x") if ref else "–",
                     (fmt(ref / other, ".1f") + "x") if ref else "–"])
    loads = [r["load_before"] for per in data["runs"].values() for runs in per.values() for r in runs]
    return "\n".join([
        f"Command: `ops/bench/profile_ab.py --profile {profile}`; f32 and {profile} runs alternate, each a fresh "
        "process (engine seconds: the engine's `segment` total).",
        "",
        *common.machine_lines(data["machine"], [(load, 0, 0) for load in loads]),
        "",
        md_table(["case", "runs each", "f32 engine s (median)", f"{profile} engine s (median)",
                  f"{profile} speed-up", "PyTorch reference s", "f32 vs reference", f"{profile} vs reference"], rows),
        "",
        f"- PyTorch reference: ops/bench/results/engine_bench.json, measured {data['reference_date']} on this "
        "machine (not in this run; it was quiet then as well).",
    ])


def plot(data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profile, names = data["profile"], list(data["runs"])
    series = [("PyTorch reference", [data["reference"].get(n) or 0 for n in names], "#999999"),
              ("OpenVINO f32", [common.median([r["engine_s"] for r in data["runs"][n]["f32"]]) for n in names],
               "#1f77b4"),
              (f"OpenVINO {profile}", [common.median([r["engine_s"] for r in data["runs"][n][profile]]) for n in names],
               "#ff7f0e")]
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
    args = parser.parse_args(argv)
    if args.from_json:
        return report(json.loads(args.from_json.read_text()), not args.no_write)
    cases = common.case_set(Path(tempfile.mkdtemp(prefix="profile-ab-")))
    names = [n for n in args.cases.split(",") if cases.image(n).is_file()]
    bench = json.loads((common.BENCH / "results" / "engine_bench.json").read_text())
    machine = common.machine_info()
    runs = measure(cases, names, args.profile, args.repeats)
    machine["uptime_end"] = common.uptime_line()
    reference = {n: e["reference"]["seconds_measured"] for n, e in bench.get("speed", {}).items()
                 if e.get("reference") and e["reference"].get("complete")}
    data = {"machine": machine, "profile": args.profile, "runs": runs, "reference": reference,
            "reference_date": bench["machine"]["date"]}
    return report(data, not args.no_write)


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
