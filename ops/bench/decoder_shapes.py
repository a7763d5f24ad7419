"""Decoder shape set-up (issue 10, part 4; a benchmark, not a test): what a new decoder batch size costs.

    .venv/bin/python ops/bench/decoder_shapes.py [--threads 1] [--repeats 3] [--no-write]

Per fresh process (the real LiteMedSAM decoder, f32, the engine's compile settings and compiled cache), on a real
3D CT slice embedding:
1. first call at each batch size 1..16 (every size new to the process), then the same sizes again (already seen),
   then each size once more after all others: set-up = first call - median of the later calls at that size;
2. the decoder's cost per box (its time is linear in boxes), which padding to a fixed size would pay for;
3. whether a box's logits are the same bit for bit when it is decoded in a batch of another size (padding).
Then what the 3D dev cases would gain: per case, the batch sizes its propagation uses (from the engine's own
decoder calls) x the measured set-up, against the padding cost of rounding each call up to 1, 2, 4, 8 or 16.
Prints a table; appends a dated block under "## Decoder shape set-up (issue 10)" in ops/bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "ops" / "bench"))

from common import SHARED_CASES, append_to_section, machine_info, machine_lines  # noqa: E402

SIZES = list(range(1, 17))
BUCKETS = (1, 2, 4, 8, 16)
CASES_3D = ("3DBox_CT_tssm", "3DBox_CT_tsup", "3DBox_MR_brats01646")


def _child(threads: int) -> dict:
    """Runs in a fresh process: set-up per new batch size, cost per box, bit identity across batch sizes."""
    from models.paths import compile_cache_dir, default_models_dir
    from models.preprocess import geometry_for, scale_boxes, to_model_input
    from models.registry import load_registry
    from worker.engine.runtime import CompiledSam, RuntimeSettings

    models_dir = default_models_dir()
    model = CompiledSam(
        load_registry(models_dir)["litemedsam"], RuntimeSettings("f32", threads, compile_cache_dir(models_dir))
    )
    with np.load(SHARED_CASES / "imgs" / "3DBox_CT_tssm.npz", allow_pickle=False) as data:
        volume, boxes3d = data["imgs"], data["boxes"]
    z = volume.shape[0] // 2
    tensor, _ = to_model_input(np.ascontiguousarray(volume[z]), model.spec.input_size, "linear")
    embedding = model.encode(tensor)
    geo = geometry_for(volume.shape[1:], model.spec.input_size)
    base = scale_boxes(boxes3d[:, [0, 1, 3, 4]], geo)
    pool = np.concatenate([base, base + 1.5])[:16].astype(np.float32)  # 16 distinct real boxes

    def timed(batch: int) -> float:
        started = time.perf_counter()
        model.decode(embedding, pool[:batch])
        return time.perf_counter() - started

    first = {b: timed(b) for b in SIZES}  # every size new to this process
    again = {b: [timed(b) for _ in range(3)] for b in SIZES}
    later = {b: timed(b) for b in reversed(SIZES)}  # each size after all the others
    steady = {b: statistics.median(again[b] + [later[b]]) for b in SIZES}
    per_box = float(np.polyfit(SIZES, [steady[b] for b in SIZES], 1)[0])
    reference = model.decode(embedding, pool[:1])[0]
    identical = {}
    for b in (2, 3, 4, 5, 8, 12, 16):
        padded = np.concatenate([pool[:1], np.repeat(pool[:1], b - 1, axis=0)]) if b > 1 else pool[:1]
        mixed = model.decode(embedding, np.concatenate([pool[:1], pool[1:b]]))[0]
        identical[b] = {
            "padded_with_copies": bool(np.array_equal(model.decode(embedding, padded)[0], reference)),
            "with_other_boxes": bool(np.array_equal(mixed, reference)),
        }
    return {
        "first": first,
        "steady": steady,
        "later_revisit": later,
        "per_box": per_box,
        "setup": {b: first[b] - steady[b] for b in SIZES},
        "identical": identical,
        "compile_s": model.load_seconds,
    }


def batch_sizes(case: str) -> list[int]:
    """Decoder batch sizes of one engine run of the case: per slice of each sweep, its active boxes in chunks
    of 16 (the engine's propagation schedule, worker.engine.strategies)."""
    from worker.engine.strategies import _active, sweeps

    with np.load(SHARED_CASES / "imgs" / f"{case}.npz", allow_pickle=False) as data:
        depth, boxes = data["imgs"].shape[0], data["boxes"]
    z_lo = np.clip(boxes[:, 2].astype(np.int64), 0, depth - 1)
    z_hi = np.clip(boxes[:, 5].astype(np.int64), 0, depth - 1)
    sizes = []
    for sweep in sweeps(z_lo, z_hi):
        for z in sweep.slices:
            active = _active(sweep, z).size
            sizes += [min(16, active - start) for start in range(0, active, 16)]
    return sizes


def padded(size: int) -> int:
    return next(b for b in BUCKETS if b >= size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.threads)))
        return
    info = machine_info()
    runs = []
    for index in range(args.repeats):
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--threads", str(args.threads)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(
            f"  process {index + 1}: set-up sum {sum(runs[-1]['setup'].values()):.2f} s, "
            f"per box {runs[-1]['per_box'] * 1000:.1f} ms",
            flush=True,
        )
    info["uptime_end"] = machine_info()["uptime"]
    setup = {b: statistics.median(r["setup"][str(b)] for r in runs) for b in SIZES}
    first = {b: statistics.median(r["first"][str(b)] for r in runs) for b in SIZES}
    steady = {b: statistics.median(r["steady"][str(b)] for r in runs) for b in SIZES}
    revisit = {b: statistics.median(r["later_revisit"][str(b)] for r in runs) for b in SIZES}
    per_box = statistics.median(r["per_box"] for r in runs)
    identical = runs[0]["identical"]
    rows = [
        "| batch size | first call s | steady s | revisited after all others s | set-up s |",
        "| --- | --- | --- | --- | --- |",
    ]
    rows += [f"| {b} | {first[b]:.3f} | {steady[b]:.3f} | {revisit[b]:.3f} | {setup[b]:.3f} |" for b in SIZES]
    cases = [
        "",
        "| case | decoder calls | distinct sizes | set-up paid now s | padding to 1/2/4/8/16: set-ups s "
        "| extra boxes decoded | padding cost s | net gain s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in CASES_3D:
        if not (SHARED_CASES / "imgs" / f"{case}.npz").is_file():
            continue
        sizes = batch_sizes(case)
        now = sum(setup[b] for b in set(sizes))
        buckets = {padded(b) for b in sizes}
        bucket_setup = sum(setup[b] for b in buckets)
        extra = sum(padded(b) - b for b in sizes)
        cost = extra * per_box
        cases.append(
            f"| {case} | {len(sizes)} | {len(set(sizes))} | {now:.2f} | {bucket_setup:.2f} | {extra} | "
            f"{cost:.2f} | {now - bucket_setup - cost:+.2f} |"
        )
    same = ", ".join(
        f"{b}: {'yes' if v['padded_with_copies'] else 'NO'}/{'yes' if v['with_other_boxes'] else 'NO'}"
        for b, v in identical.items()
    )
    text = "\n".join(rows + cases) + (
        f"\n\n- Decoder cost per box (slope of the steady times): {per_box * 1000:.1f} ms; {args.repeats} fresh "
        f"processes, {args.threads} thread(s), medians.\n- Box 0's logits bit-identical when decoded in a batch of "
        f"size b (padded with copies of itself / with other boxes): {same}."
    )
    print(text)
    if not args.no_write:
        block = "\n".join(
            [
                f"### {info['date']} — `ops/bench/decoder_shapes.py --threads {args.threads} --repeats {args.repeats}`",
                "",
                *machine_lines(info),
                "",
                text,
            ]
        )
        append_to_section("Decoder shape set-up (issue 10)", block)


if __name__ == "__main__":
    main()
