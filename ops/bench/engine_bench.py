"""Engine speed (issue 2) and accuracy against the official baseline, measured side by side in one run.

    .venv/bin/python ops/bench/engine_bench.py [--cases 3DBox_CT_tssm,3DBox_CT_tsup] [--engine-repeats 3]
        [--latency-repeats 20] [--reference-boxes K] [--no-reference] [--no-accuracy] [--no-write]
    .venv/bin/python ops/bench/engine_bench.py --from-json ops/bench/results/engine_bench.json   # re-render only

Speed, per 3D multi-box case (../shared/data/cases when present, else the project's 3D phantoms), each run in a
fresh process: the PyTorch reference path of the baseline's algorithm (ops/bench/torch_reference.py in the export
venv: per box, per slice re-encoding, no cache), and our engine at f32 `--engine-repeats` times, interleaved around
the reference run (engine, reference, engine, engine...) so both see the same machine load. Reported: the speed-up,
the model-only limit (ops/bench/engine_child.py) and engine time / limit, and the peak RSS of each process.

Accuracy: the engine (f32, one fresh process per case) on every case; DSC/NSD with producer.evaluate.score_case
beside BASELINE.md's numbers, wall time per case (process start and model load included) beside the baseline's.

Writes ops/bench/results/engine_bench.json, ops/bench/engine_speed.png and the RESULTS.md sections
"Engine speed (issue 2)" and "Accuracy vs the official baseline".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import fmt, md_table, median  # noqa: E402

sys.path.insert(0, str(common.REPO))

SPEED_CASES = ("3DBox_CT_tssm", "3DBox_CT_tsup")
PHANTOM_SPEED_CASES = ("3DBox_CT_phantom", "3DBox_MR_phantom")
JSON_OUT = common.BENCH / "results" / "engine_bench.json"
PARTIAL = common.BENCH / "results" / "engine_bench.partial.json"
PLOT_OUT = common.BENCH / "engine_speed.png"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- measuring


def reference_cap(spec: str | None, name: str) -> int | None:
    """--reference-boxes 'K' (every case) or 'CASE=K,CASE=K' (those cases only)."""
    if not spec:
        return None
    if "=" not in spec:
        return int(spec)
    caps = dict(item.split("=", 1) for item in spec.split(","))
    return int(caps[name]) if name in caps else None


def speed_runs(
    cases: common.CaseSet, names: list[str], args, segs_dir: Path, ref_dir: Path, save, done: dict | None = None
) -> dict:
    """Engine runs interleaved around one reference run per case; `save(runs)` after every process (resumable)."""
    runs = dict(done or {})
    for name in names:
        path = cases.image(name)
        entry = runs.get(name) or {"case": name, **common.case_summary(path), "engine": [], "reference": None}
        runs[name] = entry
        for repeat in range(max(args.engine_repeats, 1)):
            cap = reference_cap(args.reference_boxes, name)
            if repeat == 1 and not args.no_reference and entry["reference"] is None:
                log(f"[{name}] PyTorch reference{'' if cap is None else f' (first {cap} boxes)'}...")
                entry["reference"] = common.reference_child(path, ref_dir, cap)
                log(f"[{name}]   reference {entry['reference']['seconds_scaled']:.1f} s")
                save(runs)
            if repeat < len(entry["engine"]):
                continue
            log(f"[{name}] engine f32 run {repeat + 1}/{args.engine_repeats}...")
            run = common.engine_child(path, segs_dir if repeat == 0 else None, "f32", args.latency_repeats)
            log(f"[{name}]   engine {run['engine_s']:.1f} s, limit {run.get('limit_s', 0):.1f} s")
            entry["engine"].append(run)
            save(runs)
        if args.engine_repeats <= 1 and not args.no_reference and entry["reference"] is None:
            entry["reference"] = common.reference_child(path, ref_dir, reference_cap(args.reference_boxes, name))
            save(runs)
    return runs


def accuracy_runs(
    cases: common.CaseSet, speed: dict, segs_dir: Path, ref_dir: Path, save, done: dict | None = None
) -> dict:
    import numpy as np

    from producer.evaluate import score_case

    rows = dict(done or {})
    for name in cases.names():
        if name in rows:
            continue
        if name in speed and speed[name]["engine"]:
            run = speed[name]["engine"][0]
        else:
            log(f"[{name}] engine f32 (accuracy)...")
            run = common.engine_child(cases.image(name), segs_dir, "f32", 0)
        row = {
            "case": name,
            **common.case_summary(cases.image(name)),
            "wall_s": run["wall_s"],
            "engine_s": run["engine_s"],
            "load_s": run["load_s"],
            "peak_rss_mb": run["peak_rss_mb"],
            "counts": run["counts"],
            "strategy": run["strategy"],
        }
        gt_path = cases.gt(name)
        if gt_path is not None:
            with np.load(gt_path, allow_pickle=False) as gt:
                gts = gt["gts"]
                spacing = tuple(gt["spacing"]) if "spacing" in gt.files and gts.ndim == 3 else None
            with np.load(segs_dir / f"{name}.npz") as seg:
                row["dsc"], row["nsd"] = score_case(gts, seg["segs"], spacing)
            ref_segs = ref_dir / f"{name}.npz"
            if ref_segs.is_file():  # the PyTorch reference's own masks: a check that it is the baseline's algorithm
                with np.load(ref_segs) as seg:
                    row["ref_dsc"], row["ref_nsd"] = score_case(gts, seg["segs"], spacing)
        rows[name] = row
        save(rows)
    return rows


# ---------------------------------------------------------------- reporting


def speed_summary(entry: dict) -> dict:
    engine = entry["engine"]
    ref = entry["reference"]
    eng_s = median([r["engine_s"] for r in engine])
    limits = [r["limit_s"] for r in engine if "limit_s" in r]
    ratios = [r["limit_ratio"] for r in engine if r.get("limit_ratio")]
    out = {
        "engine_s": eng_s,
        "engine_runs": [r["engine_s"] for r in engine],
        "engine_wall_s": median([r["wall_s"] for r in engine]),
        "engine_load_s": median([r["load_s"] for r in engine]),
        "enc_calls": engine[0]["in_run"]["encoder_calls"],
        "dec_calls": engine[0]["in_run"]["decoder_calls"],
        "dec_batches": engine[0]["in_run"]["decoder_batches"],
        "enc_median_s": median([r["latency"]["encoder_median_s"] for r in engine if "latency" in r]),
        "dec_per_box_s": median([r["latency"]["decoder_per_box_median_s"] for r in engine if "latency" in r]),
        "limit_s": median(limits) if limits else None,
        "limit_ratio": median(ratios) if ratios else None,
        "limit_ratios": ratios,
        "outside_model_s": median([r["in_run"]["outside_model_s"] for r in engine]),
        "in_run_model_s": median([r["in_run"]["model_s"] for r in engine]),
        "engine_rss_mb": max(r["peak_rss_mb"] for r in engine),
        "times": {k: median([r["times"][k] for r in engine]) for k in engine[0]["times"]},
    }
    if ref:
        out.update(
            {
                "ref_s": ref["seconds_scaled"],
                "ref_complete": ref["complete"],
                "ref_scaling": ref["scaling"],
                "ref_wall_s": (
                    ref["wall_s"]
                    if ref["complete"]
                    else ref["wall_s"] - ref["seconds_measured"] + ref["seconds_scaled"]
                ),
                "ref_enc_calls": ref["encoder_calls_full"],
                "ref_enc_median_s": ref["encoder_median_s"],
                "ref_rss_mb": ref["peak_rss_mb"],
                "speedup": ref["seconds_scaled"] / eng_s,
            }
        )
        out["wall_speedup"] = out["ref_wall_s"] / out["engine_wall_s"]
    return out


def speed_section(data: dict) -> str:
    info, speed = data["machine"], data["speed"]
    rows, notes = [], []
    for name, entry in speed.items():
        s = speed_summary(entry)
        rows.append(
            [
                name,
                entry["shape"],
                entry["boxes"],
                entry.get("pairs", "–"),
                fmt(s.get("ref_s"), ".1f") + ("" if s.get("ref_complete", True) else " *"),
                f"{s['engine_s']:.1f} ({', '.join(f'{v:.1f}' for v in s['engine_runs'])})",
                fmt(s.get("speedup"), ".1f") + "x" if s.get("speedup") else "–",
                f"{fmt(s.get('ref_wall_s'), '.1f')} / {s['engine_wall_s']:.1f}",
                fmt(s.get("wall_speedup"), ".1f") + "x" if s.get("wall_speedup") else "–",
                f"{s.get('ref_enc_calls', '–')} / {s['enc_calls']}",
                s["dec_calls"],
                f"{fmt(s.get('ref_enc_median_s'), '.2f')} / {fmt(s['enc_median_s'], '.3f')}",
                fmt(s["dec_per_box_s"], ".3f"),
                fmt(s["limit_s"], ".1f"),
                f"{fmt(s['limit_ratio'], '.3f')}; {fmt(s['engine_s'] / s['limit_s'] if s['limit_s'] else None, '.3f')}",
                f"{fmt(s.get('ref_rss_mb'), '.0f')} / {s['engine_rss_mb']:.0f}",
            ]
        )
        if s.get("ref_scaling"):
            notes.append(
                f"- * {name}: the reference ran only the {s['ref_scaling']} (its cost is per (box, slice) "
                "pair, so the time is scaled by the pair count)."
            )
        notes.append(
            f"- {name}: engine stage medians (s): "
            + ", ".join(f"{k} {v:.2f}" for k, v in s["times"].items() if v > 0.005 and k != "total")
            + f"; inside the run the model calls took {s['in_run_model_s']:.1f} s and everything else "
            f"{s['outside_model_s']:.2f} s; decoder calls by batch size {s['dec_batches']}; "
            f"engine/limit per run {', '.join(f'{v:.3f}' for v in s['limit_ratios'])}."
        )
    header = [
        "case",
        "shape",
        "boxes",
        "(box, slice) pairs",
        "PyTorch ref s",
        "engine f32 s, median (runs)",
        "speed-up",
        "wall s ref / engine",
        "wall speed-up",
        "encoder calls ref / engine",
        "decoder calls",
        "median encoder s ref / engine",
        "median decoder s per box",
        "model-only limit s (median)",
        "engine / limit: median of per-run ratios; ratio of the medians",
        "peak RSS MB ref / engine",
    ]
    loads = [
        r.get("load_before") for e in speed.values() for r in e["engine"] + ([e["reference"]] if e["reference"] else [])
    ]
    body = [
        f"Command: `{data['command']}`. Each number comes from its own fresh process; the engine runs "
        "(f32, OpenVINO threads = all cores) are interleaved around the PyTorch reference run (torch threads = 2), "
        "so both saw the same machine.",
        "",
        *common.machine_lines(info, [tuple(load) for load in loads if load]),
        "",
        md_table(header, rows),
        "",
        "- PyTorch ref s / engine s: inference only (the reference's per-case loop; the engine's `segment` total). "
        "Wall: the whole process from launch to the written output, start-up and model load included (the "
        "challenge's measure). Speed-up = reference / engine (target >= 10x).",
        "- Model-only limit = encoder calls x median encoder latency + the sum over decoder calls of the median "
        "decoder latency at that call's batch size, the compiled model timed alone on real slices of the case in the "
        "same process right after the run (encoder {r} repeats; decoder max(5, {r} // batch) repeats per batch "
        "size). Target engine / limit <= 1.15.".format(r=data.get("latency_repeats", 20)),
        "- Peak RSS: ru_maxrss of each process (the high-water mark), read right after the output was written.",
        *notes,
        *[f"- {note}" for note in data.get("notes", [])],
        "",
        f"![engine speed]({PLOT_OUT.name})",
    ]
    return "\n".join(body)


def accuracy_section(data: dict) -> str:
    baseline = {} if data.get("synthetic") else common.baseline_table()
    rows = []
    for name, row in data["accuracy"].items():
        base = baseline.get(name, {})
        d = None if row.get("dsc") is None or base.get("dsc") is None else row["dsc"] - base["dsc"]
        rows.append(
            [
                name,
                row["shape"],
                row["boxes"],
                row["strategy"],
                fmt(row.get("dsc"), ".4f"),
                fmt(base.get("dsc"), ".4f"),
                fmt(d, "+.4f"),
                fmt(row.get("nsd"), ".4f"),
                fmt(base.get("nsd"), ".4f"),
                fmt(row.get("ref_dsc"), ".4f"),
                f"{row['wall_s']:.1f}",
                fmt(base.get("wall_s"), ".1f"),
                fmt(base["wall_s"] / row["wall_s"], ".1f") + "x" if base.get("wall_s") else "–",
                f"{row['engine_s']:.2f}",
                row["counts"]["slices_encoded"],
                f"{row['peak_rss_mb']:.0f}",
            ]
        )
    scored = [
        r
        for r in data["accuracy"].values()
        if r.get("dsc") is not None and baseline.get(r["case"], {}).get("dsc") is not None
    ]
    mean_line = ""
    if scored:
        ours = sum(r["dsc"] for r in scored) / len(scored)
        theirs = sum(baseline[r["case"]]["dsc"] for r in scored) / len(scored)
        mean_line = (
            f"- Mean DSC over the {len(scored)} cases with ground truth: engine {ours:.4f}, "
            f"baseline {theirs:.4f} ({ours - theirs:+.4f})."
        )
    header = [
        "case",
        "shape",
        "boxes",
        "strategy",
        "DSC engine",
        "DSC baseline",
        "ΔDSC",
        "NSD engine",
        "NSD baseline",
        "DSC PyTorch ref (this run)",
        "wall s engine",
        "wall s baseline",
        "faster",
        "engine s",
        "slices encoded",
        "peak RSS MB",
    ]
    return "\n".join(
        [
            "Engine: f32, one fresh process per case (wall = launch to written output, start-up and model load "
            "included, as the challenge timed it). Baseline: ../shared/data/cases/BASELINE.md (the official PyTorch "
            "script on this machine, a different day and load: compare the ratio loosely). DSC/NSD: "
            "producer.evaluate.score_case (official definitions, NSD at 2 mm / 2 px).",
            "",
            md_table(header, rows),
            "",
            mean_line,
            "- 'DSC PyTorch ref (this run)': ops/bench/torch_reference.py's own masks, where it ran (checks that the "
            "reference is the baseline's algorithm: it should land near the baseline's DSC).",
            *[f"- {note}" for note in data.get("accuracy_notes", [])],
        ]
    )


def plot(data: dict, path: Path = PLOT_OUT) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(data["speed"])
    sums = [speed_summary(data["speed"][n]) for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = range(len(names))
    width = 0.27
    left.bar(
        [i - width for i in x], [s.get("ref_s") or 0 for s in sums], width, label="PyTorch reference", color="#999"
    )
    left.bar(list(x), [s["engine_s"] for s in sums], width, label="engine f32", color="#1f77b4")
    left.bar(
        [i + width for i in x], [s["limit_s"] or 0 for s in sums], width, label="model-only limit", color="#2ca02c"
    )
    for i, s in enumerate(sums):
        if s.get("speedup"):
            left.text(i, s["engine_s"] * 1.15, f"{s['speedup']:.1f}x", ha="center", fontsize=9)
    left.set_yscale("log")
    left.set_xticks(list(x), names, fontsize=8)
    left.set_ylabel("seconds (log)")
    left.set_title("3D multi-box cases: inference time")
    left.legend(fontsize=8)
    bottoms = [0.0] * len(names)
    for stage, colour in (
        ("encode", "#1f77b4"),
        ("decode", "#ff7f0e"),
        ("preprocess", "#9467bd"),
        ("postprocess", "#8c564b"),
    ):
        values = [s["times"].get(stage, 0) for s in sums]
        right.bar(list(x), values, 0.5, bottom=bottoms, label=stage, color=colour)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    for i, s in enumerate(sums):
        if s["limit_s"]:
            right.hlines(s["limit_s"], i - 0.3, i + 0.3, colors="#2ca02c", linestyles="--")
            right.text(
                i + 0.3,
                s["limit_s"],
                f" limit (median)\n engine/limit\n {s['engine_s'] / s['limit_s']:.2f}x",
                fontsize=8,
                va="center",
            )
    right.set_xticks(list(x), names, fontsize=8)
    right.set_ylabel("seconds")
    right.set_title("engine stages (median run) vs model-only limit")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(data: dict) -> None:
    for name, entry in data["speed"].items():
        s = speed_summary(entry)
        print(
            f"{name:18s} ref {fmt(s.get('ref_s'), '.1f'):>7} s  engine {s['engine_s']:7.1f} s  "
            f"speed-up {fmt(s.get('speedup'), '.1f'):>5}x  limit {fmt(s['limit_s'], '.1f')} s  "
            f"engine/limit {fmt(s['limit_ratio'], '.3f')}  peak RSS ref {fmt(s.get('ref_rss_mb'), '.0f')} MB / "
            f"engine {s['engine_rss_mb']:.0f} MB"
        )
    for name, row in data.get("accuracy", {}).items():
        print(
            f"{name:32s} DSC {fmt(row.get('dsc'), '.4f')}  NSD {fmt(row.get('nsd'), '.4f')}  wall {row['wall_s']:.1f} s"
        )


def write_outputs(data: dict, write_md: bool) -> None:
    JSON_OUT.parent.mkdir(parents=True, exist_ok=True)
    JSON_OUT.write_text(json.dumps(data, indent=1))
    if data["speed"]:
        plot(data)
    if write_md:
        if data["speed"]:
            common.replace_section("Engine speed (issue 2)", speed_section(data))
        if data.get("accuracy"):
            common.replace_section("Accuracy vs the official baseline", accuracy_section(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=None, help="comma-separated speed cases (default: the 3D multi-box cases)")
    parser.add_argument("--engine-repeats", type=int, default=3)
    parser.add_argument("--latency-repeats", type=int, default=20)
    parser.add_argument(
        "--reference-boxes",
        default=None,
        help="K or CASE=K,...: cap the PyTorch reference to the first K boxes, scale its time by pairs",
    )
    parser.add_argument(
        "--cases-dir", type=Path, default=None, help="a dir with imgs/ (and gts/); default: shared cases"
    )
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--from-json", type=Path, default=None, help="re-render outputs from a saved run")
    parser.add_argument("--note", action="append", default=[], help="with --from-json: add a note to the section")
    parser.add_argument("--accuracy-note", action="append", default=[], help="with --from-json: note for accuracy")
    parser.add_argument("--resume", action="store_true", help=f"continue an interrupted run from {PARTIAL.name}")
    args = parser.parse_args(argv)

    if args.from_json:
        data = json.loads(args.from_json.read_text())
        data.setdefault("notes", []).extend(args.note)
        data.setdefault("accuracy_notes", []).extend(args.accuracy_note)
        print_table(data)
        write_outputs(data, not args.no_write)
        return 0

    previous = json.loads(PARTIAL.read_text()) if args.resume and PARTIAL.is_file() else None
    scratch = Path(previous["scratch"]) if previous else Path(tempfile.mkdtemp(prefix="engine-bench-"))
    cases = common.CaseSet(args.cases_dir, True) if args.cases_dir else common.case_set(scratch / "phantoms")
    default = PHANTOM_SPEED_CASES if cases.synthetic else SPEED_CASES
    names = [n for n in (args.cases.split(",") if args.cases else default) if cases.image(n).is_file()]
    data = previous or {
        "machine": common.machine_info(),
        "command": " ".join(["ops/bench/engine_bench.py", *(argv or sys.argv[1:])]),
        "cases_dir": str(cases.root),
        "synthetic": cases.synthetic,
        "latency_repeats": args.latency_repeats,
        "scratch": str(scratch),
        "speed": {},
        "accuracy": {},
    }
    log(common.uptime_line())
    PARTIAL.parent.mkdir(parents=True, exist_ok=True)

    def saver(key):
        def save(value):
            data[key] = value
            PARTIAL.write_text(json.dumps(data, indent=1))

        return save

    segs_dir, ref_dir = scratch / "segs", scratch / "ref-segs"
    data["speed"] = speed_runs(cases, names, args, segs_dir, ref_dir, saver("speed"), data.get("speed"))
    if not args.no_accuracy:
        data["accuracy"] = accuracy_runs(
            cases, data["speed"], segs_dir, ref_dir, saver("accuracy"), data.get("accuracy")
        )
    data["machine"]["uptime_end"] = common.uptime_line()
    print_table(data)
    write_outputs(data, not args.no_write)
    log(f"wrote {JSON_OUT}, {PLOT_OUT}" + ("" if args.no_write else f", {common.RESULTS_MD}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
