"""The whole benchmark suite in one command (issue 5): writes ops/bench/RESULTS.md sections and PNG plots.

    .venv/bin/python ops/bench/suite.py [--profiles bf16,int8] [--reference-boxes K|CASE=K,...] [--skip STEP,...]
                                        [--resume]

Steps (each resumable, each its own script too):
  engine     ops/bench/engine_bench.py   speed on the 3D multi-box cases vs the PyTorch reference, model-only
                                         limit, peak memory; f32 accuracy and wall time on every case
  reference  ops/bench/torch_reference.py on every other case (Table 5's PyTorch column)
  gate       ops/bench/precision_gate.py  DSC/NSD per profile and modality, encoder speed-up, the gate verdict
  startup    ops/bench/startup_bench.py   model load cold / warm per profile
  tables     the paper's Table 5 shape (per case: size, objects, PyTorch s, OpenVINO f32 s, other profiles s) and
             Table 4 shape (per modality DSC / NSD per framework and profile), into "Benchmark suite (issue 5)"
Runs on ../shared/data/cases when present, else on the project's phantoms. On a 2-core machine the full suite
takes hours, nearly all of it in the PyTorch reference (the baseline's per (box, slice) re-encoding).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import fmt, md_table  # noqa: E402

STEPS = ("engine", "reference", "gate", "startup", "tables")
REFERENCE_JSON = common.BENCH / "results" / "reference_all.json"
PLOT_OUT = common.BENCH / "suite_table5.png"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def script(name: str, *args: str) -> None:
    cmd = [str(common.RUNTIME_PY), str(common.BENCH / name), *args]
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=common.REPO)


def reference_all(cases: common.CaseSet, cap_spec: str | None, resume: bool) -> dict:
    sys.path.insert(0, str(common.BENCH))
    from engine_bench import reference_cap

    data = json.loads(REFERENCE_JSON.read_text()) if resume and REFERENCE_JSON.is_file() else {"cases": {}}
    data.setdefault("machine", common.machine_info())
    bench = load(common.BENCH / "results" / "engine_bench.json")
    for name in cases.names():
        if name in data["cases"] or (bench.get("speed", {}).get(name) or {}).get("reference"):
            continue  # done, or measured side by side by engine_bench (the tables read it from there)
        log(f"[reference] {name}...")
        data["cases"][name] = common.reference_child(cases.image(name), None, reference_cap(cap_spec, name))
        data["machine"]["uptime_end"] = common.uptime_line()
        REFERENCE_JSON.write_text(json.dumps(data, indent=1))
    return data


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def tables() -> None:
    bench = load(common.BENCH / "results" / "engine_bench.json")
    gate = load(common.BENCH / "results" / "precision_gate.json")
    refs = dict(load(REFERENCE_JSON).get("cases", {}))
    # the speed cases' reference ran side by side with the f32 column: it wins over any older figure
    refs.update({n: e["reference"] for n, e in bench.get("speed", {}).items() if e.get("reference")})
    baseline = common.baseline_table()
    accuracy = bench.get("accuracy", {})
    profiles = [p for p in gate.get("dsc", {}) if p != "f32"]
    names = sorted(set(accuracy) | set(refs))
    rows, plot_rows = [], []
    for name in names:
        acc, ref = accuracy.get(name, {}), refs.get(name)
        ref_wall = None
        if ref:
            ref_wall = (
                ref["wall_s"] if ref["complete"] else ref["wall_s"] - ref["seconds_measured"] + ref["seconds_scaled"]
            )
        f32_wall = acc.get("wall_s")
        row = [
            name,
            acc.get("shape") or (ref and "x".join(map(str, ref["shape"]))),
            acc.get("boxes") or (ref and ref["boxes_total"]),
            fmt(baseline.get(name, {}).get("wall_s"), ".1f"),
            fmt(ref_wall, ".1f") + ("" if not ref or ref["complete"] else " *"),
            fmt(f32_wall, ".1f") + f" ({fmt(acc.get('engine_s'), '.1f')})",
        ]
        profile_walls = []
        for p in profiles:
            r = gate["dsc"][p].get(name)
            row.append(f"{fmt(r and r['wall_s'], '.1f')} ({fmt(r and r['engine_s'], '.1f')})" if r else "–")
            profile_walls.append(r["wall_s"] if r else None)
        row.append(fmt(ref_wall / f32_wall, ".1f") + "x" if ref_wall and f32_wall else "–")
        rows.append(row)
        plot_rows.append((name, ref_wall, f32_wall, profile_walls))
    header = (
        [
            "case",
            "size",
            "objects",
            "official baseline s (BASELINE.md)",
            "PyTorch reference s (this run)",
            "OpenVINO f32 s (engine s)",
        ]
        + [f"OpenVINO {p} s (engine s)" for p in profiles]
        + ["speed-up f32 vs PyTorch"]
    )
    lines = [
        "Paper's Table 5 shape. Seconds are whole-process wall times per case (start-up and model load included, "
        "as the challenge timed it); the engine's own time in brackets. PyTorch reference = ops/bench/"
        "torch_reference.py (the baseline's algorithm on the same weights, torch threads = 2); * = capped to the "
        "first boxes and scaled by (box, slice) pairs. Profiles other than f32: only on cases with ground truth "
        "(ops/bench/precision_gate.py runs). Each column comes from its own run; loads may differ between runs, so "
        "compare speed within 'Engine speed (issue 2)' (side by side) and the encoder A/B of 'Precision profiles':",
        "",
        *_run_lines(bench, load(REFERENCE_JSON), gate),
        "",
        md_table(header, rows),
        "",
    ]
    speed = bench.get("speed", {})
    if speed:
        sys.path.insert(0, str(common.BENCH))
        from engine_bench import speed_summary

        for name, entry in speed.items():
            s = speed_summary(entry)
            if s.get("limit_s"):
                lines.append(
                    f"- Model-only limit, {name}: {s['enc_calls']} encoder calls x {s['enc_median_s']:.3f} s "
                    f"+ {s['dec_calls']} decoder calls (per batch size) = {s['limit_s']:.1f} s; engine "
                    f"{s['engine_s']:.1f} s (medians of 3 runs) = {s['engine_s'] / s['limit_s']:.3f}x the "
                    "limit "
                    f"(median of the per-run ratios {s['limit_ratio']:.3f}; see 'Engine time vs the "
                    "model-only limit')."
                )
        lines.append("")
    if gate.get("dsc"):
        sys.path.insert(0, str(common.BENCH))
        from precision_gate import summarise

        summary = summarise(gate)
        mods = sorted({m for s in summary.values() for m in s["modalities"]})
        header = ["modality", "official baseline DSC / NSD"] + [f"OpenVINO {p} DSC / NSD" for p in summary]
        rows = []
        for mod in mods:
            base = [
                v
                for k, v in baseline.items()
                if k.split("_")[1] == mod and v.get("dsc") is not None and k in gate["dsc"].get("f32", {})
            ]
            row = [
                mod,
                f"{sum(b['dsc'] for b in base) / len(base):.4f} / {sum(b['nsd'] for b in base) / len(base):.4f}"
                if base
                else "–",
            ]
            for s in summary.values():
                m = s["modalities"].get(mod)
                row.append(f"{m['dsc']:.4f} / {m['nsd']:.4f}" if m else "–")
            rows.append(row)
        lines += [
            "Paper's Table 4 shape (mean DSC / NSD per modality over the cases with ground truth):",
            "",
            md_table(header, rows),
            "",
        ]
    lines.append(f"![Table 5]({PLOT_OUT.name})")
    common.replace_section("Benchmark suite (issue 5)", "\n".join(lines))
    plot(plot_rows, profiles)


def _load_of(uptime: str | None) -> str:
    match = re.search(r"load average: ([\d.]+)", uptime or "")
    return match.group(1) if match else "?"


def _run_lines(bench: dict, reference: dict, gate: dict) -> list[str]:
    """When each column was measured, and how busy the 2 cores were (1-minute load at start / end)."""
    runs = [
        ("OpenVINO f32, and the PyTorch reference of the 3D speed cases (ops/bench/engine_bench.py)", bench),
        ("PyTorch reference of the other cases (suite.py reference step)", reference),
        ("other profiles (ops/bench/precision_gate.py)", gate),
    ]
    lines = []
    for label, data in runs:
        machine = data.get("machine")
        if machine:
            lines.append(
                f"- {label}: {machine['date']}, load {_load_of(machine.get('uptime'))} at start, "
                f"{_load_of(machine.get('uptime_end'))} at end."
            )
    lines.append("- Official baseline: ../shared/data/cases/BASELINE.md (another day and machine load).")
    return lines


def plot(rows, profiles) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / (2 + len(profiles))
    for i, (_name, ref, f32, walls) in enumerate(rows):
        values = [ref, f32] + walls
        for j, v in enumerate(values):
            if v:
                ax.bar(
                    i + j * width,
                    v,
                    width,
                    color=(["#999", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"] * 2)[j],
                    label=(["PyTorch reference", "OpenVINO f32"] + [f"OpenVINO {p}" for p in profiles])[j]
                    if i == 0
                    else None,
                )
    ax.set_yscale("log")
    ax.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(rows))], [r[0].replace("Box_", "\n") for r in rows], fontsize=7
    )
    ax.set_ylabel("wall s per case (log)")
    ax.set_title("Per case wall time, start-up and model load included")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOT_OUT, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", default="bf16,int8")
    parser.add_argument("--reference-boxes", default=None)
    parser.add_argument("--skip", default="", help=f"comma-separated steps to skip: {','.join(STEPS)}")
    parser.add_argument("--resume", action="store_true", help="continue each step from its partial results")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    resume = ["--resume"] if args.resume else []
    cap = ["--reference-boxes", args.reference_boxes] if args.reference_boxes else []
    if "engine" not in skip:
        script("engine_bench.py", *cap, *resume)
    if "reference" not in skip:
        cases = common.case_set(Path(tempfile.mkdtemp(prefix="suite-phantoms-")))
        reference_all(cases, args.reference_boxes, args.resume)
    if "gate" not in skip:
        script("precision_gate.py", "--profiles", args.profiles, "--reuse-f32", *resume)
    if "startup" not in skip:
        script("startup_bench.py", "--profiles", ",".join(["f32", *args.profiles.split(",")]))
    if "tables" not in skip:
        tables()
    log(f"wrote {common.RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
