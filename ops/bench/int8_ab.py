"""An INT8 profile against f32 per strategy (issue 26): whole process, engine, encoder, memory and DSC, interleaved.

    .venv/bin/python ops/bench/int8_ab.py --profile int8-ac --models-dir DIR [--cases-dir DIR]
        [--cases 2DBox_CT_amos000475,3DBox_CT_tssm,3DBox_MR_brats01646,3DBox_PET_phantom] [--repeats 1]

Every run is a fresh process (ops/bench/engine_child.py: start-up, model load and the study, as the challenge timed
it), f32 and the profile alternating (the order flips per repeat and case), so both see the same machine. Per case:
the strategy that ran, the medians of wall time (whole process), engine time and the encoder's in-run seconds, their
f32/profile ratios, the peak RSS of each, and DSC of each against the ground truth. Prints a markdown table and the
machine and load (`uptime` at start and end, the 1-minute load before each run); writes nothing else.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import fmt, md_table  # noqa: E402

DEFAULT_CASES = "2DBox_CT_amos000475,3DBox_CT_tssm,3DBox_MR_brats01646,3DBox_PET_phantom"


def dsc(cases_dir: Path, name: str, out: Path) -> float | None:
    sys.path.insert(0, str(common.REPO))
    from producer.evaluate import dsc_case

    truth = cases_dir / "gts" / f"{name}.npz"
    if not truth.is_file():
        return None
    with np.load(truth, allow_pickle=False) as gts, np.load(out / f"{name}.npz", allow_pickle=False) as segs:
        return dsc_case(gts["gts"], segs["segs"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--cases-dir", type=Path, default=common.SHARED_CASES)
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    machine = common.machine_info()
    print(f"{machine['date']}; {machine['cpu']}; ISA {machine['isa']}", file=sys.stderr)
    print(f"uptime at start: {common.uptime_line()}", file=sys.stderr)
    rows, loads = [], []
    for case_index, name in enumerate(args.cases.split(",")):
        image = args.cases_dir / "imgs" / f"{name}.npz"
        runs: dict[str, list[dict]] = {"f32": [], args.profile: []}
        for repeat in range(args.repeats):
            order = ["f32", args.profile] if (repeat + case_index) % 2 == 0 else [args.profile, "f32"]
            for precision in order:
                out = Path(tempfile.mkdtemp(prefix="int8-ab-"))
                print(f"[{name}] {precision} run {repeat + 1}/{args.repeats}...", file=sys.stderr, flush=True)
                result = common.engine_child(
                    image, out, precision, threads=args.threads, extra=["--models-dir", str(args.models_dir)]
                )
                result["dsc"] = dsc(args.cases_dir, name, out)
                runs[precision].append(result)
                loads.append(result["load_before"][0])
        f32, prof = runs["f32"], runs[args.profile]

        def med(items: list[dict], key: str) -> float:
            return common.median([item[key] for item in items])

        def enc(items: list[dict]) -> float:
            return common.median([item["in_run"]["encoder_s"] for item in items])

        rows.append(
            [
                name,
                prof[0]["strategy"],
                fmt(med(f32, "wall_s"), ".1f"),
                fmt(med(prof, "wall_s"), ".1f"),
                fmt(med(f32, "wall_s") / med(prof, "wall_s"), ".2f") + "x",
                fmt(med(f32, "engine_s"), ".1f"),
                fmt(med(prof, "engine_s"), ".1f"),
                fmt(med(f32, "engine_s") / med(prof, "engine_s"), ".2f") + "x",
                fmt(enc(f32) / enc(prof), ".2f") + "x",
                f"{med(f32, 'peak_rss_mb'):.0f} / {med(prof, 'peak_rss_mb'):.0f}",
                "–" if f32[0]["dsc"] is None else f"{f32[0]['dsc']:.4f} / {prof[0]['dsc']:.4f}",
                "–" if f32[0]["dsc"] is None else f"{(prof[0]['dsc'] - f32[0]['dsc']) * 100:+.2f}",
            ]
        )
    header = [
        "case",
        "strategy",
        "f32 wall s",
        f"{args.profile} wall s",
        "wall speed-up",
        "f32 engine s",
        f"{args.profile} engine s",
        "engine speed-up",
        "encoder speed-up",
        "peak RSS MB f32 / profile",
        "DSC f32 / profile",
        "ΔDSC pts",
    ]
    print(md_table(header, rows))
    print(
        f"\nuptime at end: {common.uptime_line()}; 1-minute load before the runs: "
        f"min {min(loads):.2f}, median {common.median(loads):.2f}, max {max(loads):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
