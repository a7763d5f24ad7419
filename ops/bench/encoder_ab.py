"""Encoder per slice, profile against profile, side by side in one process: latency and embedding fidelity.

    .venv/bin/python ops/bench/encoder_ab.py --profiles f32,bf16,int8 --cases A.npz,B.npz [--slices 3] [--repeats 5]

Every profile's encoder is compiled once (f32 hint for f32 and int8 profiles, bf16 hint for bf16). For each case,
`--slices` real slices (3D: spread over the boxes' z-range; 2D: the image) are pre-processed as the engine does.
Each repeat runs every profile once on the same slice, in rotating order, so slow phases of a shared machine hit
all profiles alike. Reports per case and profile: median latency, and against f32 on the same slice the cosine
similarity and max relative error of the embedding. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def slices_of(path: Path, count: int) -> tuple[list[np.ndarray], str]:
    from producer.formats.npz import load_npz_study

    study = load_npz_study(path)
    if not study.is_3d:
        return [study.image], study.modality
    boxes = study.boxes.astype(int)
    lo, hi = max(int(boxes[:, 2].min()), 0), min(int(boxes[:, 5].max()), study.image.shape[0] - 1)
    picks = np.unique(np.linspace(lo, hi, count + 2)[1:-1].round().astype(int))
    return [study.image[z] for z in picks], study.modality


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", default="f32,bf16,int8")
    parser.add_argument("--cases", required=True, help="comma-separated npz paths")
    parser.add_argument("--slices", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)

    from models.paths import default_models_dir
    from models.preprocess import to_model_input
    from models.registry import load_registry
    from worker.engine.runtime import CompiledSam, RuntimeSettings

    spec = load_registry(default_models_dir())["litemedsam"]
    profiles = args.profiles.split(",")
    if "f32" not in profiles:
        profiles.insert(0, "f32")
    models = {p: CompiledSam(spec, RuntimeSettings(p, args.threads)) for p in profiles}
    out = {"profiles": profiles, "cases": {}}
    for case in args.cases.split(","):
        images, modality = slices_of(Path(case), args.slices)
        tensors = [to_model_input(np.ascontiguousarray(i), spec.input_size, "linear")[0] for i in images]
        for model in models.values():
            model.encode(tensors[0])  # first inference of a compiled model is not steady state
        times = {p: [] for p in profiles}
        fidelity = {p: {"cos": [], "rel": []} for p in profiles}
        for r in range(args.repeats):
            tensor = tensors[r % len(tensors)]
            order = profiles[r % len(profiles) :] + profiles[: r % len(profiles)]
            embeddings = {}
            for p in order:
                started = time.perf_counter()
                embeddings[p] = models[p].encode(tensor)
                times[p].append(time.perf_counter() - started)
            if r < len(tensors):
                ref = embeddings["f32"].ravel().astype(np.float64)
                for p in profiles:
                    e = embeddings[p].ravel().astype(np.float64)
                    fidelity[p]["cos"].append(float(e @ ref / (np.linalg.norm(e) * np.linalg.norm(ref))))
                    fidelity[p]["rel"].append(float(np.abs(e - ref).max() / np.abs(ref).max()))
        out["cases"][Path(case).stem] = {
            "modality": modality,
            "slices": len(tensors),
            "median_s": {p: statistics.median(t) for p, t in times.items()},
            "speedup": {p: statistics.median(times["f32"]) / statistics.median(t) for p, t in times.items()},
            "cos_min": {p: min(f["cos"]) for p, f in fidelity.items()},
            "rel_max": {p: max(f["rel"]) for p, f in fidelity.items()},
        }
        print(
            f"{Path(case).stem}: "
            + ", ".join(
                f"{p} {out['cases'][Path(case).stem]['median_s'][p]:.3f}s "
                f"cos {out['cases'][Path(case).stem]['cos_min'][p]:.4f}"
                for p in profiles
            ),
            file=sys.stderr,
            flush=True,
        )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
