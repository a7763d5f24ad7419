"""DICOM outputs on the real 3D cases written as DICOM series: what the fleet stores per study for `producer results`
(the JSON output context), and what writing a SEG and an RTSTRUCT costs, with the ground truth as the label map.

    .venv/bin/python ops/bench/dicom_outputs_bench.py [--reps 3] [--no-record]

Prints a table and records it under "## DICOM outputs (issue 14)" in RESULTS.md (date, machine, load).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[2] / "tests")]
from common import SHARED_CASES, machine_info, machine_lines, md_table, median, replace_section, uptime_line  # noqa: E402

CASES = ("3DBox_CT_tssm", "3DBox_MR_brats01646", "3DBox_CT_tsup")


def measure(case: str, scratch: Path, reps: int) -> list:
    from dicom_factory import SeriesSpec, write_series
    from producer.formats.dicom import read_layout
    from producer.formats.output_context import dicom_context
    from producer.formats.rtstruct import write_rtstruct
    from producer.formats.seg import write_dicom_seg

    image = np.load(SHARED_CASES / "imgs" / f"{case}.npz")["imgs"]
    labels = np.load(SHARED_CASES / "gts" / f"{case}.npz")["gts"].astype(np.uint16)
    folder = scratch / case
    write_series(folder, SeriesSpec(stored=image.astype(np.int16), pixel_spacing=(0.9, 0.6)))
    names = [f"roi {k}" for k in range(1, int(labels.max()) + 1)]
    started = time.perf_counter()
    context = dicom_context(read_layout(sorted(folder.iterdir())), names)
    context_s = time.perf_counter() - started
    context_bytes = len(json.dumps(context.to_json()).encode())
    times = {"seg": [], "rtstruct": []}
    for _ in range(reps):
        for kind, writer in (("seg", write_dicom_seg), ("rtstruct", write_rtstruct)):
            started = time.perf_counter()
            writer(scratch / f"{case}.{kind}.dcm", context.dicom, labels, names, {"model": "litemedsam"})
            times[kind].append(time.perf_counter() - started)
    return [
        case,
        "x".join(map(str, labels.shape)),
        len(names),
        f"{context_bytes / 1024:.1f}",
        f"{context_s:.3f}",
        f"{median(times['seg']):.2f}",
        f"{(scratch / f'{case}.seg.dcm').stat().st_size / 1024:.0f}",
        f"{median(times['rtstruct']):.2f}",
        f"{(scratch / f'{case}.rtstruct.dcm').stat().st_size / 1024:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    info = machine_info()
    header = [
        "case",
        "D x H x W",
        "ROIs",
        "context KiB",
        "context s",
        "SEG write s",
        "SEG KiB",
        "RTSTRUCT write s",
        "RTSTRUCT KiB",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        rows = [
            measure(case, Path(scratch), args.reps)
            for case in CASES
            if (SHARED_CASES / "gts" / f"{case}.npz").is_file()
        ]
    info["uptime_end"] = uptime_line()
    table = md_table(header, rows)
    print(table)
    if not args.no_record:
        body = "\n".join(
            [
                f"Command: `ops/bench/dicom_outputs_bench.py --reps {args.reps}` (medians of the write "
                "times; ground truth as the label map; series written with 0.9 x 0.6 mm pixels).",
                "",
                *machine_lines(info),
                "",
                table,
                "",
                "- context KiB: the JSON the fleet stores per study so `producer results` writes the SEG/"
                "RTSTRUCT with the sources gone (header subset + one entry per instance).",
            ]
        )
        replace_section("DICOM outputs (issue 14)", body)


if __name__ == "__main__":
    main()
